"""Policy-gradient refinement against a reward model or a Python reward function: REINFORCE with a
leave-one-out baseline (RLOO, Ahmadian et al. 2024, "Back to Basics"), optional PPO-style ratio
clipping.

Each prompt is answered k times; a sample's return is its reward, plus an optional coherence bonus,
minus the sampled KL to the frozen reference, and its advantage is that return minus the mean of the
prompt's other samples' returns (`leave_one_out`), so no value network is needed. `loss` is the
per-sequence policy-gradient loss on packed rows; the rollouts are made by `jaxalign.methods.rl`.

Details: docs/methods.md#the-policy-gradient-loss-jaxalignobjectivespolicy_gradient
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import logprobs
from jaxalign.objectives import lm

Array = jax.Array
# The options of an RL run (objective "rl"): its rollouts are made by the RL method, not by an
# example maker, so this objective has options and a loss but no builder in the registry.
DEFAULTS: dict[str, Any] = {
    # What scores a rollout; set exactly one of the two:
    "reward_model": "",  # a reward-model workdir or model directory (head "score")
    # a Python reward ("verifiable rewards"): "task", the synthetic task's ground-truth score, or
    # "module.path:function", called as function(prompts: list[str], responses: list[str]) -> floats
    "reward_fn": "",
    "samples_per_prompt": 4,  # k >= 2: the leave-one-out baseline needs other samples
    "kl_coef": 0.05,
    "coherence_coef": 0.0,
    "clip": 0.0,  # PPO ratio clipping; 0 = plain REINFORCE
    "updates_per_rollout": 1,
    "temperature": 1.0,
    "top_p": 1.0,
}


def leave_one_out(returns: np.ndarray) -> np.ndarray:
    """Advantages ``R_i - mean of the other samples' R`` for returns of shape [prompts, k >= 2]."""
    returns = np.asarray(returns, np.float64)
    if returns.ndim != 2 or returns.shape[1] < 2:
        raise ValueError(f"leave_one_out needs [prompts, k >= 2] returns, got shape {returns.shape}")
    k = returns.shape[1]
    others = (returns.sum(axis=1, keepdims=True) - returns) / (k - 1)
    return returns - others


def loss(logits: Array, batch: dict[str, Array], *, clip: float = 0.0) -> tuple[Array, dict[str, Array]]:
    """The policy-gradient loss of `batch` (see docs/methods.md) and its metrics.

    Metrics, means over sequences: ``loss_weight`` and ``num_sequences``, ``entropy`` (the policy's
    mean per-token entropy on the response), ``logp`` (sequence log-probability), ``advantage``,
    ``ratio`` (mean per-token ratio), ``clip_fraction`` (share of tokens whose ratio was clipped)
    and ``approx_kl`` (mean per-token log pi_old - log pi, how far the update has moved).
    """
    if not clip >= 0:
        raise ValueError(f"policy_gradient.loss: clip={clip!r} must be >= 0 (0 turns clipping off)")
    for key in ("advantages", "old_logps"):
        if key not in batch:
            raise ValueError(f"policy_gradient.loss needs batch[{key!r}] (per-token, from the rollout); "
                             f"the batch has {sorted(batch)}")
    weights = batch["weights"].astype(jnp.float32)
    segments = batch["segment_ids"]
    advantages = jax.lax.stop_gradient(batch["advantages"].astype(jnp.float32))
    old = jax.lax.stop_gradient(batch["old_logps"].astype(jnp.float32))
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logps = jnp.take_along_axis(log_probs, batch["targets"][..., None].astype(jnp.int32), axis=-1)[..., 0]
    # where, not a product: padding may hold any logits, and 0 * inf is nan.
    log_ratio = jnp.where(weights > 0, logps - old, 0.0)
    ratio = jnp.exp(log_ratio)
    surrogate = ratio * advantages
    if clip > 0:
        surrogate = jnp.minimum(surrogate, jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * advantages)
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)

    def per_sequence(values: Array) -> Array:
        return logprobs.segment_sums(jnp.where(weights > 0, weights * values, 0.0), segments)[:, 1:]

    tokens = per_sequence(jnp.ones_like(weights))
    valid = tokens > 0
    count = jnp.sum(valid.astype(jnp.float32))

    def mean(per_seq: Array) -> Array:
        return logprobs.safe_div(jnp.sum(jnp.where(valid, per_seq, 0.0)), count)

    def token_mean(values: Array) -> Array:  # per-sequence mean over its tokens, then over sequences
        return mean(logprobs.safe_div(per_sequence(values), tokens))

    clipped = jnp.abs(ratio - 1.0) > clip if clip > 0 else jnp.zeros_like(ratio, bool)
    metrics = {
        "loss_weight": count,
        "num_sequences": count,
        "entropy": token_mean(entropy),
        "logp": mean(per_sequence(logps)),
        "advantage": token_mean(advantages),
        "ratio": token_mean(ratio),
        "clip_fraction": token_mean(clipped.astype(jnp.float32)),
        "approx_kl": token_mean(-log_ratio),
    }
    return mean(per_sequence(-surrogate)), metrics


def make_loss_fn(clip: float = 0.0) -> lm.LossFn:
    """`loss` with `clip` bound (and checked now), in the ``loss_fn(logits, batch)`` form."""
    if not clip >= 0:
        raise ValueError(f"rl clip={clip!r} must be >= 0 (0 turns clipping off)")
    return lambda logits, batch: loss(logits, batch, clip=clip)
