"""Training checkpoints: bitwise round trip, cross-mesh restore, retention, mismatch errors,
resume from a reopened directory, and crash safety of async saves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.modeldir import CheckpointMismatchError
from jaxalign.train import optim
from jaxalign.train.checkpointer import Checkpointer

REPO = Path(__file__).resolve().parents[1]
CFG = models.get_preset("tiny")
CONFIG = {"seed": 3, "model": CFG.to_dict(), "optimizer": {"peak_lr": 3e-4, "betas": [0.9, 0.95]},
          "mesh": "dp:2,fsdp:2,tp:2", "note": None}


@flax.struct.dataclass
class State:
    """Stands in for jaxalign.train.state.TrainState: the same fields and kinds of leaves."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def _tx():
    return optim.make_optimizer({"total_steps": 100, "warmup_steps": 2})[0]


def _shardings(cfg, mesh) -> State:
    tx = _tx()
    params = models.param_shardings(cfg, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt = optim.opt_state_shardings(tx, models.param_shapes(cfg), params, mesh)
    return State(step=replicated, params=params, opt_state=opt, rng=replicated)


def _abstract(cfg, mesh, typed_key=True) -> State:
    tx = _tx()
    shapes = State(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=models.param_shapes(cfg),
        opt_state=jax.eval_shape(tx.init, models.param_shapes(cfg)),
        rng=jax.eval_shape(lambda: _key(0, typed_key)),
    )
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, _shardings(cfg, mesh)
    )


def _key(seed, typed_key):
    key = jax.random.key(seed)
    return key if typed_key else jax.random.key_data(key)


def _state(cfg, mesh, typed_key=True) -> State:
    """A sharded state with distinct random values in every leaf (params, Adam's mu and nu, the
    counts, the step and the key), placed straight onto the mesh: no compilation, so it is fast."""
    rs = np.random.RandomState(0)

    def one(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            value = jax.random.split(jax.random.key(7))[1]
        elif jnp.issubdtype(leaf.dtype, jnp.integer):
            value = rs.randint(0, 2**31 - 1, size=leaf.shape).astype(leaf.dtype)
        else:
            value = rs.standard_normal(leaf.shape).astype(leaf.dtype)
        return jax.device_put(value, leaf.sharding)

    return jax.tree.map(one, _abstract(cfg, mesh, typed_key))


def _host(tree) -> list[tuple[str, np.ndarray]]:
    """(path, numpy value) per leaf, typed keys as their key data, for bitwise comparison."""
    def one(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(jax.device_get(x))

    return [(jax.tree_util.keystr(p), one(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def _assert_bitwise(got, want):
    got_l, want_l = _host(got), _host(want)
    assert [p for p, _ in got_l] == [p for p, _ in want_l]
    for (path, a), (_, b) in zip(got_l, want_l, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.tobytes() == b.tobytes(), f"{path} differs"


@pytest.fixture(scope="module")
def mesh222(devices):
    return mesh_lib.make_mesh("dp:2,fsdp:2,tp:2")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, mesh222):
    """One async-saved checkpoint (step 2) on the (2,2,2) mesh, reused by the restore tests."""
    directory = tmp_path_factory.mktemp("run") / "checkpoints"
    state = _state(CFG, mesh222)
    with Checkpointer(directory, async_save=True) as ckpt:
        assert ckpt.save(2, state, {"next_index": 17}, CONFIG, force=True)
    return directory, state


@pytest.mark.parametrize("typed_key", [True, False], ids=["typed_key", "uint32_key"])
def test_round_trip_is_bitwise(tmp_path, mesh222, typed_key):
    state = _state(CFG, mesh222, typed_key)
    data_state = {"next_index": 5, "nested": {"epoch": 1, "order": [3, 1, 2]}}
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=True)
    assert ckpt.save(2, state, data_state, CONFIG, force=True)
    ckpt.wait()
    assert (tmp_path / "ckpt" / "2").is_dir()  # committed: renamed from the tmp dir
    ckpt.close()

    reopened = Checkpointer(tmp_path / "ckpt")
    target = _abstract(CFG, mesh222, typed_key)
    restored, got_data, got_config = reopened.restore(target)
    reopened.close()
    assert isinstance(restored, State)
    _assert_bitwise(restored, state)
    assert restored.rng.dtype == state.rng.dtype
    assert got_data == data_state
    assert got_config == CONFIG
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True):
        assert leaf.sharding == want.sharding


def test_restore_onto_another_mesh(saved, devices):
    directory, state = saved
    mesh = mesh_lib.make_mesh("dp:1,fsdp:8,tp:1")
    target = _abstract(CFG, mesh)
    with Checkpointer(directory) as ckpt:
        restored, data_state, _ = ckpt.restore(target)
    _assert_bitwise(restored, state)
    assert data_state == {"next_index": 17}
    embedding = restored.params["embed_tokens"]["embedding"]
    assert embedding.sharding.mesh.shape == mesh.shape
    assert embedding.sharding == target.params["embed_tokens"]["embedding"].sharding
    # Actually split 8 ways along the hidden (fsdp) axis, not replicated.
    assert embedding.addressable_shards[0].data.shape == (CFG.vocab_size, CFG.hidden_size // 8)


def test_save_every_and_keep_last_n(tmp_path):
    tree = {"w": jnp.arange(4.0)}
    ckpt = Checkpointer(tmp_path / "c", keep=2, save_every=3, async_save=False)
    saved_steps = [s for s in range(1, 11) if ckpt.save(s, {"w": tree["w"] + s}, {"i": s}, {})]
    assert saved_steps == [3, 6, 9]  # multiples only: no "first step" save
    assert ckpt.all_steps() == [6, 9]
    assert ckpt.save(10, {"w": tree["w"] + 10}, {"i": 10}, {}, force=True)
    assert ckpt.all_steps() == [9, 10]
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.name.isdigit()) == ["10", "9"]
    # The end-of-run save landing on an already saved step is skipped, not an error.
    assert not ckpt.save(10, {"w": tree["w"]}, {}, {}, force=True)
    target = {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=tree["w"].sharding)}
    restored, data_state, _ = ckpt.restore(target, step=9)
    assert np.array_equal(restored["w"], np.arange(4.0) + 9) and data_state == {"i": 9}
    ckpt.close()
    never = Checkpointer(tmp_path / "n", save_every=None)
    assert not any(never.save(s, tree, {}, {}) for s in range(5))
    assert never.latest_step() is None
    never.close()


def test_reopened_directory_resumes_from_latest(tmp_path):
    tree = {"w": jnp.zeros((3,))}
    with Checkpointer(tmp_path / "c", keep=None, save_every=2, async_save=True) as ckpt:
        for step in range(1, 8):
            ckpt.save(step, {"w": tree["w"] + step}, {"next_index": step}, {"total_steps": 7})
    with Checkpointer(tmp_path / "c", keep=None, save_every=2) as again:
        assert again.latest_step() == 6
        assert again.all_steps() == [2, 4, 6]
        target = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=tree["w"].sharding)}
        restored, data_state, config = again.restore(target)
        assert np.array_equal(restored["w"], np.full((3,), 6.0))
        assert data_state == {"next_index": 6} and config == {"total_steps": 7}
        # Resuming continues the same schedule of saves in the same directory.
        assert again.save(8, {"w": tree["w"] + 8}, {"next_index": 8}, {"total_steps": 7})
        again.wait()
        assert again.latest_step() == 8


def test_no_checkpoint_is_none_then_clear_error(tmp_path):
    target = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=jnp.zeros(3).sharding)}
    with Checkpointer(tmp_path / "empty") as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint to restore in .*empty"):
            ckpt.restore(target)
        ckpt.save(3, {"w": jnp.ones(3)}, {}, {}, force=True)
        with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 5 .*saved steps: \[3\]"):
            ckpt.restore(target, step=5)


def test_checkpoint_of_another_model_names_the_leaves(saved, mesh222):
    directory, _ = saved
    with Checkpointer(directory) as ckpt:
        wider = _abstract(models.get_preset("tiny", hidden_size=32), mesh222)
        with pytest.raises(CheckpointMismatchError) as err:
            ckpt.restore(wider)
        message = str(err.value)
        assert f"{directory / '2'} (params) does not fit the configured model" in message
        assert "embed_tokens/embedding: saved shape (256, 64), model expects (256, 32)" in message

        tied = _abstract(models.get_preset("tiny", tie_word_embeddings=True), mesh222)
        with pytest.raises(CheckpointMismatchError, match=r"\(params\) .*: unexpected lm_head/kernel"):
            ckpt.restore(tied)

        # Outside the parameters the whole-tree check still names the leaf.
        no_mu = _abstract(CFG, mesh222).replace(opt_state=None)
        with pytest.raises(CheckpointMismatchError, match="model: unexpected opt_state/1/0/count; "):
            ckpt.restore(no_mu)

        bf16 = _abstract(models.get_preset("tiny", param_dtype="bfloat16"), mesh222)
        with pytest.raises(CheckpointMismatchError, match=r"\(params\) .* model: embed_tokens/embedding: "
                           "saved dtype float32, model expects bfloat16"):
            ckpt.restore(bf16)

        unsharded = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), _abstract(CFG, mesh222))
        with pytest.raises(ValueError, match=r"leaf \.step of abstract_state .* without a sharding"):
            ckpt.restore(unsharded)


def test_async_save_is_unaffected_by_donating_the_state(tmp_path, mesh222):
    """The train step donates the state: a save in flight must hold the values saved."""
    state = _state(CFG, mesh222)
    expected = _host(state)
    shardings = _shardings(CFG, mesh222)
    def zero(x):
        return x if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x * 0

    overwrite = jax.jit(lambda s: jax.tree.map(zero, s), donate_argnums=0, out_shardings=shardings)
    spare = _state(CFG, mesh222)
    jax.block_until_ready(overwrite(spare))
    assert spare.params["norm"]["scale"].is_deleted()  # the step really donates its input
    with Checkpointer(tmp_path / "c", async_save=True) as ckpt:
        assert ckpt.save(2, state, {}, {}, force=True)
        # Donated while the save is in flight: XLA may reuse the buffers (or, where the save
        # still references them, as on CPU, copies instead); either way the save is unharmed.
        jax.block_until_ready(overwrite(state))
        restored, _, _ = ckpt.restore(_abstract(CFG, mesh222))
    got = _host(restored)
    for (path, a), (_, b) in zip(got, expected, strict=True):
        assert a.tobytes() == b.tobytes(), path


def test_uncommitted_tmp_step_is_ignored_and_cleaned(tmp_path):
    directory = tmp_path / "c"
    tree = {"w": jnp.arange(3.0)}
    with Checkpointer(directory, async_save=False) as ckpt:
        ckpt.save(1, tree, {"next_index": 1}, {}, force=True)
    # What a process killed mid-save leaves: orbax writes to <step>.orbax-checkpoint-tmp and only
    # renames it to <step> once every item is written.
    half = directory / "2.orbax-checkpoint-tmp"
    shutil.copytree(directory / "1", half)
    (half / "state" / "commit_success.txt").unlink(missing_ok=True)
    with Checkpointer(directory) as ckpt:
        assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
        # Saving the same step again works: the leftover is removed (orbax cleans temporary
        # directories in the background when the directory is opened; a save awaits it).
        assert ckpt.save(2, {"w": tree["w"] + 2}, {"next_index": 2}, {}, force=True)
        ckpt.wait()
        assert not half.exists()
        target = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=tree["w"].sharding)}
        restored, data_state, _ = ckpt.restore(target)
        assert np.array_equal(restored["w"], np.arange(3.0) + 2) and data_state == {"next_index": 2}


CHILD = textwrap.dedent(
    """
    import os, sys
    import jax, jax.numpy as jnp
    from jaxalign.train.checkpointer import Checkpointer

    directory, mode = sys.argv[1], sys.argv[2]
    ckpt = Checkpointer(directory, async_save=True)
    ckpt.save(1, {"w": jnp.zeros((4,))}, {"next_index": 1}, {}, force=True)
    ckpt.wait()
    big = jax.random.normal(jax.random.key(0), (48 * 1024 * 1024,))  # 192 MB: seconds to write
    big.block_until_ready()
    ckpt.save(2, {"w": big}, {"next_index": 2}, {}, force=True)
    committed = os.path.isdir(os.path.join(directory, "2"))
    print("COMMITTED_AT_EXIT" if committed else "PENDING_AT_EXIT", flush=True)
    if mode == "kill":
        os._exit(9)  # like kill -9: no cleanup, the background write dies with the process
    # mode == "exit": fall off the end without close(); the exit hook must commit step 2
    """
)


def _run_child(directory: Path, mode: str) -> str:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["XLA_FLAGS"] = ""  # one device is enough for the child
    proc = subprocess.run([sys.executable, "-c", CHILD, str(directory), mode], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == (9 if mode == "kill" else 0), proc.stderr[-3000:]
    return proc.stdout


def test_killed_mid_save_keeps_previous_checkpoint_as_latest(tmp_path):
    directory = tmp_path / "c"
    out = _run_child(directory, "kill")
    target = {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=jnp.zeros(4).sharding)}
    with Checkpointer(directory) as ckpt:
        if "PENDING_AT_EXIT" in out:  # the expected case: the write was cut off
            assert ckpt.all_steps() == [1]
            restored, data_state, _ = ckpt.restore(target)
            assert np.array_equal(restored["w"], np.zeros(4)) and data_state == {"next_index": 1}
        else:  # the write won the race: then step 2 must be whole
            assert "COMMITTED_AT_EXIT" in out and ckpt.latest_step() == 2


def test_exit_without_close_commits_pending_save(tmp_path):
    directory = tmp_path / "c"
    _run_child(directory, "exit")
    with Checkpointer(directory) as ckpt:
        assert ckpt.all_steps() == [1, 2]
        _, data_state, _ = ckpt.restore(
            {"w": jax.ShapeDtypeStruct((48 * 1024 * 1024,), jnp.float32, sharding=jnp.zeros(1).sharding)}
        )
        assert data_state == {"next_index": 2}


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="keep=0"):
        Checkpointer(tmp_path / "a", keep=0)
    with pytest.raises(ValueError, match="save_every=0"):
        Checkpointer(tmp_path / "b", save_every=0)
    with Checkpointer(tmp_path / "c", async_save=False) as ckpt:
        with pytest.raises(TypeError, match="data_state is not JSON-serialisable"):
            ckpt.save(1, {"w": jnp.ones(2)}, {"next_index": np.int64(3)}, {}, force=True)
        with pytest.raises(ValueError, match="non-negative integer, got 1.5"):
            ckpt.save(1.5, {"w": jnp.ones(2)}, {}, {}, force=True)
        assert ckpt.latest_step() is None  # nothing half-saved by the rejected calls
    assert json.loads(json.dumps(CONFIG)) == CONFIG  # the fixture config itself is JSON-exact
