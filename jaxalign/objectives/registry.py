"""From a config's `objective` section to what the trainer needs: examples, a loss, a prompt.

    objective = registry.make(config.objective, tokenizer, seed=config.seed, schema="preference")
    source = objective.source(records)          # random access: the examples of every record, in order
    loss_fn = objective.loss_fn                 # loss_fn(logits, batch) -> (loss, metrics)
    lm.generate(objective.prompt_template.format(prompt=p))

Objectives (the rows of the Chain of Hindsight paper's Table 4, and DPO)::

    sft           SFT on the chosen responses; on group records on the best-rated response
                  (``responses = "best"``) or on every response (``"all"``, one example each)
    sft_pos_neg   SFT on chosen and rejected responses alike (two examples per record)
    unlikelihood  SFT on chosen + unlikelihood on rejected (Welleck et al. 2019)
    dpo           DPO against a frozen reference model (Rafailov et al. 2023)
    coh           Chain of Hindsight (`jaxalign.objectives.coh`), optionally with FCM
    edit_chain    Second Thoughts: context + unaligned draft -> edit chain -> aligned text
                  (`jaxalign.objectives.edit_chain`; preference records: chosen = aligned,
                  rejected = the unaligned draft)
    reward        a reward model (scalar head, `jaxalign.rl.reward`): Bradley-Terry on preference
                  records, cross-entropy on labelled records
    stable_alignment  Stable Alignment on group records (`jaxalign.objectives.stable_alignment`):
                  defaults K = group_size 3, margin 1, lam 0.5, rating_scale 7 are the reference
                  code's; the paper's README recipe trains with margin 10 and lam 0.2

RL refinement (``name = "rl"``) is a loop of its own: `jaxalign.rl.loop`.

Each objective's config keys are `DEFAULTS[name]`; a key that is not among them is an error rather
than silently ignored. Text records (``{"text"}``) train only with ``sft``, labelled records
(``{"text", "label"}``) only a ``reward`` model, group records (``{"prompt", "responses",
"ratings"}``, `jaxalign.data.jsonl`) only ``stable_alignment`` and its baselines ``sft`` with
``responses = "best"`` (SFT on the best responses) or ``"all"`` (SFT on all); ``stable_alignment``
trains on group records only. Every objective here prompts generation with
`pipeline.PROMPT_TEMPLATE` unless it says otherwise (CoH: its positive marker; edit chains: the draft).

Examples per record (``Objective.fanout``) is a number, or for ``sft`` with ``responses = "all"``
a function of the record (its number of responses); `ExpandedSource` then counts every record's
examples once, the first time it is sized or read, and stays random access.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from jaxalign.config import check_keys
from jaxalign.data import pipeline
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.objectives import coh, dpo, edit_chain, lm, stable_alignment, unlikelihood

Example = dict[str, Any]
Fanout = int | Callable[[Mapping[str, Any]], int]  # examples per record: fixed, or per record
SCHEMAS = ("preference", "text", "labelled", "group")  # the record schemas `make` knows
SFT_RESPONSES = ("best", "all")

DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"normalization": "token", "responses": "best"},
    "sft_pos_neg": {"normalization": "token"},
    "unlikelihood": {"normalization": "token", "alpha": 1.0},
    "dpo": {"beta": 0.1, "label_smoothing": 0.0},
    "edit_chain": {
        "normalization": "sequence", "loss_on": "chain+aligned", "augment": False, "chain": True,
        "insert_cost": 1.0, "delete_cost": 1.0, "replace_cost": 2.0,
    },
    "reward": {"center_coef": 0.0},
    "coh": {
        "normalization": "sequence", "user_marker": "User:", "positive_marker": "A helpful answer:",
        "negative_marker": "An unhelpful answer:", "variants": "p,n,pn,np", "aux_phrases": False,
        "fcm_min": 0.0, "fcm_max": 0.05,
    },
    "stable_alignment": {"margin": 1.0, "lam": 0.5, "rating_scale": 7.0, "reduce": "mean", "group_size": 3},
}


def default_config(name: str = "coh") -> ml_collections.ConfigDict:
    """The objective section with `name` and its defaults (e.g. ``default_config("dpo")``)."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(DEFAULTS)}")
    return ml_collections.ConfigDict({"name": name, **DEFAULTS[name]})


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    fanout: Fanout  # examples per record: a number, or a function of the record
    make_example: Callable[[Mapping[str, Any], int, int], Example]  # (record, j, record index)
    loss_fn: lm.LossFn
    prompt_template: str  # str.format template with {prompt}: how generation is prompted
    reference: bool = False  # the loss needs the frozen reference model's log-probs
    fields: tuple[str, ...] = ()  # extra per-token fields the packer must carry
    batch_transform: Any = None  # train-only transform (CoH's FCM)
    head: str = "lm"  # "score": the model ends in a scalar head (a reward model)
    # How a held-out record is put to the model and how its continuation is read back, when that
    # is more than `prompt_template` on record["prompt"] (edit chains show the unaligned draft too
    # and answer with a chain before the aligned text). Both take the record first.
    prompt_fn: Callable[[Mapping[str, Any]], str] | None = None
    response_fn: Callable[[Mapping[str, Any], Sequence[int]], str] | None = None

    def source(self, records: Sequence[Mapping[str, Any]]) -> ExpandedSource:
        return ExpandedSource(records, self.fanout, self.make_example)

    def prompt(self, record: Mapping[str, Any]) -> str:
        """The text a generation for `record` is prompted with (BOS is added when encoding)."""
        if self.prompt_fn is not None:
            return self.prompt_fn(record)
        return self.prompt_template.format(prompt=pipeline.text_field(record, "prompt", "preference"))

    def response(self, record: Mapping[str, Any], generated: Sequence[int], tokenizer: Tokenizer) -> str:
        """The answer in a generation (ids after the prompt), as text."""
        if self.response_fn is not None:
            return self.response_fn(record, generated)
        return tokenizer.decode(generated).strip()


class ExpandedSource:
    """A random-access source of the examples of every record (`fanout` per record: a number or a
    function of the record), made when read (grain's read threads run it ahead of packing), so
    shuffling mixes the variants of all records.

    With a per-record fanout the records' example counts are read once, on the first ``len`` or
    read, into cumulative offsets (one pass over the records; each example is then found by
    binary search).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], fanout: Fanout,
                 make_example: Callable[[Mapping[str, Any], int, int], Example]) -> None:
        if not callable(fanout):
            if isinstance(fanout, bool) or not isinstance(fanout, (int, np.integer)) or fanout < 1:
                raise ValueError(f"fanout={fanout!r} must be a positive integer or a function of the record")
            fanout = int(fanout)
        self.records, self.fanout, self.make_example = records, fanout, make_example
        self._offsets: np.ndarray | None = None

    def offsets(self) -> np.ndarray:
        """[len(records) + 1] int64: record i's examples are offsets[i] .. offsets[i + 1] - 1."""
        if self._offsets is None:
            if callable(self.fanout):
                counts = [self._count(i) for i in range(len(self.records))]
            else:
                counts = [self.fanout] * len(self.records)
            self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        return self._offsets

    def _count(self, index: int) -> int:
        try:
            count = self.fanout(self.records[index])
        except ValueError as e:
            raise ValueError(f"record {index}: {e}") from e
        if count < 1:
            raise ValueError(f"record {index}: gives no examples")
        return count

    def __len__(self) -> int:
        if not callable(self.fanout):
            return len(self.records) * self.fanout
        return int(self.offsets()[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(record index, example index within the record) of example `index`."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} of {len(self)}")
        if not callable(self.fanout):
            return divmod(index, self.fanout)
        record_index = int(np.searchsorted(self.offsets(), index, side="right")) - 1
        return record_index, index - int(self.offsets()[record_index])

    def __getitem__(self, index: int) -> Example:
        record_index, j = self.locate(index)
        try:
            return self.make_example(self.records[record_index], j, record_index)
        except ValueError as e:
            raise ValueError(f"record {record_index}: {e}") from e


def make(objective_cfg: ml_collections.ConfigDict, tokenizer: Tokenizer, *, seed: int = 0,
         schema: str = "preference") -> Objective:
    """The objective `objective_cfg.name` with its options, for records of `schema`."""
    name = objective_cfg.get("name", "sft")
    if name not in DEFAULTS:
        raise ValueError(f"config.objective.name={name!r}; known: {', '.join(DEFAULTS)}")
    check_keys(objective_cfg, ("name", *DEFAULTS[name]), f"config.objective (name={name!r})")
    opts = {**DEFAULTS[name], **{k: v for k, v in objective_cfg.items() if k != "name"}}
    _check_schema(name, schema)
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no EOS token, which ends every response")
    return _BUILDERS[name](opts, tokenizer, seed, schema)


def _check_schema(name: str, schema: str) -> None:
    if schema not in SCHEMAS:
        raise ValueError(f"unknown record schema {schema!r}; known: {', '.join(SCHEMAS)}")
    if schema == "text" and name != "sft":
        raise ValueError(f"objective {name!r} needs preference records; text records train only with 'sft'")
    if schema == "labelled" and name != "reward":
        raise ValueError(f"objective {name!r} needs preference records; "
                         "labelled records train only a 'reward' model")
    if schema == "group" and name not in ("stable_alignment", "sft"):
        raise ValueError(f"objective {name!r} needs preference records; group records (prompt, responses, "
                         "ratings) train only with 'stable_alignment' or its baselines 'sft' "
                         "(objective.responses = 'best' or 'all')")
    if name == "stable_alignment" and schema != "group":
        raise ValueError(f"objective 'stable_alignment' needs group records (prompt, responses, ratings; "
                         f"data.schema = 'group'), got {schema} records")


def _encode_pair(record: Mapping[str, Any], tokenizer: Tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(BOS + formatted prompt, chosen, rejected) ids, the prompt as `pipeline.format_prompt` has it."""
    text = functools.partial(pipeline.text_field, record, kind="preference")
    add_bos = tokenizer.bos_id is not None
    prompt = tokenizer.encode(pipeline.format_prompt(text(key="prompt")), add_bos=add_bos)
    return prompt, tokenizer.encode(text(key="chosen")), tokenizer.encode(text(key="rejected"))


def _sft(opts, tokenizer, seed, schema) -> Objective:
    responses = opts["responses"]
    if responses not in SFT_RESPONSES:
        raise ValueError(f"config.objective.responses={responses!r}; choose one of {SFT_RESPONSES}")
    loss_fn = lm.make_loss_fn(opts["normalization"])
    if responses == "best":  # preference: the chosen response; group: the highest-rated one
        def example(record, j, index):
            return pipeline.record_to_example(record, tokenizer, schema)

        return Objective("sft", 1, example, loss_fn, pipeline.PROMPT_TEMPLATE)
    if schema == "preference":
        raise ValueError("config.objective.responses='all' trains on every response of a group record; "
                         "for chosen and rejected of preference records alike use objective 'sft_pos_neg'")
    if schema != "group":
        raise ValueError(f"config.objective.responses='all' needs group records; {schema} records have "
                         "one text each (use responses='best')")

    def every(record, j, index):
        prompt, texts, _ = pipeline.group_fields(record)
        return pipeline.prompted_example(tokenizer, prompt, texts[j])

    def count(record):
        return len(pipeline.group_fields(record)[1])

    return Objective("sft", count, every, loss_fn, pipeline.PROMPT_TEMPLATE)


def _sft_pos_neg(opts, tokenizer, seed, schema) -> Objective:
    def example(record, j, index):
        prompt, chosen, rejected = _encode_pair(record, tokenizer)
        return pipeline.sft_example(prompt, (chosen, rejected)[j], tokenizer.eos_id)

    loss_fn = lm.make_loss_fn(opts["normalization"])
    return Objective("sft_pos_neg", 2, example, loss_fn, pipeline.PROMPT_TEMPLATE)


def _unlikelihood(opts, tokenizer, seed, schema) -> Objective:
    def example(record, j, index):
        prompt, chosen, rejected = _encode_pair(record, tokenizer)
        build = unlikelihood.positive_example if j == 0 else unlikelihood.negative_example
        return build(prompt, chosen if j == 0 else rejected, tokenizer.eos_id)

    loss_fn = functools.partial(unlikelihood.loss, alpha=float(opts["alpha"]),
                                normalization=opts["normalization"])
    return Objective("unlikelihood", 2, example, loss_fn, pipeline.PROMPT_TEMPLATE, fields=("ul_weights",))


def _dpo(opts, tokenizer, seed, schema) -> Objective:
    def example(record, j, index):
        return dpo.pair_example(*_encode_pair(record, tokenizer), tokenizer.eos_id)

    loss_fn = functools.partial(dpo.loss, beta=float(opts["beta"]),
                                label_smoothing=float(opts["label_smoothing"]))
    return Objective("dpo", 1, example, loss_fn, pipeline.PROMPT_TEMPLATE, reference=True)


def coh_format(opts: Mapping[str, Any]) -> coh.CoHFormat:
    variants = opts["variants"]
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    return coh.CoHFormat(opts["user_marker"], opts["positive_marker"], opts["negative_marker"],
                         tuple(variants), bool(opts["aux_phrases"]))


def _coh(opts, tokenizer, seed, schema) -> Objective:
    fmt = coh_format(opts)

    def example(record, j, index):
        return coh.make_example(record, fmt.variants[j], tokenizer, fmt, seed=seed, record_index=index)

    return Objective(
        "coh", len(fmt.variants), example, lm.make_loss_fn(opts["normalization"]), fmt.prompt_template(),
        batch_transform=coh.fcm_transform(float(opts["fcm_min"]), float(opts["fcm_max"])),
    )


def _edit_chain(opts, tokenizer, seed, schema) -> Objective:
    fmt = edit_chain.add_markers(tokenizer)  # grows the vocabulary: the trainer saves the tokenizer
    if opts["loss_on"] not in edit_chain.LOSS_ON:
        raise ValueError(f"config.objective.loss_on={opts['loss_on']!r}; choose one of {edit_chain.LOSS_ON}")
    first = edit_chain.Costs(*(float(opts[f"{op}_cost"]) for op in ("insert", "delete", "replace")))
    costs = (first, *[c for c in edit_chain.AUGMENT_COSTS if c != first]) if opts["augment"] else (first,)
    with_chain = bool(opts["chain"])
    fanout = edit_chain.num_chains(costs) if with_chain else 1

    def example(record, j, index):
        text = functools.partial(pipeline.text_field, record, kind="preference")
        return edit_chain.make_example(
            text(key="prompt"), text(key="rejected"), text(key="chosen"), tokenizer, fmt,
            chain_index=j, loss_on=opts["loss_on"], costs=costs, chain=with_chain)

    def prompt(record):
        text = functools.partial(pipeline.text_field, record, kind="preference")
        return edit_chain.prompt_text(text(key="prompt"), text(key="rejected"))

    def response(record, generated):
        if not with_chain:  # the rewrite ablation answers with the aligned text directly
            generated = list(generated)
            for stop in (fmt.aligned, tokenizer.eos_id):
                generated = generated[: generated.index(stop)] if stop in generated else generated
            return tokenizer.decode(generated).strip()
        src = tokenizer.encode(pipeline.text_field(record, "rejected", "preference"))
        return tokenizer.decode(edit_chain.parse_generation(generated, src, tokenizer, fmt).target).strip()

    return Objective("edit_chain", fanout, example, lm.make_loss_fn(opts["normalization"]),
                     "{prompt}" + edit_chain.SPELLING["unaligned"], prompt_fn=prompt, response_fn=response)


def _reward(opts, tokenizer, seed, schema) -> Objective:
    from jaxalign.rl import reward  # the reward model's head and losses live with RL

    if schema == "preference":  # Bradley-Terry on pairs
        def example(record, j, index):
            return reward.pair_example(*_encode_pair(record, tokenizer), tokenizer.eos_id)

        loss_fn = functools.partial(reward.bradley_terry_loss, center_coef=float(opts["center_coef"]))
        return Objective("reward", 1, example, loss_fn, pipeline.PROMPT_TEMPLATE, head="score")

    def labelled(record, j, index):  # cross-entropy on aligned (1) / unaligned (0) labels
        text = functools.partial(pipeline.text_field, record, kind="labelled")
        label = record.get("label")
        if isinstance(label, bool) or label not in (0, 1):
            raise ValueError(f"a labelled record's 'label' must be 0 or 1, got {label!r}")
        prompt = text(key="prompt") if "prompt" in record else ""
        add_bos = tokenizer.bos_id is not None
        prompt_ids = tokenizer.encode(pipeline.format_prompt(prompt), add_bos=add_bos)
        response = tokenizer.encode(text(key="text"))
        return reward.labelled_example(prompt_ids, response, int(label), tokenizer.eos_id)

    return Objective("reward", 1, labelled, reward.cross_entropy_loss, pipeline.PROMPT_TEMPLATE,
                     fields=("labels",), head="score")


def _stable_alignment(opts, tokenizer, seed, schema) -> Objective:
    size = opts["group_size"]
    loss_fn = stable_alignment.make_loss_fn(  # checks every option now, before any data is read
        margin=opts["margin"], lam=opts["lam"], rating_scale=opts["rating_scale"], reduce=opts["reduce"],
        group_size=size)

    def example(record, j, index):
        prompt, texts, ratings = pipeline.group_fields(record)
        kept = stable_alignment.select_responses(ratings, size, seed, index)
        prompt_ids = tokenizer.encode(pipeline.format_prompt(prompt), add_bos=tokenizer.bos_id is not None)
        responses, scores = [tokenizer.encode(texts[i]) for i in kept], [ratings[i] for i in kept]
        return stable_alignment.group_example(prompt_ids, responses, scores, tokenizer.eos_id)

    return Objective("stable_alignment", 1, example, loss_fn, pipeline.PROMPT_TEMPLATE,
                     fields=stable_alignment.FIELDS)


_BUILDERS = {
    "sft": _sft, "sft_pos_neg": _sft_pos_neg, "unlikelihood": _unlikelihood, "dpo": _dpo, "coh": _coh,
    "edit_chain": _edit_chain, "reward": _reward, "stable_alignment": _stable_alignment,
}


def prompt_template(objective_cfg: Mapping[str, Any]) -> str:
    """The generation prompt template of a saved run's objective section (a dict or ConfigDict)."""
    name = objective_cfg.get("name", "sft")
    if name == "coh":
        return coh_format({**DEFAULTS["coh"], **dict(objective_cfg)}).prompt_template()
    if name == "edit_chain":  # the prompt is "context\nunaligned draft"
        return "{prompt}" + edit_chain.SPELLING["unaligned"]
    return pipeline.PROMPT_TEMPLATE
