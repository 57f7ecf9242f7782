"""Train step with several weighted streams (CoH's pretraining regulariser) and a frozen reference
model (DPO): the combined update is the weighted sum of each stream's normalised gradient, metrics
per stream, microbatches exact, clear errors, reference log-probs that are really the reference's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign import logprobs
from jaxalign import mesh as mesh_lib
from jaxalign.data.packing import pack_examples
from jaxalign.models import Transformer, get_preset, init_params
from jaxalign.objectives import lm
from jaxalign.train.state import TrainState, base_rng, train_state_shardings
from jaxalign.train.step import Stream, make_eval_step, make_train_step

SEQ_LEN = 16
SGD = optax.sgd(1.0)  # new params = params - grads: the update is the gradient itself
SEQUENCE_LOSS = lm.make_loss_fn("sequence")


@pytest.fixture(scope="module")
def cfg():
    return get_preset("tiny")


@pytest.fixture(scope="module")
def mesh():
    return mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")


@pytest.fixture(scope="module")
def params(cfg, mesh):
    return jax.device_get(init_params(cfg, mesh, seed=0))


def _rows(seed: int, rows: int) -> dict[str, np.ndarray]:
    """`rows` packed rows of SFT-like examples (prompt weight 0, response weights in (0.5, 2))."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(6 * rows):
        prompt, response = rng.integers(1, 5), rng.integers(2, 8)
        examples.append({"tokens": rng.integers(0, 256, prompt + response),
                         "weights": np.r_[np.zeros(prompt), rng.uniform(0.5, 2.0, response)]})
    packed = pack_examples(examples, SEQ_LEN, num_bins=4)
    assert len(packed) >= rows
    return {name: np.stack([row[name] for row in packed[:rows]]) for name in packed[0]}


@pytest.fixture(scope="module")
def batches():
    a, b = _rows(1, 16), _rows(2, 8)
    # Uneven weight between the microbatches of `a` (rows 0, 2, .. vs 1, 3, ..), so that a mean of
    # per-microbatch means would be visibly wrong.
    a["weights"][0::2, 4:] = 0
    return {"a": a, "b": b}


def _state(cfg, tx, mesh, params):
    host = TrainState(step=np.int32(0), params=params, opt_state=tx.init(params), rng=np.asarray(base_rng(0)))
    return jax.device_put(host, train_state_shardings(cfg, tx, mesh))


def _update(step, cfg, mesh, params, batch):
    """(metrics, params - new params) of one plain-SGD step from `params`."""
    state, metrics = step(_state(cfg, SGD, mesh, params), batch)
    delta = jax.tree.map(lambda old, new: np.asarray(old, np.float64) - np.asarray(new, np.float64),
                         params, jax.device_get(state.params))
    return jax.device_get(metrics), delta


def _assert_trees_close(actual, expected, rtol=1e-5, atol=3e-7):
    # atol: a delta is new - old of float32 parameters up to 1.0 (norm scales), so it carries the
    # rounding of the update, up to an ulp of 1.0 (1.2e-7); gradient entries are ~1e-3.
    leaves = zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True)
    for (path, a), b in leaves:
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def single(cfg, mesh, params, batches):
    """One single-stream SGD step on each stream's batch: its metrics and its gradient."""
    return {
        "a": _update(make_train_step(cfg, SGD, mesh), cfg, mesh, params, batches["a"]),
        "b": _update(make_train_step(cfg, SGD, mesh, loss_fn=SEQUENCE_LOSS), cfg, mesh, params, batches["b"]),
    }


@pytest.mark.parametrize("microbatches", [(1, 1), (2, 1), (4, 2)], ids=lambda m: f"micro{m[0]}-{m[1]}")
def test_two_streams_update_is_the_weighted_sum_of_normalised_gradients(
        cfg, mesh, params, batches, single, microbatches):
    streams = {
        "a": Stream(lm.loss, 1.0, microbatches=microbatches[0]),  # token-normalised, 16 rows
        "b": Stream(SEQUENCE_LOSS, 1.5, microbatches=microbatches[1]),  # per sequence, 8 rows
    }
    step = make_train_step(cfg, SGD, mesh, streams=streams)
    metrics, delta = _update(step, cfg, mesh, params, batches)
    (ma, ga), (mb, gb) = single["a"], single["b"]

    # The update is -(g_a / W_a + 1.5 g_b / W_b): each stream keeps its own normaliser.
    expected = jax.tree.map(lambda x, y: x + 1.5 * y, ga, gb)
    _assert_trees_close(delta, expected)
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(expected), rtol=1e-5)

    # Per-stream metrics are the single-stream ones, under "<stream>/"; "loss" is the weighted sum.
    for name, m in (("a", ma), ("b", mb)):
        for key in ("loss", "accuracy", "loss_weight", "tokens"):
            np.testing.assert_allclose(metrics[f"{name}/{key}"], m[key], rtol=1e-5, err_msg=f"{name}/{key}")
    np.testing.assert_allclose(metrics["b/num_sequences"], mb["num_sequences"])
    np.testing.assert_allclose(metrics["a/loss_weight"], batches["a"]["weights"].sum(), rtol=1e-6)
    assert metrics["b/loss_weight"] == metrics["b/num_sequences"] > 8  # several sequences per row
    np.testing.assert_allclose(metrics["loss"], ma["loss"] + 1.5 * mb["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["tokens"], ma["tokens"] + mb["tokens"], rtol=1e-6)
    assert not {"accuracy", "loss_weight", "num_sequences"} & set(metrics), sorted(metrics)


# Regression: flax's logical constraint used to split a 2-row (or 1-row) microbatch over dp*fsdp = 4
# devices, and with tp > 1 XLA then computed wrong (1 row: NaN) gradients.
def test_microbatches_smaller_than_the_batch_sharding_give_the_same_gradient(
        cfg, mesh, params, batches, single):
    # 2 and 1 rows per microbatch, on a mesh whose batch axis is split 4 ways (and tp = 2).
    streams = {"a": Stream(lm.loss, 1.0, microbatches=8), "b": Stream(SEQUENCE_LOSS, 1.5, microbatches=8)}
    metrics, delta = _update(make_train_step(cfg, SGD, mesh, streams=streams), cfg, mesh, params, batches)
    want = single["a"][0]["loss"] + 1.5 * single["b"][0]["loss"]
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    _assert_trees_close(delta, jax.tree.map(lambda x, y: x + 1.5 * y, single["a"][1], single["b"][1]))


def test_a_weight_zero_stream_does_not_move_the_parameters(cfg, mesh, params, batches, single):
    streams = {"a": Stream(lm.loss, 1.0), "b": Stream(SEQUENCE_LOSS, 0.0)}
    metrics, delta = _update(make_train_step(cfg, SGD, mesh, streams=streams), cfg, mesh, params, batches)
    _assert_trees_close(delta, single["a"][1])
    np.testing.assert_allclose(metrics["loss"], single["a"][0]["loss"], rtol=1e-6)
    assert metrics["b/loss"] > 0  # still reported


def test_stream_batch_errors_are_clear(cfg, mesh, params, batches):
    step = make_train_step(cfg, SGD, mesh, streams={"a": Stream(), "b": Stream(microbatches=2)})
    state = _state(cfg, SGD, mesh, params)
    with pytest.raises(ValueError, match=r"trains on streams \['a', 'b'\].*missing \['a', 'b'\]"):
        step(state, batches["a"])  # a flat batch
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        step(state, {"a": batches["a"]})
    with pytest.raises(ValueError, match=r"trains on streams \['a', 'b'\]; the batch has \['a', 'b', 'c'\]"):
        step(state, {**batches, "c": batches["b"]})
    with pytest.raises(ValueError, match=r"batch\['b'\]: 8 rows do not split into microbatches=3"):
        make_train_step(cfg, SGD, mesh, streams={"a": Stream(), "b": Stream(microbatches=3)})(state, batches)
    with pytest.raises(ValueError, match=r"batch\['b'\] is missing \['weights'\]"):
        step(state, {"a": batches["a"], "b": {k: v for k, v in batches["b"].items() if k != "weights"}})
    # The state was not consumed by the failed calls.
    assert not any(x.is_deleted() for x in jax.tree.leaves(state))

    with pytest.raises(ValueError, match="give loss_fn, microbatches and batch_transform per Stream"):
        make_train_step(cfg, SGD, mesh, microbatches=2, streams={"a": Stream()})
    with pytest.raises(ValueError, match=r"stream 'b': weight=-1.0 must be a number >= 0"):
        make_train_step(cfg, SGD, mesh, streams={"a": Stream(), "b": Stream(weight=-1.0)})
    with pytest.raises(ValueError, match="at least one stream"):
        make_train_step(cfg, SGD, mesh, streams={})


# ---------------------------------------------------------------------------------------------
# Reference model


def _probe(logits, batch):
    """lm.loss plus the weighted mean reference log-prob of the targets, as a metric."""
    loss, metrics = lm.loss(logits, batch)
    weights = batch["weights"].astype(jnp.float32)
    mean = jnp.sum(weights * batch["ref_logps"]) / jnp.sum(weights)
    return loss, {**metrics, "ref_logp": mean}


def _direct_mean_logp(cfg, mesh, params, batch):
    """The weighted mean log-prob of the targets under `params`, by a plain forward."""
    def forward(p, b):
        logits = Transformer(cfg).apply({"params": p}, b["inputs"], positions=b["positions"],
                                        segment_ids=b["segment_ids"])
        return jnp.sum(b["weights"] * -logprobs.token_nll(logits, b["targets"])) / jnp.sum(b["weights"])

    with mesh_lib.use(mesh):
        return float(jax.jit(forward)(params, batch))


@pytest.fixture(scope="module")
def reference(cfg, mesh):
    """Reference parameters that are not the policy's (another seed), on the mesh."""
    return init_params(cfg, mesh, seed=1)


def test_reference_stream_gets_the_reference_log_probs(cfg, mesh, params, batches, reference):
    adam = optax.adam(1e-2)  # an optimiser with state, as in training
    reference_host = jax.device_get(reference)
    streams = {"dpo": Stream(_probe, 1.0, microbatches=2, reference=True), "b": Stream(SEQUENCE_LOSS, 1.5)}
    step = make_train_step(cfg, adam, mesh, streams=streams, reference_params=reference)
    state = _state(cfg, adam, mesh, params)
    rows = {"dpo": batches["a"], "b": batches["b"]}
    want = _direct_mean_logp(cfg, mesh, reference, batches["a"])
    policy = _direct_mean_logp(cfg, mesh, params, batches["a"])
    assert abs(want - policy) > 1e-3  # so the check below tells the reference from the policy

    for _ in range(2):  # the reference stays the same while the policy moves
        old = state
        state, metrics = step(state, rows)
        np.testing.assert_allclose(metrics["dpo/ref_logp"], want, rtol=1e-5)
        assert "b/ref_logp" not in metrics
    assert all(x.is_deleted() for x in jax.tree.leaves(old))  # the state is donated ...
    assert not any(x.is_deleted() for x in jax.tree.leaves(reference))  # ... the reference is not
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(reference), reference_host)
    assert not np.allclose(jax.device_get(state.params)["embed_tokens"]["embedding"],
                           params["embed_tokens"]["embedding"])


def test_eval_with_reference_agrees_with_the_train_step(cfg, mesh, params, batches, reference):
    # One stream named like the loop's single stream, so a flat batch is its rows.
    step = make_train_step(cfg, SGD, mesh, streams={"main": Stream(_probe, reference=True)},
                           reference_params=reference)
    _, trained = step(_state(cfg, SGD, mesh, params), batches["a"])
    evaluate = make_eval_step(cfg, mesh, _probe, microbatches=2, reference_params=reference)
    evaluated = evaluate(params, batches["a"])
    for key in ("loss", "ref_logp", "accuracy", "loss_weight", "tokens"):
        np.testing.assert_allclose(evaluated[key], trained[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(evaluated["ref_logp"], _direct_mean_logp(cfg, mesh, reference, batches["a"]),
                               rtol=1e-5)


def test_reference_stream_without_reference_params_is_an_error(cfg, mesh):
    with pytest.raises(ValueError, match="reference=True needs reference_params"):
        make_train_step(cfg, SGD, mesh, streams={"a": Stream(), "dpo": Stream(_probe, reference=True)})


def test_reference_params_that_are_the_donated_state_are_an_error(cfg, mesh, params, batches):
    # Passing the state's own arrays as the reference would donate them and crash the runtime.
    adam = optax.adam(1e-2)
    state = _state(cfg, adam, mesh, params)
    step = make_train_step(cfg, adam, mesh, streams={"main": Stream(_probe, reference=True)},
                           reference_params=state.params)
    with pytest.raises(ValueError, match="reference_params share arrays with the train state"):
        step(state, batches["a"])
    assert not any(x.is_deleted() for x in jax.tree.leaves(state))
