"""Objectives: one module per method, each turning model logits over packed rows into a loss.

Every loss follows one contract, ``loss_fn(logits, batch) -> (loss, metrics)`` with its normaliser
reported as ``metrics["loss_weight"]``, which the train step relies on to make microbatch
accumulation exact. `lm` is the shared next-token cross-entropy; each method adds a module beside it
with its loss, its example makers, its options (``DEFAULTS``) and ``build``; `registry` maps a
config's objective name to its module.

Details: docs/training.md#losses-and-objectives-jaxalignobjectives
"""
