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

from jaxalign.data.examples import text_field
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.objectives import lm
from jaxalign.objectives.objective import Objective

VARIANTS = ("p", "n", "pn", "np", "compare")
NOUNS = {"summary": ("summary", "summaries"), "dialogue": ("response", "responses"),
         "webgpt": ("answer", "answers")}
DEFAULT_NOUN = ("answer", "answers")
ANSWERS = ("the first one", "the second one")
DEFAULTS: dict[str, Any] = {
    "normalization": "sequence", "user_marker": "User:", "positive_marker": "A helpful answer:",
    "negative_marker": "An unhelpful answer:", "variants": "p,n,pn,np", "aux_phrases": False,
    "fcm_min": 0.0, "fcm_max": 0.05,
}

Example = dict[str, np.ndarray]
Piece = tuple[str | int, float]  # text (or a token id) and its loss weight


@dataclasses.dataclass(frozen=True)
class CoHFormat:
    """How records become CoH sequences; `prompt_template` is the inference prefix."""

    user_marker: str = "User:"
    positive_marker: str = "A helpful answer:"
    negative_marker: str = "An unhelpful answer:"
    variants: tuple[str, ...] = ("p", "n", "pn", "np")
    aux_phrases: bool = False

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"CoH variants {list(self.variants)}: choose distinct ones of {list(VARIANTS)}")
        if not self.positive_marker.strip() or not self.negative_marker.strip():
            raise ValueError("CoH markers must not be empty")
        if self.positive_marker.strip() == self.negative_marker.strip():
            raise ValueError(f"the positive and negative markers are both {self.positive_marker!r}")

    def context(self, prompt: str) -> str:
        return f"{self.user_marker} {prompt}\n" if self.user_marker else f"{prompt}\n"

    def lead(self, positive: bool, task: str | None = None) -> str:
        """The unweighted text before an output: [auxiliary phrase] marker and a space."""
        marker = self.positive_marker if positive else self.negative_marker
        if not self.aux_phrases:
            return f"{marker} "
        noun = NOUNS.get(task or "", DEFAULT_NOUN)[0]
        return f"The following is a {'better' if positive else 'worse'} {noun}. {marker} "

    def prompt_template(self, task: str | None = None, positive: bool = True) -> str:
        """``str.format`` template with ``{prompt}``: what generation is prompted with (the positive
        marker; ``positive=False`` gives the negative one, for scoring)."""
        escape = lambda text: text.replace("{", "{{").replace("}", "}}")  # noqa: E731
        context = escape(self.context("\0")).replace("\0", "{prompt}")
        return context + escape(self.lead(positive, task))

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


def assemble(pieces: Sequence[Piece], tokenizer: Tokenizer) -> Example:
    """(text or id, weight) pieces -> {"tokens", "weights"}: BOS, then unweighted text merged and
    tokenized as one string, weighted text on its own (docs/methods.md)."""
    merged: list[Piece] = []
    for value, weight in pieces:
        mergeable = merged and weight == 0 and merged[-1][1] == 0
        if mergeable and isinstance(value, str) and isinstance(merged[-1][0], str):
            merged[-1] = (merged[-1][0] + value, 0.0)
        else:
            merged.append((value, weight))
    tokens: list[int] = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    weights: list[float] = [0.0] * len(tokens)
    for value, weight in merged:
        ids = [value] if isinstance(value, int) else tokenizer.encode(value)
        tokens += ids
        weights += [weight] * len(ids)
    return {"tokens": np.asarray(tokens, np.int32), "weights": np.asarray(weights, np.float32)}


def first_is_chosen(seed: int, record_index: int) -> bool:
    """The comparison question's order: a fair coin from (seed, record index), so it is fixed."""
    return bool(np.random.default_rng([seed, record_index, 0xC0]).integers(2))


def make_example(
    record: Mapping[str, Any], variant: str, tokenizer: Tokenizer, fmt: CoHFormat, *, seed: int = 0,
    record_index: int = 0,
) -> Example:
    """One record and variant -> an example {"tokens", "weights"}; deterministic for a seed."""
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no EOS token, which ends every CoH output")
    first = first_is_chosen(seed, record_index)
    return assemble(fmt.pieces(record, variant, first, tokenizer.eos_id), tokenizer)


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


def make_format(opts: Mapping[str, Any]) -> CoHFormat:
    """The `CoHFormat` of an objective section's options (variants as a list or "p,n,pn,np")."""
    variants = opts["variants"]
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.split(",") if v.strip()]
    return CoHFormat(opts["user_marker"], opts["positive_marker"], opts["negative_marker"],
                     tuple(variants), bool(opts["aux_phrases"]))


def prompt_template(opts: Mapping[str, Any]) -> str:
    """The generation prompt template of a CoH objective section (defaults fill missing options)."""
    return make_format({**DEFAULTS, **dict(opts)}).prompt_template()


def build(opts: Mapping[str, Any], tokenizer: Tokenizer, seed: int, schema: str) -> Objective:
    """Objective "coh": one example per variant of every preference record, FCM while training."""
    fmt = make_format(opts)

    def example(record, j, index):
        return make_example(record, fmt.variants[j], tokenizer, fmt, seed=seed, record_index=index)

    return Objective(
        "coh", len(fmt.variants), example, lm.make_loss_fn(opts["normalization"]), fmt.prompt_template(),
        batch_transform=fcm_transform(float(opts["fcm_min"]), float(opts["fcm_max"])),
        feedback_format=fmt,
    )
