"""Chain of Hindsight (Liu, Sferrazza and Abbeel, "Chain of Hindsight aligns language models with
feedback", ICLR 2024): feedback as sentences, chains of outputs, random past-token masking.

A comparison record becomes one sequence per variant (``p``, ``n``, ``pn``, ``np``, ``compare``):
outputs joined by feedback markers, weighted 1 only on the outputs and their EOS, and tokenized so
that the generation prompt is exactly the prefix the ``p`` and ``pn`` sequences trained on.
`fcm_mask` drops random attention to past tokens, in the train step only.

Details: docs/methods.md#the-chain-of-hindsight-objective-jaxalignobjectivescoh
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.data import dialogue
from jaxalign.data.examples import text_field
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.objectives import coh_official, lm
from jaxalign.objectives.objective import Objective

VARIANTS = ("p", "n", "pn", "np", "compare")
FORMATS = ("jaxalign", "official")  # our rendering, or the reference code's (coh_official)
NOUNS = {"summary": ("summary", "summaries"), "dialogue": ("response", "responses"),
         "webgpt": ("answer", "answers")}
DEFAULT_NOUN = ("answer", "answers")
ANSWERS = ("the first one", "the second one")
# normalization and fcm_pretrain None: the format's own (`FORMAT_DEFAULTS`).
DEFAULTS: dict[str, Any] = {
    "format": "jaxalign", "normalization": None, "user_marker": "User:",
    "positive_marker": "A helpful answer:", "negative_marker": "An unhelpful answer:",
    "variants": "p,n,pn,np", "aux_phrases": False, "fcm_min": 0.0, "fcm_max": 0.05, "fcm_pretrain": None,
}
# The reference averages each packed row's weighted NLL and applies FCM to every forward pass,
# pretraining batches included (tests/data/coh_reference/REFERENCE.md, sections 6 and 7).
FORMAT_DEFAULTS = {"jaxalign": {"normalization": "sequence", "fcm_pretrain": False},
                   "official": {"normalization": "row", "fcm_pretrain": True}}

Example = dict[str, np.ndarray]
Piece = tuple[str | int, float]  # text (or a token id) and its loss weight


@dataclasses.dataclass(frozen=True)
class CoHFormat:
    """How records become CoH sequences; `prompt_template` is the inference prefix.

    ``style="official"`` renders as the reference code does (`coh_official`); "jaxalign" renders a
    prompt (a dialogue turn by turn, `dialogue.render`) once as unweighted context, then the
    outputs under their markers.
    """

    user_marker: str = "User:"
    positive_marker: str = "A helpful answer:"
    negative_marker: str = "An unhelpful answer:"
    variants: tuple[str, ...] = ("p", "n", "pn", "np")
    aux_phrases: bool = False
    style: str = "jaxalign"

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"CoH variants {list(self.variants)}: choose distinct ones of {list(VARIANTS)}")
        if not self.positive_marker.strip() or not self.negative_marker.strip():
            raise ValueError("CoH markers must not be empty")
        if self.positive_marker.strip() == self.negative_marker.strip():
            raise ValueError(f"the positive and negative markers are both {self.positive_marker!r}")
        if self.style not in FORMATS:
            raise ValueError(f"objective.format={self.style!r}; choose one of {list(FORMATS)}")
        if self.style == "official" and "compare" in self.variants:
            raise ValueError("the reference code has no 'compare' variant; objective.format='official' "
                             "takes p, n, pn and np")

    def context(self, prompt: str) -> str:
        """The unweighted text before the first output (the dialogue so far, turn by turn)."""
        template = f"{self.user_marker} {{prompt}}\n" if self.user_marker else "{prompt}\n"
        lead = "\0"  # any lead that starts no new line; cut off again below
        return dialogue.render(template + lead, prompt)[: -len(lead)]

    def lead(self, positive: bool, task: str | None = None) -> str:
        """The unweighted text before an output: [auxiliary phrase] marker and a space."""
        marker = self.positive_marker if positive else self.negative_marker
        if not self.aux_phrases:
            return f"{marker} "
        noun = NOUNS.get(task or "", DEFAULT_NOUN)[0]
        return f"The following is a {'better' if positive else 'worse'} {noun}. {marker} "

    def prompt_template(self, task: str | None = None, positive: bool = True) -> str:
        """``str.format`` template with ``{prompt}``: what generation is prompted with (the positive
        marker; ``positive=False`` gives the negative one, for scoring). Render prompts with
        `dialogue.render`, which reads a dialogue's turns."""
        escape = lambda text: text.replace("{", "{{").replace("}", "}}")  # noqa: E731
        marker = self.positive_marker if positive else self.negative_marker
        if self.style == "official":  # one encode of the joined prompt fields (coh_official)
            user = f"{escape(self.user_marker)} " if self.user_marker else ""
            return f"{user}{{prompt}} {escape(marker)}"
        user = f"{escape(self.user_marker)} " if self.user_marker else ""
        return f"{user}{{prompt}}\n" + escape(self.lead(positive, task))

    def examples(self, record: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """(variant, positive marker, negative marker) of each example of `record`."""
        if self.style == "official":
            return coh_official.examples_of(coh_official.task_of(record), self.variants, self.aux_phrases,
                                            self.positive_marker, self.negative_marker)
        return [(v, self.positive_marker, self.negative_marker) for v in self.variants]

    def pieces(self, record: Mapping[str, Any], variant: str, first_is_chosen: bool, eos: int) -> list[Piece]:
        prompt, chosen, rejected = (text_field(record, k, "CoH") for k in ("prompt", "chosen", "rejected"))
        task = text_field(record, "task", "CoH") if "task" in record else None
        context = self.context(prompt)
        output = {True: [(self.lead(True, task), 0.0), (chosen, 1.0), (eos, 1.0)],
                  False: [(self.lead(False, task), 0.0), (rejected, 1.0), (eos, 1.0)]}
        if variant == "compare":
            nouns = NOUNS.get(task or "", DEFAULT_NOUN)[1]
            a, b = (chosen, rejected) if first_is_chosen else (rejected, chosen)
            question = f"For the following two {nouns}:\n{a}\nand\n{b}\nwhich one is better? The answer is "
            return [(context + question, 0.0), (ANSWERS[0 if first_is_chosen else 1], 1.0), (eos, 1.0)]
        order = {"p": [True], "n": [False], "pn": [True, False], "np": [False, True]}[variant]
        return [(context, 0.0)] + [piece for positive in order for piece in output[positive]]


def assemble(pieces: Sequence[Piece], tokenizer: Tokenizer, official: bool = False) -> Example:
    """(text or id, weight) pieces -> {"tokens", "weights"}: BOS, then unweighted text merged and
    tokenized as one string, weighted text on its own (docs/methods.md). ``official``: every piece
    its own encode and no BOS, as the reference's TextProcessor does."""
    merged: list[Piece] = []
    for value, weight in pieces:
        mergeable = not official and merged and weight == 0 and merged[-1][1] == 0
        if mergeable and isinstance(value, str) and isinstance(merged[-1][0], str):
            merged[-1] = (merged[-1][0] + value, 0.0)
        else:
            merged.append((value, weight))
    tokens: list[int] = [] if official or tokenizer.bos_id is None else [tokenizer.bos_id]
    weights: list[float] = [0.0] * len(tokens)
    for value, weight in merged:
        ids = [value] if isinstance(value, int) else tokenizer.encode(value)
        tokens += ids
        weights += [weight] * len(ids)
    return {"tokens": np.asarray(tokens, np.int32), "weights": np.asarray(weights, np.float32)}


def first_is_chosen(seed: int, record_index: int) -> bool:
    """The comparison question's order: a fair coin from (seed, record index), so it is fixed."""
    return bool(np.random.default_rng([seed, record_index, 0xC0]).integers(2))


def chooser(seed: int, record_index: int, j: int) -> coh_official.Choose:
    """The official format's task-sentence draws for example j of a record: fixed for a seed."""
    rng = np.random.default_rng([seed, record_index, j, 0xC1])
    return lambda pool: pool[int(rng.integers(len(pool)))]


def make_example(
    record: Mapping[str, Any], variant: str | int, tokenizer: Tokenizer, fmt: CoHFormat, *, seed: int = 0,
    record_index: int = 0,
) -> Example:
    """One record and variant (or, any format, the index of one of `fmt.examples(record)`) -> an
    example {"tokens", "weights"}; deterministic for a seed."""
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no EOS token, which ends every CoH output")
    j = variant if isinstance(variant, int) else [v for v, _, _ in fmt.examples(record)].index(variant)
    if fmt.style == "official":
        name, good, bad = fmt.examples(record)[j]
        pieces = coh_official.pieces(record, name, good, bad, fmt.user_marker, tokenizer.eos_id,
                                     chooser(seed, record_index, j))
        return assemble(pieces, tokenizer, official=True)
    first = first_is_chosen(seed, record_index)
    return assemble(fmt.pieces(record, fmt.variants[j], first, tokenizer.eos_id), tokenizer)


# --------------------------------------------------------------------------- FCM


def fcm_mask(key: jax.Array, segment_ids: jax.Array, positions: jax.Array, fcm_min: float,
             fcm_max: float) -> jax.Array:
    """Boolean keep-mask [b, L, L] of random past-token masking (docs/methods.md).

    Rates are drawn per (row, segment); the coin per entry is 16 random bits, which resolves rates
    to 1/65536 at a quarter of the memory of float32 uniforms ([b, L, L] is the big array here).
    """
    b, length = segment_ids.shape
    rate_key, coin_key = jax.random.split(key)
    rates = jax.random.uniform(rate_key, (b, length + 1), minval=fcm_min, maxval=fcm_max)
    rate = jnp.take_along_axis(rates, segment_ids, axis=1)  # [b, L]: the query's example
    threshold = jnp.round(rate * 65536.0).astype(jnp.uint32)
    coins = jax.random.bits(coin_key, (b, length, length), jnp.uint16).astype(jnp.uint32)
    drop = coins < threshold[:, :, None]
    index = jnp.arange(length)
    strictly_past = index[None, :] < index[:, None]
    droppable = strictly_past[None] & (positions != 0)[:, None, :]
    return ~(drop & droppable)


def fcm_transform(fcm_min: float, fcm_max: float):
    """A train-step ``batch_transform(batch, key)`` adding the FCM ``extra_mask`` (None if max is 0)."""
    if not 0.0 <= fcm_min <= fcm_max <= 1.0:
        raise ValueError(f"FCM rates need 0 <= fcm_min <= fcm_max <= 1, got {fcm_min} and {fcm_max}")
    if fcm_max == 0.0:
        return None

    def transform(batch: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
        mask = fcm_mask(key, batch["segment_ids"], batch["positions"], fcm_min, fcm_max)
        return {**batch, "extra_mask": mask}

    return transform


# --------------------------------------------------------------------------- the objective


def resolve(opts: Mapping[str, Any]) -> dict[str, Any]:
    """An objective section's options with the format's own defaults where they are None."""
    style = opts.get("format", "jaxalign")
    if style not in FORMATS:
        raise ValueError(f"objective.format={style!r}; choose one of {list(FORMATS)}")
    return {**opts, **{k: v for k, v in FORMAT_DEFAULTS[style].items() if opts.get(k) is None}}


def make_format(opts: Mapping[str, Any]) -> CoHFormat:
    """The `CoHFormat` of an objective section's options (variants as a list or "p,n,pn,np")."""
    variants = opts["variants"]
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    return CoHFormat(opts["user_marker"], opts["positive_marker"], opts["negative_marker"],
                     tuple(variants), bool(opts["aux_phrases"]), opts.get("format", "jaxalign"))


def prompt_template(opts: Mapping[str, Any]) -> str:
    """The generation prompt template of a CoH objective section (defaults fill missing options)."""
    return make_format({**DEFAULTS, **dict(opts)}).prompt_template()


def build(opts: Mapping[str, Any], tokenizer: Tokenizer, seed: int, schema: str) -> Objective:
    """Objective "coh": one example per variant (and, official with aux phrases, per phrase pair) of
    every preference record; FCM while training, on the pretraining stream too if fcm_pretrain."""
    opts = resolve(opts)
    fmt = make_format(opts)

    def example(record, j, index):
        return make_example(record, j, tokenizer, fmt, seed=seed, record_index=index)

    fanout = len(fmt.variants) if fmt.style == "jaxalign" else lambda record: len(fmt.examples(record))
    fcm = fcm_transform(float(opts["fcm_min"]), float(opts["fcm_max"]))
    return Objective(
        "coh", fanout, example, lm.make_loss_fn(opts["normalization"]), fmt.prompt_template(),
        batch_transform=fcm, feedback_format=fmt,
        pretrain_transform=fcm if bool(opts["fcm_pretrain"]) else None,
    )
