"""The notebook face of jaxalign: load a model, look at logits, generate, save.

    lm = jaxalign.load("path/to/hf-or-jaxalign-dir", mesh="dp:1,fsdp:-1,tp:1")
    lm.logits([[1, 2, 3]])                       # np.ndarray [batch, len, vocab]
    lm.generate(["Hello"], max_new_tokens=32, temperature=0.7, top_p=0.9, seed=0)
    lm.save_hf("exported/")                      # loadable by transformers

Everything here is a thin layer over jaxalign.models, sample, hf and checkpoints, so what works
in a notebook works the same in the trainer and the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxalign import checkpoints, hf, models, sample
from jaxalign import mesh as mesh_lib
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.models import ModelConfig, Transformer


@dataclasses.dataclass
class LM:
    """A model's config and sharded parameters on a mesh, with an optional tokenizer."""

    cfg: ModelConfig
    params: Any
    mesh: Mesh
    tokenizer: Tokenizer | None = None
    # How text prompts are wrapped before encoding: a workdir's model gets its training
    # template, so it is asked exactly as it was trained.
    prompt_template: str = checkpoints.DEFAULT_TEMPLATE

    def logits(self, token_ids: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """Float32 logits [batch, len, vocab] for equal-length rows of token ids."""
        tokens = np.asarray(token_ids, dtype=np.int32)
        if tokens.ndim != 2:
            raise ValueError(f"token_ids must be [batch, len], got shape {tokens.shape}")
        return np.asarray(_forward(self.cfg, self.mesh)(self.params, jnp.asarray(tokens)))

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str] | list[list[int]]:
        """Continues each prompt; text prompts give text back, token-id prompts give ids."""
        as_text = all(isinstance(p, str) for p in prompts)
        if as_text:
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer; pass token ids or load one")
            add_bos = self.cfg.bos_token_id is not None
            ids = [self.tokenizer.encode(self.prompt_template.format(prompt=p), add_bos=add_bos)
                   for p in prompts]
        else:
            ids = [list(p) for p in prompts]
        eos = self.tokenizer.eos_id if self.tokenizer is not None else None
        out = sample.generate(
            self.params, self.cfg, ids, mesh=self.mesh, max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos_id=eos,
        )
        if not as_text:
            return out
        return [self.tokenizer.decode([t for t in row if t != eos]) for row in out]

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """A jaxalign model directory (orbax params + config + tokenizer)."""
        return checkpoints.save_model(path, self.params, self.cfg, self.tokenizer, overwrite,
                                      prompt_template=self.prompt_template)

    def save_hf(self, path: str | os.PathLike, dtype: str | None = None, overwrite: bool = False) -> Path:
        """A Hugging Face directory that transformers.AutoModelForCausalLM loads."""
        cfg = self.cfg
        if self.tokenizer is not None and cfg.pad_token_id is None:
            # Trained tokenizers have a real pad id; HF's generate wants it in the config.
            cfg = cfg.replace(pad_token_id=self.tokenizer.pad_id)
        return hf.export_checkpoint(
            self.params, cfg, path, tokenizer=self.tokenizer, dtype=dtype, overwrite=overwrite
        )


def load(path: str | os.PathLike, mesh: str | Mesh = "dp:1,fsdp:-1,tp:1", **overrides: Any) -> LM:
    """Loads a `jaxalign train` workdir (latest checkpoint), a jaxalign model directory or a
    Hugging Face LLaMA-family directory.

    `overrides` change execution options of the model config (e.g. dtype="bfloat16",
    scan_layers=False, attention_impl="cudnn"); they must not change its shape.
    """
    path = Path(path)
    mesh = mesh_lib.make_mesh(mesh) if isinstance(mesh, str) else mesh
    if (path / "checkpoints").is_dir() and (path / "config.json").is_file():
        return _load_workdir(path, mesh, overrides)
    if checkpoints.is_model_dir(path):
        cfg = checkpoints.load_config(path, **overrides)
        params = checkpoints.restore_params(path, cfg, mesh)
        tok_dir = path / "tokenizer"
        tokenizer = Tokenizer.load(tok_dir) if tok_dir.exists() else None
        return LM(cfg, params, mesh, tokenizer, prompt_template=checkpoints.load_prompt_template(path))
    elif (path / "config.json").is_file():
        cfg, params = hf.import_checkpoint(path, mesh, **overrides)
        tokenizer = Tokenizer.load(path) if _has_tokenizer(path) else None
    else:
        raise FileNotFoundError(
            f"{path}: neither a jaxalign model directory ({checkpoints.MODEL_FILE}) nor a Hugging "
            "Face checkpoint (config.json)"
        )
    return LM(cfg, params, mesh, tokenizer)


def init(
    cfg: ModelConfig | str, mesh: str | Mesh = "dp:1,fsdp:-1,tp:1", seed: int = 0,
    tokenizer: Tokenizer | None = None,
) -> LM:
    """A randomly initialised model (a preset name or a ModelConfig)."""
    cfg = models.get_preset(cfg) if isinstance(cfg, str) else cfg
    mesh = mesh_lib.make_mesh(mesh) if isinstance(mesh, str) else mesh
    return LM(cfg, models.init_params(cfg, mesh, seed), mesh, tokenizer)


def _load_workdir(workdir: Path, mesh: Mesh, overrides: dict[str, Any]) -> LM:
    """The latest checkpoint of a `jaxalign train` workdir (its params; optimizer state is
    restored alongside because it shares the checkpoint, then dropped)."""
    import ml_collections

    from jaxalign.train import loop, optim
    from jaxalign.train import state as state_lib
    from jaxalign.train.checkpointing import Checkpointer

    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    tokenizer = Tokenizer.load(workdir / "tokenizer")
    cfg = loop.model_config(config, tokenizer.vocab_size).replace(**overrides)
    tx, _ = optim.make_optimizer(config.optimizer)
    with Checkpointer(workdir / "checkpoints") as checkpointer:
        state, _, _ = checkpointer.restore(state_lib.abstract_train_state(cfg, tx, mesh))
    return LM(cfg, state.params, mesh, tokenizer, prompt_template=workdir_prompt_template(workdir, config))


def workdir_prompt_template(workdir: Path, config: Any) -> str:
    """How the run in `workdir` (its resolved `config`) presents a prompt to the model."""
    from jaxalign.objectives import registry

    objective = config.get("objective", {})
    if objective.get("name") == "rl":  # prompted as the policy RL started from was trained
        from jaxalign.rl import loop as rl_loop

        objective = rl_loop.policy_objective(workdir)
    return registry.prompt_template(objective)


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()


_FORWARDS: dict[tuple[ModelConfig, Mesh], Any] = {}


def _forward(cfg: ModelConfig, mesh: Mesh):
    """One jitted forward per (config, mesh), so repeated calls do not retrace."""
    key = (cfg, mesh)
    if key not in _FORWARDS:
        jitted = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))

        def run(params, tokens):
            with mesh_lib.use(mesh):
                return jitted(params, tokens)

        _FORWARDS[key] = run
    return _FORWARDS[key]
