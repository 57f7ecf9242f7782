"""SANDBOX: a simulated society of language-model agents whose interactions become alignment data.

The submodules are imported where they are used (``from jaxalign.sandbox import records``), so that
importing the package costs nothing: the record and data modules need no JAX, and the simulation
needs no TensorFlow Datasets.
"""
