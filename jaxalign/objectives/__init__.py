"""Objectives: one module per method, each turning model logits over packed rows into a loss.

The contract every loss follows (the train and eval steps in `jaxalign.train.step` rely on it)::

    loss_fn(logits, batch) -> (loss, metrics)

``logits`` are float32 ``[batch, length, vocab]`` from the model run on ``batch["inputs"]`` (with
its positions, segment ids and optional ``extra_mask``); ``batch`` is the packed-row dict of
`jaxalign.data.packing` (inputs, targets, weights, segment_ids, positions). Extra options
(e.g. ``normalization``) are bound with ``functools.partial`` before the loss reaches the step.

``loss`` is a float32 scalar of the form ``numerator / loss_weight``, and ``metrics`` (a dict of
float32 scalars) must report that normaliser as ``metrics["loss_weight"]`` -- the sum of token
weights for per-token normalisation, the number of sequences for per-sequence normalisation.
The step uses it to make gradient accumulation exact: it sums ``loss * loss_weight`` and
``loss_weight`` over microbatches and divides once, so splitting a batch never changes the loss
or the gradients (the microbatches are whole rows, so no sequence is split).

Other metrics combine over microbatches by name: ``loss_weight`` and names starting with
``num_`` are counts and are summed; every other metric must be a mean with the same weighting as
the loss and is averaged with weights ``loss_weight``. A loss with nothing to weight (an empty
batch) returns loss 0 and loss_weight 0.

Modules: `lm` (next-token cross-entropy, also SFT and Chain of Hindsight's loss with its
per-sequence normalisation; the log-probability arithmetic is `jaxalign.logprobs`); each method adds
a module beside it with its loss, its example makers, its options (``DEFAULTS``) and ``build``, which
makes its `objective.Objective`. A loss over groups of sequences finds them in the packed rows
itself: `dpo` pairs consecutive segments, and `stable_alignment` reads each segment's place in its
group from a per-token field (``batch["sa_index"]``) and counts groups, not tokens, in
``loss_weight``. `registry` maps a config's objective name to its module.
"""
