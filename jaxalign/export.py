"""Export a trained model: a Hugging Face directory or a params-only jaxalign model directory.

The source is a `jaxalign train` workdir (any kept step; the latest by default) or a jaxalign
model directory. The Hugging Face export is streamed: orbax restores one parameter (one leaf
of the saved tree) at a time as a host numpy array -- a partial restore, so neither the
optimizer state nor the other parameters are read -- it is converted to HF's layout and dtype,
and written to a safetensors shard as soon as the shard is full. Peak host memory is therefore
about the largest parameter plus one shard (`max_shard_bytes`), not the model.

The orbax export (`format="orbax"`) writes the parameters only (no optimizer state), in the
layout `jaxalign.modeldir.save_model` writes, so `jaxalign.load` and `jaxalign generate` read
it. It is streamed too: orbax's partial save adds one leaf at a time to a pending checkpoint
(on local disk: into a bucket the params are assembled in a local temporary directory, then
copied up).

A LoRA run (`jaxalign.lora`; its workdir holds adapters and a reference to the base) exports merged:
the base is rebuilt as the run built it (``init_from`` or the seed's initialisation, cast or
quantised as it trained; checked against the fingerprint its checkpoint records), the adapters are
merged in on the devices (``W + alpha/r * A @ B``, float32), and each parameter is then written as
above. That needs the whole model on the devices, as training did. `format="peft"` writes the
adapters alone in PEFT's layout (adapter_config.json + adapter_model.safetensors, module names as
Hugging Face names them) for ``peft.PeftModel.from_pretrained(base, DIR)`` on the HF base; for a
QLoRA run that base is the unquantised one, so its logits differ from training's by the quantisation.

Both formats carry the tokenizer and a model card (README.md: shape, step, objective, the
training config). The HF tokenizer carries a chat template (`dialogue.chat_template`) that renders
a conversation as the run's prompt template does, so transformers prompts it as it was trained.
Everything is written through `modeldir.staged_directory`: an existing directory is replaced only
with `overwrite`, and only once the new one is complete. Source and output may be local paths or
URLs (``gs://``; `jaxalign.paths`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.experimental.v1 import partial

from jaxalign import hf, lora, modeldir, models, paths, workdir
from jaxalign import mesh as mesh_lib
from jaxalign.data import dialogue
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.models.config import ModelConfig

FORMATS = ("hf", "orbax", "peft")
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class Source:
    """What an export reads: the model config, the orbax tree holding the params, the tokenizer,
    and (for a workdir) the step and the training config."""

    def __init__(self, path: str | os.PathLike, step: int | None = None) -> None:
        self.path = paths.path(path)
        self.train_config: dict[str, Any] | None = None
        self.step: int | None = None
        self.lora: lora.LoraConfig | None = None
        self._lora_parts: tuple[Any, Any, Any] | None = None  # (base, adapters, mesh), read once
        self._merged: Any = None
        if workdir.is_workdir(self.path):
            self._open_workdir(step)
        elif modeldir.is_model_dir(self.path):
            if step is not None:
                raise ValueError(f"--step: {self.path} is a model directory, which holds one set of "
                                 "parameters; --step is for train workdirs")
            self.cfg = modeldir.load_config(self.path)
            self.tree_dir, self.prefix = self.path / "params", ()
            self.prompt_template = modeldir.load_prompt_template(self.path)
            tok = self.path / "tokenizer"
            self.tokenizer = Tokenizer.load(tok) if tok.exists() else None
        else:
            raise FileNotFoundError(
                f"--checkpoint {self.path}: neither a train workdir (checkpoints/ and config.json) nor a "
                f"jaxalign model directory ({modeldir.MODEL_FILE})")
        if self.lora is not None:
            self.saved = models.param_shapes(self.cfg)  # what the merge gives; checked when it is read
            return
        saved = workdir.pytree_call("metadata", self.tree_dir).tree
        for key in self.prefix:
            saved = saved[key]
        # Shapes first, so a checkpoint of another model is one clear error before any data is read.
        modeldir.check_tree_fits(saved, models.param_shapes(self.cfg), str(self.tree_dir))
        self.saved = saved

    def _open_workdir(self, step: int | None) -> None:
        self.train_config = workdir.read_config(self.path)
        try:
            tree_dir, self.step = workdir.state_dir(self.path, step)
        except ValueError as e:
            raise ValueError(f"--{e}") from None  # "--step N: no such checkpoint ..."
        self.tokenizer = Tokenizer.load(self.path / workdir.TOKENIZER)
        self.cfg = workdir.model_config(self.path)
        self.prompt_template = workdir.prompt_template(self.path)
        self.tree_dir, self.prefix = tree_dir, ("params",)
        self.lora = lora.from_config(self.train_config.get("lora"))

    def lora_parts(self) -> tuple[Any, Any, Any]:
        """A LoRA run's (frozen base, adapters, mesh): the base rebuilt as the run built it and
        checked against the checkpoint's record of it, the adapters restored onto the mesh."""
        if self._lora_parts is None:
            from jaxalign.train import loop  # the base exactly as training made it

            assert self.lora is not None and self.train_config is not None
            mesh = mesh_lib.make_mesh()
            init_from = self.train_config.get("init_from", "")
            initial = loop._initial_params(init_from, self.cfg, mesh, self.train_config["seed"])  # noqa: SLF001
            base = lora.prepare_base(initial, self.cfg, self.lora, mesh)
            saved_config = json.loads((self.tree_dir.parent / "config" / "metadata").read_text())
            current = {"init_from": init_from, **lora.fingerprint(base)}
            lora.check_fingerprint(saved_config.get("lora_base"), current, str(self.tree_dir.parent))
            shapes = lora.adapter_shapes(self.cfg, self.lora)
            saved = workdir.pytree_call("metadata", self.tree_dir).tree
            modeldir.check_tree_fits(saved.get("params", {}), shapes, f"{self.tree_dir} (LoRA adapters)")
            shardings = lora.adapter_shardings(self.cfg, self.lora, mesh)
            target = {"params": jax.tree.map(
                lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)}
            restored = workdir.pytree_call("restore", self.tree_dir, args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True))
            self._lora_parts = (base, restored["params"], mesh)
        return self._lora_parts

    def read(self, key: tuple[str, ...]) -> np.ndarray:
        """One parameter as a host array: a partial restore reads this leaf and nothing else (a LoRA
        run: the merged parameter)."""
        if self.lora is not None:
            if self._merged is None:
                base, adapters, mesh = self.lora_parts()
                self._merged = lora.merge(base, adapters, self.cfg, self.lora, mesh)
            node = self._merged
            for k in key:
                node = node[k]
            return np.asarray(jax.device_get(node))
        full = (*self.prefix, *key)
        item: Any = np.zeros((), np.float32)  # only the structure matters to orbax here
        args: Any = ocp.RestoreArgs(restore_type=np.ndarray)
        for k in reversed(full):
            item, args = {k: item}, {k: args}
        restored = workdir.pytree_call("restore", self.tree_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=args, partial_restore=True))
        for k in full:
            restored = restored[k]
        return np.asarray(restored)

    def leaf_bytes(self, key: tuple[str, ...], itemsize: int) -> int:
        node = self.saved
        for k in key:
            node = node[k]
        return math.prod(node.shape) * itemsize


def export(
    checkpoint: str | os.PathLike, out: str | os.PathLike, *, step: int | None = None, fmt: str = "hf",
    dtype: str | None = None, overwrite: bool = False, max_shard_bytes: int = 2**30,
) -> epath.Path:
    """Writes `out` from a train workdir (step `step`, default the latest) or a model directory."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: must be one of {FORMATS}")
    source = Source(checkpoint, step)  # reads metadata only
    if fmt == "peft" and source.lora is None:
        raise ValueError(f"--format peft: {checkpoint} is not a LoRA run (its config has no lora section "
                         "with rank > 0); export it as hf or orbax")
    modeldir.check_apart(out, [checkpoint])
    np_dtype = jnp.dtype(dtype or ("float32" if fmt == "peft" else source.cfg.param_dtype))
    # what marks the output complete
    marker = {"hf": hf.CONFIG_FILE, "peft": PEFT_CONFIG}.get(fmt, modeldir.MODEL_FILE)
    with modeldir.staged_directory(out, overwrite, marker=marker) as tmp:
        if fmt == "hf":
            _write_hf(source, tmp, np_dtype, max_shard_bytes)
        elif fmt == "peft":
            _write_peft(source, tmp, np_dtype)
        else:
            _write_orbax(source, tmp, np_dtype)
        (tmp / "README.md").write_text(model_card(source, fmt, np_dtype.name))
    return paths.path(out)


# ---------------------------------------------------------------------------------- HF


def _write_hf(source: Source, tmp: epath.Path, np_dtype: Any, max_shard_bytes: int) -> None:
    cfg = source.cfg
    if source.tokenizer is not None and cfg.pad_token_id is None:
        cfg = cfg.replace(pad_token_id=source.tokenizer.pad_id)  # HF's generate wants it (as api.save_hf)
    shards = _plan(source, cfg, np_dtype.itemsize, max_shard_bytes)
    files = [hf.SINGLE_FILE] if len(shards) == 1 else [
        f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    weight_map, total = {}, 0
    for file, shard in zip(files, shards, strict=True):
        tensors = {}
        for leaf_key, entries in shard:
            leaf = source.read(leaf_key)
            for name, t, layer in entries:
                ours = leaf if layer is None else leaf[layer]
                hf_t = np.transpose(ours, np.argsort(t.perm)).reshape(t.shape)  # hf.export's layout
                tensors[name] = np.ascontiguousarray(hf_t.astype(np_dtype))
                weight_map[name], total = file, total + tensors[name].nbytes
            del leaf
        hf.save_safetensors(tensors, tmp / file)
        del tensors
    tok, chat = source.tokenizer, None
    # A chat template that renders conversations as the run was prompted; a plain LM ("{prompt}",
    # e.g. an imported chat model) keeps the template its tokenizer came with.
    if tok is not None and source.prompt_template != modeldir.DEFAULT_TEMPLATE:
        chat = dialogue.chat_template(source.prompt_template, tok.bos_token, tok.eos_token)
    hf.write_metadata(tmp, cfg, np_dtype, tok, {"total_size": total}, weight_map, len(files), chat)


def _plan(source: Source, cfg: ModelConfig, itemsize: int, max_bytes: int) -> list[list[tuple]]:
    """Shards of [(leaf key, [(HF name, tensor, layer index into the leaf or None)])]: each leaf
    is read once and its tensors go to one shard; a shard is closed once it holds max_bytes."""
    leaves = []
    for key, t in hf.tensor_table(cfg).items():
        if key[0] != "layers":
            leaves.append((key, [(t.name, t, None)]))
        elif cfg.scan_layers:  # one stacked leaf [num_layers, ...]
            leaves.append((key, [(t.name.format(i=i), t, i) for i in range(cfg.num_hidden_layers)]))
        else:
            leaves += [((f"layers_{i}", *key[1:]), [(t.name.format(i=i), t, None)])
                       for i in range(cfg.num_hidden_layers)]
    shards: list[list[tuple]] = [[]]
    size = 0
    for leaf_key, entries in leaves:
        if shards[-1] and size >= max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((leaf_key, entries))
        size += source.leaf_bytes(leaf_key, itemsize)
    return shards


# ---------------------------------------------------------------------------------- PEFT


def _write_peft(source: Source, tmp: epath.Path, np_dtype: Any) -> None:
    """adapter_config.json + adapter_model.safetensors (+ the tokenizer): the adapters in PEFT's layout."""
    assert source.lora is not None and source.train_config is not None
    _, adapters, _ = source.lora_parts()
    names = {key: t.name for key, t in hf.tensor_table(source.cfg).items()}
    tensors = lora.peft_tensors(source.cfg, source.lora, adapters, names)
    hf.save_safetensors({k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in tensors.items()},
                        tmp / PEFT_WEIGHTS)
    modules = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in tensors})
    base_model = str(source.train_config.get("init_from", ""))
    config = lora.peft_config(source.lora, modules, base_model, source.cfg.head)
    (tmp / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if source.tokenizer is not None:
        source.tokenizer.save_pretrained(tmp)


# ---------------------------------------------------------------------------------- orbax


def _write_orbax(source: Source, tmp: epath.Path, np_dtype: Any) -> None:
    """A jaxalign model directory (what modeldir.save_model writes) of the params alone, saved
    leaf by leaf with orbax's partial save: each call adds one leaf to a pending checkpoint, and
    `finalize` merges them. Its "state" item is an ordinary pytree checkpoint, which becomes
    params/."""
    cfg = source.cfg.replace(param_dtype=np_dtype.name)
    # Orbax adds to a pending checkpoint through snapshots, which it makes on local disks only: for
    # a bucket the params are assembled in a local temporary directory and then uploaded.
    remote = paths.is_url(tmp)
    local = tempfile.TemporaryDirectory(prefix="jaxalign-export-") if remote else contextlib.nullcontext(tmp)
    with local as work:
        pending = epath.Path(work) / "params.partial"
        for key in _leaf_keys(models.param_shapes(cfg)):
            leaf: Any = source.read(key).astype(np_dtype)
            for k in reversed(key):
                leaf = {k: leaf}
            partial.save(pending, leaf)
        partial.finalize(pending)
        params = epath.Path(work) / "params"
        os.rename(pending / "state", params)
        paths.rmtree(pending)
        # What StandardCheckpointer writes beside a tree: without the metadata orbax warns on every
        # load; without the commit file it takes a tree in a bucket for an unfinished save.
        handler = f"{ocp.StandardCheckpointHandler.__module__}.{ocp.StandardCheckpointHandler.__qualname__}"
        now = time.time_ns()
        meta = {"item_handlers": handler, "metrics": {}, "performance_metrics": {},
                "init_timestamp_nsecs": now, "commit_timestamp_nsecs": now, "custom_metadata": {}}
        (params / "_CHECKPOINT_METADATA").write_text(json.dumps(meta))
        (params / "commit_success.txt").write_text(f"Checkpoint commit was successful to {tmp / 'params'}")
        if remote:
            paths.copy_tree(params, tmp / "params")
    # Read back what was written: a layout orbax no longer reads is an error here, not at load.
    saved = ocp.StandardCheckpointer().metadata(tmp / "params").item_metadata.tree
    modeldir.check_tree_fits(saved, models.param_shapes(cfg), str(tmp / "params"))
    if source.tokenizer is not None:
        source.tokenizer.save_pretrained(tmp / "tokenizer")
    modeldir.write_model_file(tmp, cfg, source.prompt_template)


# ---------------------------------------------------------------------------------- model card


def model_card(source: Source, fmt: str, dtype: str) -> str:
    """README.md: what the model is, where it came from and how it was made."""
    cfg = source.cfg
    objective = (source.train_config or {}).get("objective", {}).get("name", "unknown")
    load = ("transformers.AutoModelForCausalLM.from_pretrained(DIR)" if fmt == "hf" and cfg.head == "lm"
            else "transformers.AutoModelForSequenceClassification.from_pretrained(DIR)" if fmt == "hf"
            else "jaxalign.load(DIR)  # or: jaxalign generate --checkpoint DIR --prompt ...")
    lines = [
        "# jaxalign export", "",
        f"- format: {fmt} ({dtype})",
        f"- source: {source.path}" + (f" (step {source.step})" if source.step is not None else ""),
        f"- step: {source.step if source.step is not None else 'n/a (model directory)'}",
        f"- objective: {objective}",
        f"- head: {cfg.head}",
        *([f"- LoRA: {json.dumps(lora.describe(source.lora))}"
           + (" (adapters alone; load onto the base with peft)" if fmt == "peft" else " (merged)")]
          if source.lora is not None else []),
        f"- prompt template: {json.dumps(source.prompt_template)} (how training presented a prompt)",
        f"- parameters: {cfg.num_params():,}",
        f"- shape: vocab_size={cfg.vocab_size}, hidden_size={cfg.hidden_size}, "
        f"intermediate_size={cfg.intermediate_size}, num_hidden_layers={cfg.num_hidden_layers}, "
        f"num_attention_heads={cfg.num_attention_heads}, num_key_value_heads={cfg.kv_heads}, "
        f"head_dim={cfg.dims_per_head}",
        f"- made by: jaxalign export --format {fmt} on "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "", "## Load", "", "```python", load, "```", "",
        "## Model config", "", "```json", json.dumps(cfg.to_dict(), indent=2), "```", "",
    ]
    if source.train_config is not None:
        lines += ["## Training config", "", "```json", json.dumps(source.train_config, indent=2), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- helpers


def _leaf_keys(tree: Any) -> list[tuple[str, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return [tuple(modeldir.key_name(k) for k in path) for path, _ in leaves]
