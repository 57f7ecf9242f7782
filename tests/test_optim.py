"""The optimiser: schedules, weight-decay mask, clipping, decoupled decay and sharded state."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxalign import mesh as mesh_lib
from jaxalign.models import get_preset, init_params, param_shapes, param_shardings
from jaxalign.train.optim import (
    default_optimizer_config,
    make_optimizer,
    make_schedule,
    opt_state_shardings,
    warmup_steps,
    weight_decay_mask,
)


def _values(schedule, steps):
    # Evaluated under jit with an int32 step, as in the train step.
    at = jax.jit(schedule)
    return [float(at(jnp.asarray(s, jnp.int32))) for s in steps]


SCHEDULE_CASES = {
    # kind: (extra kwargs, {step: hand value}) with peak 1.0, total 100, warmup 10, end ratio 0.1.
    "constant": ({}, {0: 0.0, 5: 0.5, 10: 1.0, 55: 1.0, 100: 1.0, 250: 1.0}),
    "linear": ({}, {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1, 250: 0.1}),
    "warmup_cosine": (
        {},
        {
            0: 0.0, 5: 0.5, 10: 1.0,
            # a quarter of the decay: 0.1 + 0.9 * (1 + cos(pi/4)) / 2
            32.5: 0.1 + 0.45 * (1 + math.cos(math.pi / 4)),
            55: 0.55, 100: 0.1, 250: 0.1,
        },
    ),
    "wsd": ({"decay_steps": 20}, {0: 0.0, 5: 0.5, 10: 1.0, 50: 1.0, 80: 1.0, 90: 0.55, 100: 0.1, 250: 0.1}),
}


@pytest.mark.parametrize("kind", sorted(SCHEDULE_CASES))
def test_schedule_values(kind):
    extra, expected = SCHEDULE_CASES[kind]
    schedule = make_schedule(kind, peak_lr=1.0, total_steps=100, warmup_steps=10, end_lr_ratio=0.1, **extra)
    steps = [s for s in expected if float(s).is_integer()]
    np.testing.assert_allclose(_values(schedule, steps), [expected[s] for s in steps], rtol=1e-6, atol=1e-7)
    for step, want in expected.items():  # fractional steps too: checks the shape between key points
        np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-6, atol=1e-7)


def test_schedules_without_warmup_and_wsd_default_decay():
    const = make_schedule("constant", peak_lr=2e-3, total_steps=10)
    assert _values(const, [0, 10]) == pytest.approx([2e-3, 2e-3])
    lin = make_schedule("linear", peak_lr=1.0, total_steps=10)
    assert _values(lin, [0, 5, 10]) == pytest.approx([1.0, 0.5, 0.0])
    cos = make_schedule("warmup_cosine", peak_lr=1.0, total_steps=10)
    assert _values(cos, [0, 5, 10]) == pytest.approx([1.0, 0.5, 0.0], abs=1e-7)
    # wsd without decay_steps decays over the last 20% of total_steps.
    wsd = make_schedule("wsd", peak_lr=1.0, total_steps=100)
    assert _values(wsd, [0, 80, 90, 100]) == pytest.approx([1.0, 1.0, 0.5, 0.0])
    # warmup == total: all warmup, then the peak is held.
    full = make_schedule("warmup_cosine", peak_lr=1.0, total_steps=10, warmup_steps=10)
    assert _values(full, [0, 5, 10, 20]) == pytest.approx([0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="foo"), r"optimizer\.schedule='foo'"),
        (dict(kind="linear", warmup_steps=101),
         r"optimizer\.warmup_steps=101 exceeds optimizer\.total_steps=100"),
        (dict(kind="wsd", warmup_steps=90, decay_steps=20), r"optimizer\.decay_steps=20 exceeds"),
        (dict(kind="wsd", warmup_steps=90), r"optimizer\.decay_steps=20 \(the default"),
        (dict(kind="warmup_cosine", decay_steps=20),
         r"optimizer\.decay_steps=20 only applies to schedule='wsd'"),
        (dict(kind="linear", total_steps=0), r"optimizer\.total_steps=0 must be >= 1"),
        (dict(kind="linear", warmup_steps=1.5), r"optimizer\.warmup_steps=1\.5 must be an integer"),
        (dict(kind="linear", end_lr_ratio=2.0), r"optimizer\.end_lr_ratio=2\.0 must be >= 0\.0 and <= 1\.0"),
    ],
)
def test_schedule_errors(kwargs, match):
    args = dict(peak_lr=1.0, total_steps=100)
    args.update(kwargs)
    kind = args.pop("kind")
    with pytest.raises(ValueError, match=match):
        make_schedule(kind, **args)


def _leaves_by_path(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_weight_decay_mask_on_model_params(scan_layers, decay_embeddings):
    cfg = get_preset(
        "tiny", scan_layers=scan_layers, attention_bias=True, attention_out_bias=True,
        tie_word_embeddings=False,
    )
    shapes = param_shapes(cfg)
    mask = weight_decay_mask(shapes, decay_embeddings)
    assert jax.tree.structure(mask) == jax.tree.structure(shapes)
    flags, dims = _leaves_by_path(mask), _leaves_by_path(shapes)
    kinds = {"scale": 0, "bias": 0, "kernel": 0, "embedding": 0}
    for path, flag in flags.items():
        leaf = path.rsplit("'", 2)[-2]
        kinds[leaf] += 1
        want = {"scale": False, "bias": False, "kernel": True, "embedding": decay_embeddings}[leaf]
        assert flag is want, (path, flag)
    # Every kind of parameter was seen: 2 layers x (2 norms) + final norm, q/k/v/o biases, 7 kernels
    # per layer + lm_head, one embedding (scanned layers hold them stacked in one leaf each).
    per_layer = 1 if scan_layers else 2
    assert kinds == {
        "scale": 2 * per_layer + 1, "bias": 4 * per_layer, "kernel": 7 * per_layer + 1, "embedding": 1,
    }
    assert flags["['lm_head']['kernel']"] is True
    if scan_layers:
        # A norm scale with its layer axis is 2-D, yet not decayed: the mask goes by name.
        norm = "['layers']['input_layernorm']['scale']"
        assert dims[norm].shape == (2, 64) and flags[norm] is False


def test_weight_decay_mask_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"\['adapter'\]\['prefix'\].*'prefix'.*DECAY_RULES"):
        weight_decay_mask({"adapter": {"prefix": np.zeros((2, 2))}}, decay_embeddings=False)


def _optimizer(**overrides):
    cfg = default_optimizer_config()
    cfg.total_steps = 100
    cfg.schedule = "constant"
    cfg.update(overrides)
    return make_optimizer(cfg)


def test_clipping_really_clips():
    b1 = 0.9
    params = {"w": {"kernel": jnp.ones((4, 4))}, "b": {"bias": jnp.ones((4,))}}
    big = {"w": {"kernel": jnp.full((4, 4), 3.0)}, "b": {"bias": jnp.full((4,), -4.0)}}
    small = jax.tree.map(lambda g: g * 1e-3, big)
    assert float(optax.tree.norm(big)) > 1.0 > float(optax.tree.norm(small))

    def first_moment(tx, grads):
        # Adam's first moment after one step is (1 - b1) * (the gradient Adam saw), so it shows
        # what the clipper passed on (Adam's own update is scale-invariant and would not).
        _, state = tx.update(grads, tx.init(params), params)
        return jax.tree.map(lambda m: m / (1 - b1), optax.tree_utils.tree_get(state, "mu"))

    tx, _ = _optimizer(grad_clip_norm=1.0, b1=b1)
    seen = first_moment(tx, big)
    assert float(optax.tree.norm(seen)) == pytest.approx(1.0, rel=1e-5)
    # Clipping rescales, it does not change direction.
    scale = float(optax.tree.norm(big))
    jax.tree.map(lambda s, g: np.testing.assert_allclose(s, g / scale, rtol=1e-5), seen, big)
    # Below the limit the gradient passes unchanged.
    jax.tree.map(lambda s, g: np.testing.assert_allclose(s, g, rtol=1e-5), first_moment(tx, small), small)
    # Off (0 or None): nothing is clipped, and the state has the same structure as with clipping.
    for off in (0.0, None):
        tx_off, _ = _optimizer(grad_clip_norm=off, b1=b1)
        jax.tree.map(lambda s, g: np.testing.assert_allclose(s, g, rtol=1e-5), first_moment(tx_off, big), big)
        assert jax.tree.structure(tx_off.init(params)) == jax.tree.structure(tx.init(params))


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_weight_decay_skips_masked_params(decay_embeddings):
    lr, wd = 0.1, 0.5
    cfg = get_preset("tiny", attention_bias=True, tie_word_embeddings=False)
    # Random values in the model's real tree (norms and biases included, none of them zero, so
    # "unchanged" means something); no model computation is needed for an optimiser step.
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype), param_shapes(cfg)
    )
    tx, schedule = _optimizer(peak_lr=lr, weight_decay=wd, decay_embeddings=decay_embeddings)
    assert float(schedule(0)) == pytest.approx(lr)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    mask = _leaves_by_path(weight_decay_mask(params, decay_embeddings))
    old_leaves, new_leaves = _leaves_by_path(params), _leaves_by_path(new)
    assert any(mask.values()) and not all(mask.values())
    for path, decayed in mask.items():
        want = old_leaves[path] * (1 - lr * wd) if decayed else old_leaves[path]
        np.testing.assert_allclose(new_leaves[path], want, rtol=1e-6, err_msg=path)
    assert mask["['embed_tokens']['embedding']"] is decay_embeddings


def test_make_optimizer_config_errors():
    unknown = r"unknown optimizer keys \['optimizer\.lr', 'optimizer\.momentum'\]"
    with pytest.raises(ValueError, match=unknown):
        make_optimizer({"lr": 1e-3, "momentum": 0.9, "total_steps": 10})
    with pytest.raises(ValueError, match=r"optimizer\.name='sgd' is unknown"):
        make_optimizer({"name": "sgd", "total_steps": 10})
    with pytest.raises(ValueError, match=r"optimizer\.total_steps is not set"):
        make_optimizer(default_optimizer_config())
    with pytest.raises(ValueError, match=r"optimizer\.schedule='cosine' is unknown"):
        make_optimizer({"schedule": "cosine", "total_steps": 10})
    with pytest.raises(ValueError, match=r"optimizer\.b2=1\.0 must be >= 0\.0 and < 1\.0"):
        make_optimizer({"b2": 1.0, "total_steps": 10})
    with pytest.raises(ValueError, match=r"optimizer\.decay_embeddings='no' must be True or False"):
        make_optimizer({"decay_embeddings": "no", "total_steps": 10})
    # A partial plain mapping takes the defaults for the rest.
    tx, schedule = make_optimizer({"total_steps": 10, "schedule": "linear", "peak_lr": 1.0})
    assert float(schedule(5)) == pytest.approx(0.55)  # end_lr_ratio defaults to 0.1


def test_default_config_links_to_run_total_steps():
    import ml_collections

    run = ml_collections.ConfigDict({"total_steps": 40, "optimizer": default_optimizer_config()})
    run.optimizer.total_steps = run.get_ref("total_steps")
    run.optimizer.schedule = "wsd"
    run.total_steps = 100  # later overrides (e.g. from the CLI) flow through the reference
    _, schedule = make_optimizer(run.optimizer)
    peak = run.optimizer.peak_lr
    assert _values(schedule, [80, 100]) == pytest.approx([peak, peak * run.optimizer.end_lr_ratio])


def test_warmup_fraction_follows_total_steps():
    """warmup_fraction * total_steps, rounded, read when the schedule is made: a run resumed with
    another total_steps (RESUMABLE_CHANGES) warms up as a fresh run of that length would."""
    import ml_collections

    from jaxalign.train.run import RESUMABLE_CHANGES

    assert "total_steps" in RESUMABLE_CHANGES
    run = ml_collections.ConfigDict({"total_steps": 100, "optimizer": default_optimizer_config()})
    run.optimizer.total_steps = run.get_ref("total_steps")
    run.optimizer.update(warmup_fraction=0.1, peak_lr=1.0, end_lr_ratio=0.1)
    for total, warmup in ((100, 10), (250, 25), (35, 4), (4, 0)):
        run.total_steps = total
        assert warmup_steps(run.optimizer) == warmup == round(0.1 * total)
        _, schedule = make_optimizer(run.optimizer)
        fresh = make_schedule("warmup_cosine", peak_lr=1.0, total_steps=total, warmup_steps=warmup,
                              end_lr_ratio=0.1)
        steps = list(range(0, total + 2))
        np.testing.assert_allclose(_values(schedule, steps), _values(fresh, steps), rtol=1e-6, atol=1e-7)
    assert warmup_steps({"warmup_steps": 7, "total_steps": 100}) == 7  # the default fraction 0: unused
    assert warmup_steps({"warmup_steps": 0, "warmup_fraction": 0.0, "total_steps": 100}) == 0


@pytest.mark.parametrize("cfg, match", [
    ({"warmup_steps": 5, "warmup_fraction": 0.1},
     r"optimizer\.warmup_steps=5 and optimizer\.warmup_fraction=0\.1 both set the warmup; "
     r"set the other one to 0"),
    ({"warmup_fraction": 1.0}, r"optimizer\.warmup_fraction=1\.0 must be >= 0\.0 and < 1\.0"),
    ({"warmup_fraction": -0.1}, r"optimizer\.warmup_fraction=-0\.1 must be >= 0\.0"),
    ({"warmup_fraction": "10%"}, r"optimizer\.warmup_fraction='10%' must be a number"),
])
def test_warmup_fraction_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer({"total_steps": 100, **cfg})


def test_opt_state_sharded_like_params(devices):
    mesh = mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")
    cfg = get_preset("tiny", attention_bias=True, tie_word_embeddings=False)
    params = init_params(cfg, mesh, seed=0)
    shardings = param_shardings(cfg, mesh)
    tx, _ = _optimizer(weight_decay=0.1)
    state_shardings = opt_state_shardings(tx, param_shapes(cfg), shardings, mesh)
    with mesh_lib.use(mesh):
        state = jax.jit(tx.init, out_shardings=state_shardings)(params)

    adam = optax.tree_utils.tree_get(state, "mu"), optax.tree_utils.tree_get(state, "nu")
    specs = {path: s.spec for path, s in _leaves_by_path(shardings).items()}
    assert any(any(axis is not None for axis in spec) for spec in specs.values())  # really sharded
    for moment in adam:
        for path, leaf in _leaves_by_path(moment).items():
            param = _leaves_by_path(params)[path]
            assert leaf.sharding.spec == specs[path], path
            assert leaf.sharding.is_equivalent_to(param.sharding, param.ndim), path
            shard_shapes = {s.data.shape for s in leaf.addressable_shards}
            assert shard_shapes == {s.data.shape for s in param.addressable_shards}, path
    counts = optax.tree_utils.tree_get_all_with_path(state, "count")
    assert len(counts) == 2  # Adam's and the schedule's
    assert all(count.sharding.is_fully_replicated for _, count in counts)
    # Every leaf of the state matches the sharding asked for.
    jax.tree.map(lambda leaf, want: leaf.sharding.is_equivalent_to(want, leaf.ndim) or pytest.fail(str(want)),
                 state, state_shardings)
