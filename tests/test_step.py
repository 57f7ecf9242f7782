"""Train state, train/eval steps and the LM loss: sharded == single device, exact gradient
accumulation, hand-checked loss values, weight-0 tokens, determinism of RNG and eval."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign import logprobs
from jaxalign import mesh as mesh_lib
from jaxalign.data.packing import pack_examples
from jaxalign.models import get_preset, param_shardings
from jaxalign.objectives import lm
from jaxalign.train.optim import make_optimizer
from jaxalign.train.state import (
    TrainState,
    abstract_train_state,
    base_rng,
    init_train_state,
    train_state_shardings,
)
from jaxalign.train.step import make_eval_step, make_train_step

SEQ_LEN, ROWS, STEPS = 16, 8, 3

# Jitted once per shape for the loss-only tests: faster than dispatching op by op.
_lm_loss = jax.jit(lm.loss, static_argnames="normalization")
_lm_value_and_grad = jax.jit(
    jax.value_and_grad(lambda z, b, normalization: lm.loss(z, b, normalization)[0]),
    static_argnames="normalization",
)
SHARDED = "dp:2,fsdp:2,tp:2"


@pytest.fixture(scope="module")
def cfg():
    return get_preset("tiny")


@pytest.fixture(scope="module")
def adam():
    return make_optimizer({"peak_lr": 1e-2, "total_steps": 100, "schedule": "constant"})


@pytest.fixture(scope="module")
def batch():
    """ROWS packed rows of SFT-like examples: prompt tokens weight 0, response tokens weight 1."""
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(40):
        prompt, response = rng.integers(1, 6), rng.integers(2, 9)
        tokens = rng.integers(0, 256, prompt + response)
        examples.append({"tokens": tokens, "weights": np.r_[np.zeros(prompt), np.ones(response)]})
    rows = pack_examples(examples, SEQ_LEN, num_bins=4)
    assert len(rows) >= ROWS
    batch = {name: np.stack([row[name] for row in rows[:ROWS]]) for name in rows[0]}
    assert (batch["segment_ids"].max(axis=1) > 1).sum() >= ROWS // 2, "rows should pack several examples"
    return batch


def _meshes():
    return {
        SHARDED: mesh_lib.make_mesh(SHARDED),
        "single": mesh_lib.make_mesh("1,1,1", devices=jax.devices()[:1]),
    }


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def _counting(loss_fn):
    """loss_fn that counts how often it is traced (a retrace would mean a recompilation)."""

    def counted(logits, batch):
        counted.traces += 1
        return loss_fn(logits, batch)

    counted.traces = 0
    return counted


@pytest.fixture(scope="module")
def runs(cfg, adam, batch):
    """STEPS train steps from the same seed on the sharded and the single-device mesh, with an
    eval of the parameters before each step."""
    tx, schedule = adam
    out = {}
    for name, mesh in _meshes().items():
        state = init_train_state(cfg, tx, mesh, seed=0)
        initial = _host(state)
        initial_shardings = jax.tree.map(lambda x: x.sharding, state)
        loss_fn = _counting(lm.loss)
        step = make_train_step(cfg, tx, mesh, loss_fn=loss_fn, schedule=schedule)
        evaluate = make_eval_step(cfg, mesh)
        evals, again, metrics = [], None, []
        for i in range(STEPS):
            evals.append(evaluate(state.params, batch))
            if i == 0:
                again = evaluate(state.params, batch)
            old = state
            state, m = step(state, batch)
            metrics.append(_host(m))
        out[name] = dict(
            mesh=mesh, initial=initial, initial_shardings=initial_shardings, state=state,
            metrics=metrics, evals=[_host(e) for e in evals], eval_again=_host(again),
            traces=loss_fn.traces, donated=all(x.is_deleted() for x in jax.tree.leaves(old)),
        )
    return out


def test_sharded_run_matches_a_single_device_run(runs):
    sharded, single = runs[SHARDED], runs["single"]
    jax.tree.map(np.testing.assert_array_equal, sharded["initial"], single["initial"])
    for key in ("loss", "grad_norm", "accuracy", "tokens"):
        np.testing.assert_allclose(
            [m[key] for m in sharded["metrics"]], [m[key] for m in single["metrics"]], rtol=1e-5, err_msg=key
        )
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(_host(sharded["state"].params)),
        jax.tree.leaves(_host(single["state"].params)), strict=True,
    ):
        # Adam divides by sqrt(nu), so where a gradient entry is near rounding noise its update can
        # differ by a fraction of lr (1e-2) however close the gradients are: atol is 1% of one step.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=jax.tree_util.keystr(path))
    assert int(sharded["state"].step) == int(single["state"].step) == STEPS


def _adam_moments(opt_state):
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0].mu, found[0].nu


def test_state_is_sharded_as_declared_before_and_after_steps(runs, cfg, adam):
    tx, _ = adam
    mesh = runs[SHARDED]["mesh"]
    want_params = param_shardings(cfg, mesh)
    q = want_params["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q.spec == jax.sharding.PartitionSpec(None, "fsdp", "tp", None)  # really sharded here
    declared = train_state_shardings(cfg, tx, mesh)
    shapes = abstract_train_state(cfg, tx, mesh)
    for when, actual in [
        ("init", runs[SHARDED]["initial_shardings"]),
        ("after steps", jax.tree.map(lambda x: x.sharding, runs[SHARDED]["state"])),
    ]:
        # params and both Adam moments: exactly the parameters' shardings
        for tree in (actual.params, *_adam_moments(actual.opt_state)):
            for (path, got), want, shape in zip(jax.tree_util.tree_leaves_with_path(tree),
                                                jax.tree.leaves(want_params),
                                                jax.tree.leaves(shapes.params), strict=True):
                assert got.is_equivalent_to(want, len(shape.shape)), (when, jax.tree_util.keystr(path))
        # everything else as declared (step, rng, Adam's count: replicated)
        for got, want, shape in zip(jax.tree.leaves(actual), jax.tree.leaves(declared),
                                    jax.tree.leaves(shapes), strict=True):
            assert got.is_equivalent_to(want, len(shape.shape)), when
        assert actual.step.is_fully_replicated and actual.rng.is_fully_replicated


def test_abstract_state_describes_the_real_one(runs, cfg, adam):
    tx, _ = adam
    abstract = abstract_train_state(cfg, tx, runs[SHARDED]["mesh"])
    state = runs[SHARDED]["state"]
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(state), strict=True):
        assert (a.shape, a.dtype) == (x.shape, x.dtype)
        assert a.sharding.is_equivalent_to(x.sharding, x.ndim)
    assert state.step.dtype == jnp.int32 and state.rng.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(state.rng), np.asarray(base_rng(0)))  # the base key never moves


def test_no_recompilation_and_state_donated(runs):
    for name, run in runs.items():
        assert run["traces"] == 1, f"{name}: the train step was traced {run['traces']} times in {STEPS} steps"
        assert run["donated"], f"{name}: the state passed to the step was not donated"


def test_a_few_steps_reduce_the_loss(runs):
    losses = [float(m["loss"]) for m in runs[SHARDED]["metrics"]]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - 0.3, losses
    assert losses[0] == pytest.approx(math.log(256), rel=0.02)  # small init: near-uniform predictions
    lrs = [float(m["lr"]) for m in runs[SHARDED]["metrics"]]
    np.testing.assert_allclose(lrs, 1e-2)


def test_eval_equals_the_train_loss_before_the_update_and_is_deterministic(runs, batch):
    for name, run in runs.items():
        for e, m in zip(run["evals"], run["metrics"], strict=True):
            for key in ("loss", "accuracy", "tokens", "loss_weight"):
                np.testing.assert_allclose(e[key], m[key], rtol=1e-6, err_msg=f"{name} {key}")
        jax.tree.map(np.testing.assert_array_equal, run["eval_again"], run["evals"][0])
        assert run["evals"][0]["tokens"] == batch["weights"].sum()


# ---------------------------------------------------------------------------------------------
# Gradient accumulation


def _sgd_state(cfg, tx, mesh, params):
    host = TrainState(step=np.int32(0), params=params, opt_state=tx.init(params), rng=np.asarray(base_rng(0)))
    return jax.device_put(host, train_state_shardings(cfg, tx, mesh))


def test_microbatches_give_the_loss_and_gradient_of_the_whole_batch(runs, cfg, batch):
    mesh, params = runs[SHARDED]["mesh"], runs[SHARDED]["initial"].params
    # Very unequal token counts between the two microbatches (rows 0, 2, .. and 1, 3, ..), so a
    # mean of per-microbatch means would differ from the true token mean.
    uneven = dict(batch, weights=batch["weights"].copy())
    uneven["weights"][0::2, 3:] = 0
    assert uneven["weights"][0::2].sum() * 3 < uneven["weights"][1::2].sum()

    sgd = optax.sgd(1.0)  # new params = params - grads: the gradient itself is compared
    results, steps = {}, {}
    for microbatches in (1, 2):
        steps[microbatches] = make_train_step(cfg, sgd, mesh, microbatches=microbatches)
        state, metrics = steps[microbatches](_sgd_state(cfg, sgd, mesh, params), uneven)
        grads = jax.tree.map(lambda a, b: a - np.asarray(b), params, state.params)
        results[microbatches] = metrics, grads
        np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
    (m1, g1), (m2, g2) = results[1], results[2]
    for key in ("loss", "accuracy", "tokens", "loss_weight", "grad_norm"):
        np.testing.assert_allclose(m2[key], m1[key], rtol=1e-6, err_msg=key)
    # A gradient read back as params - new params is only as exact as float32 params near 1 (the
    # norm weights): ulp(1.0) = 1.2e-7.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2.5e-7), g2, g1)

    # Weight-0 targets do not matter: new targets there give the same loss and the same update.
    changed = dict(uneven, targets=np.where(uneven["weights"] == 0, 7, uneven["targets"]))
    assert (changed["targets"] != uneven["targets"]).any()
    state, metrics = steps[1](_sgd_state(cfg, sgd, mesh, params), changed)
    np.testing.assert_array_equal(metrics["loss"], m1["loss"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda a, b: a - np.asarray(b), params,
                                                             state.params), g1)


@pytest.mark.parametrize("normalization", ["token", "sequence", "row"])
def test_loss_contract_makes_accumulation_exact(batch, normalization):
    """Combining per-microbatch losses as the step does (sum loss * loss_weight / sum loss_weight)
    gives the whole batch's loss and metrics, for both normalisations."""
    logits = np.random.default_rng(1).normal(size=(ROWS, SEQ_LEN, 11)).astype(np.float32) * 3
    b = dict(batch, targets=batch["targets"] % 11)
    b["weights"] = b["weights"] * np.linspace(0.5, 2.0, ROWS, dtype=np.float32)[:, None]  # uneven
    whole, whole_metrics = _lm_loss(logits, b, normalization=normalization)
    parts = [_lm_loss(logits[k::2], {n: v[k::2] for n, v in b.items()}, normalization=normalization)
             for k in (0, 1)]
    weights = [m["loss_weight"] for _, m in parts]
    combined = sum(loss * w for (loss, _), w in zip(parts, weights, strict=True)) / sum(weights)
    np.testing.assert_allclose(combined, whole, rtol=1e-6)
    np.testing.assert_allclose(sum(m["accuracy"] * m["loss_weight"] for _, m in parts) / sum(weights),
                               whole_metrics["accuracy"], rtol=1e-6)
    np.testing.assert_allclose(sum(weights), whole_metrics["loss_weight"])


# ---------------------------------------------------------------------------------------------
# The LM loss by hand


def _nll(row, target):
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def test_lm_loss_by_hand():
    logits = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.5, 1.5, 0.0], [-2.0, 0.0, 4.0], [9.0, -9.0, 0.0]]
    targets = [0, 1, 1, 2, 1]
    weights = [1.0, 0.5, 2.0, 0.0, 0.0]
    segments = [1, 1, 2, 3, 0]  # segment 3 has no weighted token; 0 is padding
    nll = [_nll(r, t) for r, t in zip(logits, targets, strict=True)]
    batch = {
        "targets": jnp.asarray([targets], jnp.int32),
        "weights": jnp.asarray([weights], jnp.float32),
        "segment_ids": jnp.asarray([segments], jnp.int32),
    }
    x = jnp.asarray([logits], jnp.float32)
    np.testing.assert_allclose(logprobs.token_nll(x, batch["targets"])[0], nll, rtol=1e-6)

    loss, metrics = _lm_loss(x, batch)
    np.testing.assert_allclose(loss, (nll[0] + 0.5 * nll[1] + 2 * nll[2]) / 3.5, rtol=1e-6)
    assert float(metrics["loss_weight"]) == 3.5
    # argmax: 0 (right), 2 (wrong), 0 (wrong; first of a tie)
    np.testing.assert_allclose(metrics["accuracy"], 1 / 3.5, rtol=1e-6)

    loss, metrics = _lm_loss(x, batch, normalization="sequence")
    per_sequence = [(nll[0] + 0.5 * nll[1]) / 1.5, nll[2]]
    np.testing.assert_allclose(loss, sum(per_sequence) / 2, rtol=1e-6)
    assert float(metrics["loss_weight"]) == float(metrics["num_sequences"]) == 2
    np.testing.assert_allclose(metrics["accuracy"], (1 / 1.5 + 0) / 2, rtol=1e-6)

    # "row", the reference CoH code's: one weighted mean per row (here "token", on one row), then the
    # mean over rows; a second row with one token shows the rows counting the same.
    loss, metrics = _lm_loss(x, batch, normalization="row")
    np.testing.assert_allclose(loss, (nll[0] + 0.5 * nll[1] + 2 * nll[2]) / 3.5, rtol=1e-6)
    two = {k: jnp.concatenate([v, v]) for k, v in batch.items()}
    two["weights"] = two["weights"].at[1].set(jnp.asarray([0.0, 0.0, 1.0, 0.0, 0.0]))
    loss, metrics = _lm_loss(jnp.concatenate([x, x]), two, normalization="row")
    np.testing.assert_allclose(loss, ((nll[0] + 0.5 * nll[1] + 2 * nll[2]) / 3.5 + nll[2]) / 2, rtol=1e-6)
    assert float(metrics["num_sequences"]) == 2

    # Nothing weighted: loss 0 and zero gradients rather than NaN.
    empty = dict(batch, weights=jnp.zeros_like(batch["weights"]))
    for normalization in lm.NORMALIZATIONS:
        value, grad = _lm_value_and_grad(x, empty, normalization=normalization)
        assert float(value) == 0.0 and not np.asarray(grad).any()


@pytest.mark.parametrize("normalization", ["token", "sequence", "row"])
def test_zero_weight_tokens_do_not_affect_loss_or_gradients(normalization):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 8, 13)).astype(np.float32)
    targets = rng.integers(0, 13, (3, 8)).astype(np.int32)
    weights = (rng.random((3, 8)) > 0.4).astype(np.float32)
    segments = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1] * 8, [1, 1, 2, 2, 3, 3, 0, 0]], np.int32)
    batch = {"targets": targets, "weights": weights, "segment_ids": segments}
    zero = weights == 0
    assert zero.any() and (~zero).any()
    # Other targets and wild logits wherever the weight is 0.
    other = {**batch, "targets": np.where(zero, (targets + 5) % 13, targets)}
    other_logits = np.where(zero[..., None], 1e3 * rng.normal(size=logits.shape), logits).astype(np.float32)

    loss, grad = _lm_value_and_grad(logits, batch, normalization=normalization)
    other_loss, other_grad = _lm_value_and_grad(other_logits, other, normalization=normalization)
    np.testing.assert_array_equal(loss, other_loss)
    grad, other_grad = np.asarray(grad), np.asarray(other_grad)
    assert not grad[zero].any() and not other_grad[zero].any()
    np.testing.assert_array_equal(grad[~zero], other_grad[~zero])


# ---------------------------------------------------------------------------------------------
# Randomness and errors


def test_step_randomness_is_a_function_of_seed_and_step(runs, cfg, adam, batch):
    """A random batch transform (as CoH's masks will be) draws from fold_in(base, step) only."""
    tx, _ = adam
    mesh, initial = runs["single"]["mesh"], runs["single"]["initial"]

    def drop_half(b, key):
        keep = jax.random.bernoulli(key, 0.5, b["weights"].shape)
        return dict(b, weights=b["weights"] * keep)

    # Two microbatches: each draws from its own fold_in(step key, index).
    step = make_train_step(cfg, tx, mesh, microbatches=2, batch_transform=drop_half)
    shardings = train_state_shardings(cfg, tx, mesh)

    def loss_at(step_number, seed=0):
        state = jax.device_put(initial.replace(step=np.int32(step_number), rng=np.asarray(base_rng(seed))),
                               shardings)
        new_state, metrics = step(state, batch)
        assert int(new_state.step) == step_number + 1
        np.testing.assert_array_equal(np.asarray(new_state.rng), np.asarray(base_rng(seed)))
        return float(metrics["loss"]), float(metrics["tokens"])

    first = loss_at(5)
    assert loss_at(5) == first  # same (seed, step): same draw, bitwise
    assert first[1] < batch["weights"].sum()  # the transform really dropped tokens
    assert loss_at(6) != first and loss_at(5, seed=1) != first


def test_bad_input_is_a_clear_error(runs, cfg, adam, batch):
    tx, _ = adam
    mesh, initial = runs["single"]["mesh"], runs["single"]["initial"]
    with pytest.raises(ValueError, match=r"microbatches=0 must be a positive integer"):
        make_train_step(cfg, tx, mesh, microbatches=0)
    with pytest.raises(ValueError, match=r"normalization='tokens'"):
        lm.make_loss_fn("tokens")
    evaluate = make_eval_step(cfg, mesh)
    missing = {k: v for k, v in batch.items() if k != "weights"}
    with pytest.raises(ValueError, match=r"batch is missing \['weights'\]"):
        evaluate(initial.params, missing)
    with pytest.raises(ValueError, match=r"batch\['positions'\] has shape \(8, 15\)"):
        evaluate(initial.params, dict(batch, positions=batch["positions"][:, 1:]))
    with pytest.raises(ValueError, match=r"8 rows do not split into microbatches=3"):
        make_eval_step(cfg, mesh, microbatches=3)(initial.params, batch)
    with pytest.raises(ValueError, match=r"must report metrics\['loss_weight'\]"):
        make_eval_step(cfg, mesh, loss_fn=lambda logits, b: (jnp.mean(logits), {}))(initial.params, batch)
