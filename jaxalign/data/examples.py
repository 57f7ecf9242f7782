"""Records -> training examples: the one prompt template, prompt + response + EOS examples weighted
on the response, the checked text fields of a record, and the best response of a group. Every
objective builds its examples from these (and batching in `jaxalign.data.pipeline` packs them), so
training and generation see the same prompt text. An example is ``{"tokens", "weights"}`` int32 /
float32, ``weights[i]`` the loss weight of predicting ``tokens[i]`` (`jaxalign.data.packing`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxalign.data import dialogue
from jaxalign.data.tokenizer import Tokenizer

Example = dict[str, np.ndarray]
KINDS = ("text", "preference", "group")


def _ids(ids: Any, name: str) -> np.ndarray:
    array = np.asarray(ids)
    if array.size == 0:
        return np.zeros(0, np.int32)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D sequence of integer token ids, "
                         f"got shape {array.shape} dtype {array.dtype}")
    return array.astype(np.int32)


def sft_example(prompt_ids: Sequence[int] | np.ndarray, response_ids: Sequence[int] | np.ndarray,
                eos_id: int) -> Example:
    """prompt + response + EOS, trained on the response and the EOS only.

    ``weights[i]`` is the weight of predicting ``tokens[i]`` (packing.py's convention): 0 on the
    prompt, 1 on each response token and on the final EOS, so the model learns where to stop.
    """
    if eos_id is None or isinstance(eos_id, bool) or not isinstance(eos_id, (int, np.integer)):
        raise ValueError(f"eos_id must be an integer token id, got {eos_id!r}")
    prompt = _ids(prompt_ids, "prompt_ids")
    response = _ids(response_ids, "response_ids")
    tokens = np.concatenate([prompt, response, np.array([eos_id], np.int32)])
    weights = np.concatenate([np.zeros(prompt.size, np.float32), np.ones(response.size + 1, np.float32)])
    return {"tokens": tokens, "weights": weights}


def _as_text(value: Any, name: str) -> str:
    if isinstance(value, (bytes, np.bytes_)):  # tfds Text features read back as bytes
        return bytes(value).decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"field {name} must be a string, got {type(value).__name__}")
    return value


def text_field(record: Mapping[str, Any], key: str, kind: str) -> str:
    """record[key] as str (tfds sources give UTF-8 bytes); a missing or non-text field is an error."""
    if key not in record:
        raise ValueError(f"a {kind} record needs a {key!r} field, got keys {sorted(record)}")
    return _as_text(record[key], repr(key))


def _values(record: Mapping[str, Any], key: str) -> list[Any]:
    """record[key] as a list: a JSON array, or the numpy array a tfds Sequence feature reads back as."""
    if key not in record:
        raise ValueError(f"a group record needs a {key!r} field, got keys {sorted(record)}")
    value = record[key]
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ValueError(f"field {key!r} must be a list, got {type(value).__name__}")
    if not value:
        raise ValueError(f"field {key!r} must hold at least one value")
    return list(value)


def _rating(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"field {name} must be a number, got {type(value).__name__}")
    try:
        rating = float(value)
    except OverflowError:
        rating = float("inf")
    if not np.isfinite(rating):
        raise ValueError(f"field {name} must be finite, got {value!r}")
    return rating


def group_fields(record: Mapping[str, Any]) -> tuple[str, list[str], list[float]]:
    """(prompt, responses, ratings) of a ``group`` record, checked as `jsonl` checks them.

    Checked again here because group records also come from tfds sources and from code (the
    SANDBOX simulation) rather than only from a checked jsonl file; text may be UTF-8 bytes and the
    lists numpy arrays, as tfds data sources return them.
    """
    prompt = text_field(record, "prompt", "group")
    responses = [_as_text(r, f"'responses'[{i}]") for i, r in enumerate(_values(record, "responses"))]
    empty = next((i for i, r in enumerate(responses) if not r.strip()), None)
    if empty is not None:
        raise ValueError(f"field 'responses'[{empty}] must not be empty")
    ratings = [_rating(r, f"'ratings'[{i}]") for i, r in enumerate(_values(record, "ratings"))]
    if len(ratings) != len(responses):
        raise ValueError(f"field 'ratings' has {len(ratings)} values but 'responses' has {len(responses)}; "
                         "there is one rating per response")
    return prompt, responses, ratings


def best_response(ratings: Sequence[float]) -> int:
    """The index of the highest rating; of several equal highest, the first (the reference code's
    sort is not stable, so its choice among ties is arbitrary; ours is the record's order)."""
    if not len(ratings):
        raise ValueError("best_response: no ratings")
    return int(np.argmax(np.asarray(ratings, np.float64)))  # argmax returns the first maximum


PROMPT_TEMPLATE = "{prompt}\n"


def format_prompt(prompt: str, template: str = PROMPT_TEMPLATE) -> str:
    """The one prompt template, used for training and for generation alike (the Stable
    Alignment reference code trains and samples with different templates; we must not). A run
    through the model's own chat template passes its template (`prompt_template`)."""
    return dialogue.render(template, prompt)


def prompt_template(tokenizer: Tokenizer) -> str:
    """The prompt template a run's examples use: `PROMPT_TEMPLATE`, or the model's own chat template
    when config.data.prompt_template is "chat_template" (`Tokenizer.prompt_template`)."""
    return tokenizer.prompt_template or PROMPT_TEMPLATE


def prompted_example(tokenizer: Tokenizer, prompt: str, response: str) -> Example:
    """`sft_example` on BOS (if the tokenizer has one) + format_prompt(prompt) and `response`
    (the prompt rendered with `prompt_template(tokenizer)`).

    Prompt and response are tokenized separately and joined as ids, so a separator (a space,
    "Answer:") is part of the text, and the prompt ids are exactly what generation is prompted with.
    """
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no eos token, which ends every response")
    prompt_ids = tokenizer.encode(format_prompt(prompt, prompt_template(tokenizer)),
                                  add_bos=tokenizer.bos_id is not None)
    return sft_example(prompt_ids, tokenizer.encode(response), tokenizer.eos_id)


def record_to_example(record: Mapping[str, Any], tokenizer: Tokenizer, kind: str) -> Example:
    """One record of a jsonl.SCHEMAS schema -> an example {"tokens", "weights"}.

    ``text``: BOS (if the tokenizer has one) + text + EOS, every token weighted 1.
    ``preference``: `prompted_example` on the prompt and the *chosen* response (supervised
    fine-tuning on the good answer; the rejected one is for the preference objectives).
    ``group``: `prompted_example` on the prompt and the highest-rated response (`best_response`:
    the first of equal highest), SFT on the best of the group (Stable Alignment's "SFT on the best
    responses" baseline; the other responses are for `jaxalign.objectives.stable_alignment`).
    String values may also be bytes (UTF-8), as tfds data sources return them.
    """
    if kind == "text":
        add_bos = tokenizer.bos_id is not None
        tokens = tokenizer.encode(text_field(record, "text", kind), add_bos=add_bos, add_eos=True)
        return {"tokens": np.asarray(tokens, np.int32), "weights": np.ones(len(tokens), np.float32)}
    if kind == "preference":
        prompt, chosen = text_field(record, "prompt", kind), text_field(record, "chosen", kind)
        return prompted_example(tokenizer, prompt, chosen)
    if kind == "group":
        prompt, responses, ratings = group_fields(record)
        return prompted_example(tokenizer, prompt, responses[best_response(ratings)])
    raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")


def tokenized_records(records: Iterable[Mapping[str, Any]], tokenizer: Tokenizer, kind: str) -> list[Example]:
    """Records (e.g. from jsonl.read_records) -> a list of examples, a source for `pipeline.make_batches`.

    Tokenizes everything up front: meant for small user data. For large data, pass the records
    (e.g. a tfds data source) to `pipeline.make_batches` with ``transform=functools.partial(
    record_to_example, tokenizer=tok, kind=kind)`` so that tokenizing happens as batches are made.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")
    examples = []
    for index, record in enumerate(records):
        try:
            examples.append(record_to_example(record, tokenizer, kind))
        except ValueError as e:
            raise ValueError(f"record {index}: {e}") from e
    return examples


def text_example(tokenizer: Tokenizer, prompt: str, response: str) -> Example:
    """`prompted_example` of a prompt and a response given as strings (checked: a reward model scores
    texts a caller passes in)."""
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError(f"prompt and response must be str, got {type(prompt).__name__} and "
                         f"{type(response).__name__}")
    return prompted_example(tokenizer, prompt, response)


def encode_pair(record: Mapping[str, Any], tokenizer: Tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(BOS + formatted prompt, chosen, rejected) ids of a preference record, the prompt as
    `format_prompt` has it: the pieces of every pairwise objective's examples."""
    add_bos = tokenizer.bos_id is not None
    text = format_prompt(text_field(record, "prompt", "preference"), prompt_template(tokenizer))
    prompt = tokenizer.encode(text, add_bos=add_bos)
    chosen, rejected = (text_field(record, key, "preference") for key in ("chosen", "rejected"))
    return prompt, tokenizer.encode(chosen), tokenizer.encode(rejected)
