"""The policy-gradient loss and the rollout layout, against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.methods import rl as rl_loop
from jaxalign.objectives import policy_gradient as pg


def test_leave_one_out_by_hand():
    returns = np.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    # sample 0 of prompt 0: 1 - (2 + 6) / 2 = -3, ...
    want = np.array([[-3.0, -1.5, 4.5], [-1.5, -1.5, 3.0]])
    np.testing.assert_allclose(pg.leave_one_out(returns), want)
    assert np.allclose(pg.leave_one_out(np.full((2, 4), 7.0)), 0.0)  # equal returns: no signal
    with pytest.raises(ValueError, match="k >= 2"):
        pg.leave_one_out(np.ones((3, 1)))


def _batch(rng, old_shift=0.0):
    """Two rows, three sequences: row 0 holds segments 1 and 2, row 1 segment 1 and padding."""
    b, length, vocab = 2, 6, 5
    logits = jnp.asarray(rng.normal(size=(b, length, vocab)), jnp.float32)
    targets = rng.integers(0, vocab, size=(b, length))
    segment_ids = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 0, 0]])
    weights = np.array([[0, 1, 1, 0, 1, 1], [0, 0, 1, 1, 0, 0]], np.float32)
    adv_per_seq = {(0, 1): 1.5, (0, 2): -0.5, (1, 1): 2.0}
    advantages = np.zeros((b, length), np.float32)
    for (r, s), a in adv_per_seq.items():
        advantages[r][segment_ids[r] == s] = a
    logps = np.asarray(jax.nn.log_softmax(logits, -1))
    token_logp = np.take_along_axis(logps, targets[..., None], -1)[..., 0]
    old = np.where(weights > 0, token_logp + old_shift, 0.0).astype(np.float32)
    batch = {"targets": jnp.asarray(targets), "segment_ids": jnp.asarray(segment_ids),
             "weights": jnp.asarray(weights), "advantages": jnp.asarray(advantages),
             "old_logps": jnp.asarray(old)}
    return logits, batch, token_logp, adv_per_seq


def test_loss_on_policy_is_reinforce():
    """With old == current log-probs the ratio is 1: the loss is -mean over sequences of A * (its
    number of tokens) and the gradient REINFORCE's, -mean over sequences of A * grad log p(sequence)."""
    logits, batch, token_logp, adv = _batch(np.random.default_rng(0))
    loss, metrics = pg.loss(logits, batch)
    assert float(metrics["loss_weight"]) == 3
    seg, w = np.asarray(batch["segment_ids"]), np.asarray(batch["weights"])
    tokens = {key: ((seg[key[0]] == key[1]) & (w[key[0]] > 0)).sum() for key in adv}
    # sum over a sequence's tokens of -ratio * A, averaged over the three sequences
    np.testing.assert_allclose(float(loss), -np.mean([tokens[key] * a for key, a in adv.items()]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["ratio"]), 1.0, rtol=1e-6)
    seq_logp = [token_logp[r][(seg[r] == s) & (w[r] > 0)].sum() for (r, s) in adv]
    np.testing.assert_allclose(float(metrics["logp"]), np.mean(seq_logp), rtol=1e-5)

    def reinforce(lg):
        lp = jnp.take_along_axis(jax.nn.log_softmax(lg, -1), batch["targets"][..., None], -1)[..., 0]
        return -jnp.sum(batch["weights"] * batch["advantages"] * lp) / 3.0

    got = jax.grad(lambda lg: pg.loss(lg, batch)[0])(logits)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.grad(reinforce)(logits)), atol=1e-6)


def test_clipping_by_hand():
    """old = logp - 0.5 gives ratio e^0.5 ~ 1.65 on every token: clipped at 1.2 where A > 0 only."""
    logits, batch, _, adv = _batch(np.random.default_rng(1), old_shift=-0.5)
    ratio = np.exp(0.5)
    w, seg = np.asarray(batch["weights"]), np.asarray(batch["segment_ids"])
    per_seq = []
    for (r, s), a in adv.items():
        n = ((seg[r] == s) & (w[r] > 0)).sum()
        per_seq.append(-n * min(ratio * a, np.clip(ratio, 0.8, 1.2) * a))
    loss, metrics = pg.loss(logits, batch, clip=0.2)
    np.testing.assert_allclose(float(loss), np.mean(per_seq), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["clip_fraction"]), 1.0)
    np.testing.assert_allclose(float(metrics["approx_kl"]), -0.5, rtol=1e-5)
    unclipped, _ = pg.loss(logits, batch, clip=0.0)
    assert float(unclipped) != pytest.approx(float(loss))


def test_entropy_metric_by_hand():
    logits, batch, _, adv = _batch(np.random.default_rng(2))
    p = np.asarray(jax.nn.softmax(logits, -1))
    ent = -(p * np.log(p)).sum(-1)
    w, seg = np.asarray(batch["weights"]), np.asarray(batch["segment_ids"])
    want = np.mean([ent[r][(seg[r] == s) & (w[r] > 0)].mean() for (r, s) in adv])
    _, metrics = pg.loss(logits, batch)
    np.testing.assert_allclose(float(metrics["entropy"]), want, rtol=1e-5)


def test_loss_needs_rollout_fields():
    logits, batch, _, _ = _batch(np.random.default_rng(3))
    del batch["old_logps"]
    with pytest.raises(ValueError, match="old_logps"):
        pg.loss(logits, batch)
    with pytest.raises(ValueError, match="clip"):
        pg.make_loss_fn(-0.1)


def test_rollout_rows_layout():
    batch = rl_loop.rows([[1, 5, 6], [1, 7]], [[8, 9, 2], []], seq_len=6)
    np.testing.assert_array_equal(batch["inputs"][0], [1, 5, 6, 8, 9, 0])
    np.testing.assert_array_equal(batch["targets"][0], [5, 6, 8, 9, 2, 0])
    np.testing.assert_array_equal(batch["weights"][0], [0, 0, 1, 1, 1, 0])  # the generated tokens only
    np.testing.assert_array_equal(batch["segment_ids"][1], [1, 0, 0, 0, 0, 0])
    assert batch["weights"][1].sum() == 0  # nothing generated: nothing to learn from
    with pytest.raises(ValueError, match="seq_len"):
        rl_loop.rows([[1, 2, 3, 4]], [[5, 6, 7, 8]], seq_len=4)


def test_prompt_records_are_a_function_of_seed_and_step():
    records = list(range(10))
    steps = [rl_loop.prompt_records(records, s, 4, seed=3) for s in (1, 2, 3)]
    assert sorted(steps[0] + steps[1] + steps[2][:2]) == records  # epoch 1 covers every record once
    assert rl_loop.prompt_records(records, 2, 4, seed=3) == steps[1]
    assert rl_loop.prompt_records(records, 2, 4, seed=4) != steps[1]
