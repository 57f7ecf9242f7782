"""Training: the optimiser and its learning-rate schedules (`jaxalign.train.optim`).

The jit-compiled train/eval steps, gradient accumulation over microbatches, checkpointing and
the training loop build on `optim` and live beside it.
"""
