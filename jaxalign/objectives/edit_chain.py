"""Second Thoughts (Liu et al., "Second Thoughts are Best: Learning to Re-Align With Human Values from
Text Edits", NeurIPS 2022, arXiv 2301.00355) as an objective, "edit_chain": a context and an unaligned
draft are followed by the edit chain that revises the draft and then the aligned text, so the model
learns to re-align by editing. Preference records give chosen = aligned, rejected = the unaligned
draft. The chains themselves (computing, serialising, parsing them) are `jaxalign.objectives.edits`.

Training sequence (`make_example`), the paper's ``context <src> unaligned <edits> chain <tgt>
aligned <eos>``::

    BOS  encode(f"{context}\\n{unaligned}<|unaligned|>")  chain ids  <|chain|>  tgt  <|aligned|>  EOS
    0    0 ...                                            1 ...      1          1    1            1

(BOS only if the tokenizer has one; no newline for an empty context). With ``loss_on="aligned"``
the chain and ``<|chain|>`` weigh 0 too: they are then conditioning only. The prompt is tokenized as
one string, exactly as `prompt_text` gives it, so generation prompted with ``BOS +
encode(prompt_text(...))`` continues the trained prefix. `example_from_record` reads records
``{"context", "unaligned", "aligned"}`` (context optional). Chain positions index
``encode(unaligned)``, which is what the prompt holds whenever the tokenizer does not merge tokens
across the newline before it (sentencepiece and byte-level BPE split there).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign.data.examples import text_field
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.objectives import lm
from jaxalign.objectives.edits import (
    AUGMENT_COSTS,
    SPELLING,
    ChainFormat,
    Costs,
    Revision,
    add_markers,
    distinct_chains,
    parse_generation,
    serialize,
)
from jaxalign.objectives.objective import Objective

Example = dict[str, np.ndarray]
LOSS_ON = ("chain+aligned", "aligned")
DEFAULTS: dict[str, Any] = {
    "normalization": "sequence", "loss_on": "chain+aligned", "augment": False, "chain": True,
    "insert_cost": 1.0, "delete_cost": 1.0, "replace_cost": 2.0,
}


# --------------------------------------------------------------------------- training examples


def num_chains(costs: Sequence[Costs] = AUGMENT_COSTS) -> int:
    """How many examples `make_example` can make of one record: its `chain_index` range."""
    return len(costs)


def prompt_text(context: str, unaligned: str) -> str:
    """The generation prompt, exactly the trained prefix (after BOS): context, newline, unaligned
    text, ``<|unaligned|>``; no newline if the context is empty."""
    lead = f"{context}\n" if context else ""
    return f"{lead}{unaligned}{SPELLING['unaligned']}"


def _no_markers(ids: list[int], fmt: ChainFormat, name: str) -> None:
    markers = set(fmt.ids).intersection(ids)
    if markers:
        raise ValueError(f"the {name} text contains the marker {fmt.marker_of(min(markers))}")


def make_example(
    context: str, unaligned: str, aligned: str, tokenizer: Tokenizer, fmt: ChainFormat, *,
    chain_index: int = 0, loss_on: str = "chain+aligned", costs: Sequence[Costs] = AUGMENT_COSTS,
    chain: bool = True,
) -> Example:
    """One training sequence {"tokens", "weights"} (layout in the module docstring).

    `chain_index` in ``range(num_chains(costs))`` picks ``edits.augmented_chains(src, tgt, costs)[i]``,
    or the first chain when the pair has fewer distinct chains. ``chain=False`` leaves the chain and
    its marker out (``context unaligned<|unaligned|> aligned<|aligned|><eos>``): the direct-rewrite
    ablation, which tells what the chain itself adds.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    if not 0 <= chain_index < len(costs):
        raise ValueError(f"chain_index {chain_index} is outside range({len(costs)}) of the cost settings")
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no EOS token, which ends every Second Thoughts sequence")
    for name, text in (("context", context), ("unaligned", unaligned), ("aligned", aligned)):
        if not isinstance(text, str):
            raise ValueError(f"the {name} text must be a string, got {type(text).__name__}")
    prompt = tokenizer.encode(prompt_text(context, unaligned))
    if not prompt or prompt[-1] != fmt.unaligned:
        raise ValueError(f"{SPELLING['unaligned']} is not the token {fmt.unaligned} in {tokenizer!r}: "
                         "make the ChainFormat with add_markers(tokenizer)")
    src, tgt = tokenizer.encode(unaligned), tokenizer.encode(aligned)
    _no_markers(prompt[:-1], fmt, "context or unaligned")
    _no_markers(tgt, fmt, "aligned")
    chain_ids = []
    if chain:
        chains = distinct_chains(src, tgt, costs, chain_index + 1)
        edits = chains[chain_index] if chain_index < len(chains) else chains[0]
        chain_ids = serialize(edits, src, tokenizer, fmt) + [fmt.chain]
    answer = tgt + [fmt.aligned, tokenizer.eos_id]
    prefix = ([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + prompt
    chain_weight = 1.0 if loss_on == "chain+aligned" else 0.0
    tokens = np.asarray(prefix + chain_ids + answer, np.int32)
    weights = np.concatenate([np.zeros(len(prefix), np.float32),
                              np.full(len(chain_ids), chain_weight, np.float32),
                              np.ones(len(answer), np.float32)])
    return {"tokens": tokens, "weights": weights}


def example_from_record(record: Mapping[str, Any], tokenizer: Tokenizer, fmt: ChainFormat, **options: Any
                        ) -> Example:
    """`make_example` of a record {"unaligned", "aligned"[, "context"]} (str or UTF-8 bytes)."""
    context = text_field(record, "context", "Second Thoughts") if "context" in record else ""
    unaligned, aligned = (text_field(record, k, "Second Thoughts") for k in ("unaligned", "aligned"))
    return make_example(context, unaligned, aligned, tokenizer, fmt, **options)


def revise(lm: Any, context: str, unaligned: str, *, max_new_tokens: int = 128, temperature: float = 0.0,
           seed: int = 0) -> Revision:
    """Asks an edit-chain model (`jaxalign.load(workdir)`) to revise `unaligned`; the `Revision` lists
    its edits (`describe`), applies the ones a person accepts (`accept`), and says whether the
    generated chain and text agree. Interactive correction in a notebook::

        rev = edit_chain.revise(lm, "Tell Sam that ...", "Oi Sam, you idiot, ...")
        print(rev.describe(lm.tokenizer))
        lm.tokenizer.decode(rev.accept([0]))     # only the first edit
    """
    from jaxalign import sample  # the sampler pulls in the model; parsing alone does not need it

    tok = lm.tokenizer
    fmt = add_markers(tok)
    if lm.cfg.vocab_size < tok.vocab_size:
        raise ValueError(f"the model's vocabulary ({lm.cfg.vocab_size}) lacks the chain markers "
                         f"({tok.vocab_size} tokens): is this an edit-chain model?")
    prompt = tok.encode(prompt_text(context, unaligned), add_bos=tok.bos_id is not None)
    [generated] = sample.generate(lm.params, lm.cfg, [prompt], mesh=lm.mesh, max_new_tokens=max_new_tokens,
                                  temperature=temperature, seed=seed, eos_id=tok.eos_id)
    return parse_generation(generated, tok.encode(unaligned), tok, fmt)


# --------------------------------------------------------------------------- the objective


def prompt_template(opts: Mapping[str, Any]) -> str:
    """The generation prompt template: the record's prompt is the context, then the draft's marker
    (`prompt_text` shows the draft itself, which a template on the prompt alone cannot)."""
    return "{prompt}" + SPELLING["unaligned"]


def chain_costs(opts: Mapping[str, Any]) -> tuple[Costs, ...]:
    """The cost settings of the chains of a record: the configured one, then with ``augment`` the
    other `AUGMENT_COSTS`."""
    first = Costs(*(float(opts[f"{op}_cost"]) for op in ("insert", "delete", "replace")))
    return (first, *[c for c in AUGMENT_COSTS if c != first]) if opts["augment"] else (first,)


def read_response(record: Mapping[str, Any], generated: Sequence[int], tokenizer: Tokenizer, fmt: ChainFormat,
                  *, chain: bool = True) -> str:
    """The aligned text of a generation for `record`: the target after the chain, or with
    ``chain=False`` (the rewrite ablation) the text up to ``<|aligned|>`` or EOS."""
    if not chain:
        generated = list(generated)
        for stop in (fmt.aligned, tokenizer.eos_id):
            generated = generated[: generated.index(stop)] if stop in generated else generated
        return tokenizer.decode(generated).strip()
    src = tokenizer.encode(text_field(record, "rejected", "preference"))
    return tokenizer.decode(parse_generation(generated, src, tokenizer, fmt).target).strip()


def build(opts: Mapping[str, Any], tokenizer: Tokenizer, seed: int, schema: str) -> Objective:
    """Objective "edit_chain" on preference records (chosen = aligned, rejected = the draft)."""
    fmt = add_markers(tokenizer)  # grows the vocabulary: the trainer saves the tokenizer
    if opts["loss_on"] not in LOSS_ON:
        raise ValueError(f"config.objective.loss_on={opts['loss_on']!r}; choose one of {LOSS_ON}")
    costs, with_chain = chain_costs(opts), bool(opts["chain"])

    def example(record, j, index):
        text = functools.partial(text_field, record, kind="preference")
        return make_example(text(key="prompt"), text(key="rejected"), text(key="chosen"), tokenizer, fmt,
                            chain_index=j, loss_on=opts["loss_on"], costs=costs, chain=with_chain)

    def prompt(record):
        text = functools.partial(text_field, record, kind="preference")
        return prompt_text(text(key="prompt"), text(key="rejected"))

    def response(record, generated):
        return read_response(record, generated, tokenizer, fmt, chain=with_chain)

    return Objective("edit_chain", num_chains(costs) if with_chain else 1, example,
                     lm.make_loss_fn(opts["normalization"]), prompt_template(opts), prompt_fn=prompt,
                     response_fn=response, edit_chains=with_chain)
