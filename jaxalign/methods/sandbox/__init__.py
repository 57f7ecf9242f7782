"""SANDBOX: a simulated society of language-model agents whose interactions become alignment data.

The submodules are imported where they are used (``from jaxalign.methods.sandbox import simulation``),
so importing the package costs nothing. The records the society writes are data:
`jaxalign.data.sandbox_records` (their format) and `jaxalign.data.sandbox_alignment` (the Stable
Alignment groups built from them).
"""
