"""`jaxalign eval --harness`: EleutherAI's lm-evaluation-harness (lm-eval 0.4) on a jaxalign model.

    lm = jaxalign.load("path/to/checkpoint", mesh="dp:1,fsdp:-1,tp:1")
    model = HarnessLM(lm, max_len=2048)
    results = evaluate(model, ["hellaswag", "arc_easy"], limit=100)   # lm-eval's results dict
    print(table(results))

`HarnessLM` is an `lm_eval.api.model.LM` (through `TemplateLM`, whose `loglikelihood` splits a
(context, continuation) pair as lm-eval's HFLM does: trailing spaces of the context move to the
continuation, the whole text is encoded and the context's ids are cut off its front; an empty context
becomes the prefix token, BOS or else EOS). Its three request types run on the model's mesh:

- loglikelihood: every (context, continuation) is one example whose continuation tokens are
  weighted, scored packed several to a row by `forward.greedy_logprobs` (the log-probability and
  is_greedy: every continuation token is the argmax of the model). Rows have a power-of-two length
  and chunks of rows a power-of-two count, so a few shapes compile for a whole task.
- loglikelihood_rolling: the text (no BOS of its own) cut into windows of at most `max_len`
  predictions by lm-eval's `get_rolling_token_windows` / `make_disjoint_window`, the first
  conditioned on the prefix token, each later one on as many preceding tokens as fit; every token is
  predicted once, and the windows are scored as loglikelihood requests.
- generate_until: `sample.generate` (KV cache; greedy unless the task asks for do_sample and a
  temperature), batched by equal generation arguments, a batch padded to a power of two; the text is
  cut at the first of the task's `until` strings, and generation stops at EOS or `max_gen_toks`.

Text is encoded by the model's own jaxalign tokenizer (sentencepiece, tokenizer.json or the demo
tokenizer), with BOS first when the model has one, and is not wrapped in the model's training prompt
template: lm-eval's tasks write their own prompts. Sequences are kept within `max_len` positions
(`jaxalign.eval.truncation`: a context loses its start, after BOS); `HarnessLM.truncation` counts what
was cut.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text

from jaxalign import api, forward, sample
from jaxalign.eval.truncation import Truncation

log = logging.getLogger(__name__)

# generation_kwargs a task may give (lm-eval's aliases of max_gen_toks are folded into it first).
_GEN_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
_SCORE_CHUNK = 4096  # loglikelihood requests packed per call, longest first


class HarnessLM(TemplateLM):
    """A jaxalign `api.LM` as an lm-eval model (see the module docstring)."""

    backend = "causal"

    def __init__(self, lm: api.LM, *, max_len: int | None = None, max_len_from: str = "",
                 batch_size: int = 16, max_gen_toks: int = 256, seed: int = 0):
        super().__init__()
        if lm.tokenizer is None:
            raise ValueError("the model has no tokenizer (tokenizer.json or tokenizer.model): lm-eval's "
                             "tasks are text, so it needs one")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        context = lm.cfg.max_position_embeddings
        max_len = context if max_len is None else max_len
        if not 2 <= max_len <= context:
            raise ValueError(f"max_len={max_len} must be in [2, {context}] (the model's "
                             "max_position_embeddings)")
        self.lm, self.tok = lm, lm.tokenizer
        self.max_length, self.batch_size = max_len, batch_size
        self.max_gen_toks, self.seed = max_gen_toks, seed
        if self.tok.vocab_size > lm.cfg.vocab_size:
            raise ValueError(f"the tokenizer has {self.tok.vocab_size} ids, more than the model's "
                             f"{lm.cfg.vocab_size}")
        self.add_bos = lm.cfg.bos_token_id is not None and self.tok.bos_id is not None
        # Generated ids the tokenizer lacks (a model's embedding padded past its vocabulary): left out
        # of the text, counted here and in the results.
        self.unknown_generated = 0
        self.truncation = Truncation(max_len, max_len_from or "max_len",
                                     bos_id=self.tok.bos_id if self.add_bos else None)
        self._generate_calls = 0

    # ------------------------------------------------------------------ tokens

    @property
    def eot_token_id(self) -> int:
        if self.tok.eos_id is None:
            raise ValueError(f"{self.tok!r} has no EOS token")
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context and the first rolling window condition on: BOS, else EOS (HFLM's)."""
        return self.tok.bos_id if self.tok.bos_id is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        add_bos = self.add_bos if add_special_tokens is None else add_special_tokens and self.add_bos
        return self.tok.encode(string, add_bos=add_bos)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tok.decode(tokens)

    def get_model_info(self) -> dict[str, Any]:
        cfg = self.lm.cfg
        return {"model_num_parameters": cfg.num_params(), "model_dtype": str(cfg.dtype),
                "max_length": self.max_length, "mesh": dict(self.lm.mesh.shape)}

    # ------------------------------------------------------------------ scoring

    def _loglikelihood_tokens(self, requests: Sequence[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) of each (request, context ids, continuation ids)."""
        examples = []
        for i, (_, context, continuation) in enumerate(requests):
            if not context or not continuation:
                raise ValueError(f"loglikelihood request {i}: empty context or continuation ids "
                                 f"({len(context)}, {len(continuation)})")
            # A context cut to fit keeps BOS and its last token (jaxalign.eval.truncation).
            head = int(self.truncation.bos_id is not None and context[0] == self.truncation.bos_id)
            room = self.max_length + 1 - min(len(context), head + 1)
            if len(continuation) > room:
                raise ValueError(f"loglikelihood request {i}: its continuation has {len(continuation)} "
                                 f"tokens; with its context that passes max_len={self.max_length} "
                                 f"({self.truncation.source})")
            examples.append({"tokens": np.asarray(context + continuation, np.int32),
                             "weights": np.r_[np.zeros(len(context)), np.ones(len(continuation))]})
        examples = self.truncation.scored_examples(examples)
        logp, greedy = np.zeros(len(examples)), np.zeros(len(examples), bool)
        order = np.argsort([-len(ex["tokens"]) for ex in examples], kind="stable")
        for start in range(0, len(order), _SCORE_CHUNK):
            index = order[start:start + _SCORE_CHUNK]
            # Rows as long as the chunk's longest example, rounded up to a power of two.
            scores, is_greedy = forward.greedy_logprobs(
                self.lm.params, self.lm.cfg, self.lm.mesh, [examples[i] for i in index],
                batch_size=self.batch_size)
            logp[index], greedy[index] = scores.logp, is_greedy
            if len(order) > _SCORE_CHUNK:
                done = min(start + _SCORE_CHUNK, len(order))
                log.info("loglikelihood: %d of %d requests", done, len(order))
        answers = [(float(lp), bool(g)) for lp, g in zip(logp, greedy, strict=True)]
        for (request, _, _), answer in zip(requests, answers, strict=True):
            if request is not None:  # rolling windows are cached per text, by loglikelihood_rolling
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return answers

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            pairs = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text, add_special_tokens=False), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)
            for context, predicted in map(lm_utils.make_disjoint_window, pairs):
                windows.append((None, context, predicted))
                owners.append(i)
        totals = np.zeros(len(requests))
        if windows:
            scores = self._loglikelihood_tokens(windows)
            np.add.at(totals, owners, [logp for logp, _ in scores])
        results = [float(t) for t in totals]
        for req, total in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return results

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        results: list[str | None] = [None] * len(requests)
        for indices in groups.values():
            context_kwargs = requests[indices[0]].args[1]
            kwargs = self._gen_kwargs(context_kwargs)
            prompts = self.truncation.prompt_ids([self.tok_encode(requests[i].args[0]) for i in indices],
                                                 kwargs["max_gen_toks"])
            order = sorted(range(len(indices)), key=lambda j: -len(prompts[j]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                for j, text in zip(chunk, self._generate([prompts[j] for j in chunk], kwargs), strict=True):
                    results[indices[j]] = text
                    self.cache_hook.add_partial("generate_until", requests[indices[j]].args, text)
        return results

    def _gen_kwargs(self, gen_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(gen_kwargs, Mapping):
            raise ValueError(f"generate_until: generation kwargs must be a dict, got {gen_kwargs!r}")
        kwargs = dict(normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks))
        unknown = sorted(set(kwargs) - set(_GEN_KEYS))
        if unknown:
            raise ValueError(f"generate_until: generation kwargs {unknown} are not supported by jaxalign's "
                             f"sampler (it takes {list(_GEN_KEYS)})")
        until = kwargs["until"]
        if not isinstance(until, list) or not all(isinstance(u, str) for u in until):
            raise ValueError(f"generate_until: until must be a string or a list of strings, got {until!r}")
        temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0
        return {"until": until, "max_gen_toks": int(kwargs["max_gen_toks"]), "temperature": temperature,
                "top_k": int(kwargs.get("top_k") or 0), "top_p": float(kwargs.get("top_p") or 1.0)}

    def _generate(self, prompts: list[list[int]], kwargs: Mapping[str, Any]) -> list[str]:
        """Texts for `prompts` (at most batch_size), the batch padded to a power of two with copies."""
        n = len(prompts)
        padded = prompts + [prompts[0]] * (min(self.batch_size, 1 << (n - 1).bit_length()) - n)
        self._generate_calls += 1
        eos = self.tok.eos_id
        out = sample.generate(
            self.lm.params, self.lm.cfg, padded, mesh=self.lm.mesh, max_new_tokens=kwargs["max_gen_toks"],
            temperature=kwargs["temperature"], top_k=kwargs["top_k"], top_p=kwargs["top_p"],
            seed=sample.derive_seed(self.seed, self._generate_calls), eos_id=eos)
        texts = []
        for ids in out[:n]:
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            known = [i for i in ids if i < self.tok.vocab_size]
            if len(known) < len(ids):
                if not self.unknown_generated:
                    log.warning("generate_until: the model generated ids past its tokenizer's %d; they are "
                                "left out of the text (counted in the results' jaxalign section)",
                                self.tok.vocab_size)
                self.unknown_generated += len(ids) - len(known)
            texts.append(postprocess_generated_text(self.tok.decode(known), kwargs["until"], None))
        return texts


# ---------------------------------------------------------------------- tasks and results


def task_manager(tasks: Sequence[str], tasks_dir: str | os.PathLike | None = None) -> Any:
    """lm-eval's TaskManager for `tasks`. With `tasks_dir` (user task YAMLs), only that directory is
    indexed when it defines every task named, since indexing lm-eval's own ~15k tasks takes seconds;
    else both, the directory's tasks taking precedence as lm-eval has it."""
    from lm_eval.tasks import TaskManager

    if tasks_dir is None:
        return TaskManager()
    if not os.path.isdir(tasks_dir):
        raise NotADirectoryError(f"--harness-tasks-dir {tasks_dir}: not a directory")
    local = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    if not local.all_tasks:
        raise ValueError(f"{tasks_dir}: no lm-eval task YAMLs found there")
    if all(name in local.all_tasks for name in tasks):
        return local
    return TaskManager(include_path=str(tasks_dir))


def evaluate(model: HarnessLM, tasks: Sequence[str], *, limit: float | None = None,
             num_fewshot: int | None = None, tasks_dir: str | os.PathLike | None = None,
             gen_kwargs: Mapping[str, Any] | None = None, bootstrap_iters: int = 100_000,
             seed: int = 0) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` of `model` on `tasks` (names, or task YAML paths): its results dict
    (per-task metrics under "results"), with jaxalign's truncation counts under "jaxalign"."""
    from lm_eval import evaluator

    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise ValueError("--harness: no task names given")
    if limit is not None and not limit > 0:
        raise ValueError(f"--harness-limit {limit}: must be positive (a number below 1 is a fraction)")
    if limit is not None and limit >= 1:
        if not float(limit).is_integer():
            raise ValueError(f"--harness-limit {limit}: a count of examples must be whole")
        limit = int(limit)
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f"--harness-fewshot {num_fewshot}: must be >= 0")
    results = evaluator.simple_evaluate(
        model=model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
        task_manager=task_manager(tasks, tasks_dir), gen_kwargs=dict(gen_kwargs) if gen_kwargs else None,
        bootstrap_iters=bootstrap_iters, log_samples=False, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=None, fewshot_random_seed=seed)
    model.truncation.warn("eval --harness")
    results["jaxalign"] = {"truncation": model.truncation.section(),
                           "generated_ids_past_tokenizer": model.unknown_generated}
    return results


def to_json(results: Mapping[str, Any]) -> str:
    """The results dict as JSON text (lm-eval's own encoder for what JSON cannot hold)."""
    return json.dumps(results, indent=2, default=lm_utils.handle_non_serializable, ensure_ascii=False) + "\n"


def table(results: Mapping[str, Any]) -> str:
    """lm-eval's Markdown table of the results (and one of the groups, if any)."""
    text = lm_utils.make_table(results)
    if results.get("groups"):
        text += "\n" + lm_utils.make_table(results, "groups")
    return text

