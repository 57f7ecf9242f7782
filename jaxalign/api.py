"""The notebook face of jaxalign: load a model, look at logits, generate, save.

    lm = jaxalign.load("path/to/hf-or-jaxalign-dir", mesh="dp:1,fsdp:-1,tp:1")
    lm.logits([[1, 2, 3]])                       # np.ndarray [batch, len, vocab]
    lm.generate(["Hello"], max_new_tokens=32, temperature=0.7, top_p=0.9, seed=0)
    lm.save_hf("exported/")                      # loadable by transformers

Every path may be local or a URL (``gs://bucket/model``; `jaxalign.paths`).

Everything here is a thin layer over jaxalign.models, forward, sample, hf, modeldir and workdir, so what works
in a notebook works the same in the trainer and the CLI.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath
from jax.sharding import Mesh

from jaxalign import forward, hf, hub, modeldir, models, paths, sample, workdir
from jaxalign import mesh as mesh_lib
from jaxalign.data import dialogue
from jaxalign.data.tokenizer import Tokenizer, demo_tokenizer
from jaxalign.models import ModelConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LM:
    """A model's config and sharded parameters on a mesh, with an optional tokenizer."""

    cfg: ModelConfig
    params: Any
    mesh: Mesh
    tokenizer: Tokenizer | None = None
    # How text prompts are wrapped before encoding: a workdir's model gets its training
    # template, so it is asked exactly as it was trained.
    prompt_template: str = modeldir.DEFAULT_TEMPLATE

    def logits(self, token_ids: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """Float32 logits [batch, len, vocab] for equal-length rows of token ids."""
        tokens = np.asarray(token_ids, dtype=np.int32)
        if tokens.ndim != 2:
            raise ValueError(f"token_ids must be [batch, len], got shape {tokens.shape}")
        return forward.run(self.params, self.cfg, self.mesh, "logits", {"inputs": tokens}, replicated=False)

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
            ids = [self.tokenizer.encode(dialogue.render(self.prompt_template, p), add_bos=add_bos)
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

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> epath.Path:
        """A jaxalign model directory (orbax params + config + tokenizer)."""
        return modeldir.save_model(path, self.params, self.cfg, self.tokenizer, overwrite,
                                      prompt_template=self.prompt_template)

    def save_hf(self, path: str | os.PathLike, dtype: str | None = None,
                overwrite: bool = False) -> epath.Path:
        """A Hugging Face directory that transformers.AutoModelForCausalLM loads; its tokenizer
        carries a chat template that renders a conversation as `generate` renders a prompt
        (`dialogue.chat_template` of `prompt_template`)."""
        cfg, tok, chat = self.cfg, self.tokenizer, None
        if tok is not None:
            if cfg.pad_token_id is None:
                # Trained tokenizers have a real pad id; HF's generate wants it in the config.
                cfg = cfg.replace(pad_token_id=tok.pad_id)
            if self.prompt_template != modeldir.DEFAULT_TEMPLATE:  # else keep an imported model's own
                chat = dialogue.chat_template(self.prompt_template, tok.bos_token, tok.eos_token)
        return hf.export_checkpoint(
            self.params, cfg, path, tokenizer=tok, dtype=dtype, overwrite=overwrite, chat_template=chat
        )


def load(path: str | os.PathLike, mesh: str | Mesh = "dp:1,fsdp:-1,tp:1", **overrides: Any) -> LM:
    """Loads a `jaxalign train` workdir (latest checkpoint), a jaxalign model directory, a
    Hugging Face LLaMA-family directory or a Hugging Face Hub id (``org/name[@revision]``,
    fetched once into the Hub cache; `jaxalign.hub`).

    `overrides` change execution options of the model config (e.g. dtype="bfloat16",
    scan_layers=False, attention_impl="cudnn"); they must not change its shape.
    """
    path = paths.path(hub.resolve(path))
    log.info("loading %s...", path)
    mesh = mesh_lib.make_mesh(mesh) if isinstance(mesh, str) else mesh
    if workdir.is_workdir(path):  # the latest checkpoint's parameters; the optimizer state is not read
        cfg = workdir.model_config(path, **overrides)
        params = workdir.restore_params(path, cfg, mesh)
        tokenizer = Tokenizer.load(path / workdir.TOKENIZER)
        return LM(cfg, params, mesh, tokenizer, prompt_template=workdir.prompt_template(path))
    if modeldir.is_model_dir(path):
        cfg = modeldir.load_config(path, **overrides)
        params = modeldir.restore_params(path, cfg, mesh)
        tok_dir = path / "tokenizer"
        tokenizer = Tokenizer.load(tok_dir) if tok_dir.exists() else None
        return LM(cfg, params, mesh, tokenizer, prompt_template=modeldir.load_prompt_template(path))
    elif (path / hf.CONFIG_FILE).is_file():
        cfg, params = hf.import_checkpoint(path, mesh, **overrides)
        tokenizer = Tokenizer.load(path) if _has_tokenizer(path) else None
    else:
        raise FileNotFoundError(
            f"{path}: neither a jaxalign model directory ({modeldir.MODEL_FILE}) nor a Hugging "
            "Face checkpoint (config.json)"
        )
    return LM(cfg, params, mesh, tokenizer)


DEMO_VOCAB = 256  # tokenizer.demo_tokenizer's default size


def init(
    cfg: ModelConfig | str, mesh: str | Mesh = "dp:1,fsdp:-1,tp:1", seed: int = 0,
    tokenizer: Tokenizer | None = None,
) -> LM:
    """A randomly initialised model (a preset name or a ModelConfig). Without a `tokenizer`, a model
    with the bundled demo tokenizer's vocabulary (the "tiny" preset's 256 ids) gets that tokenizer,
    as `jaxalign generate --preset` has it, so text prompts work out of the box."""
    cfg = models.get_preset(cfg) if isinstance(cfg, str) else cfg
    if tokenizer is None and cfg.vocab_size == DEMO_VOCAB:
        tokenizer = demo_tokenizer(DEMO_VOCAB)
    mesh = mesh_lib.make_mesh(mesh) if isinstance(mesh, str) else mesh
    return LM(cfg, models.init_params(cfg, mesh, seed), mesh, tokenizer)


def _has_tokenizer(path: epath.Path) -> bool:
    return (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file()
