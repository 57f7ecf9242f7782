"""TFDS builders for PKU-SafeRLHF (Ji et al. 2023, BeaverTails; arXiv 2307.04657, 2406.15513), three views.

Each upstream row (a prompt, two responses with safety labels, the more helpful and the safer one)
builds three datasets, one per consumer: ``pku_saferlhf`` (preference: the safer response, only
when it is labelled safe), ``pku_saferlhf_better`` (preference: the more helpful one) and
``pku_saferlhf_safety`` (labelled: each response, 1 = safe, for the safety judge).

Details: docs/data.md#pku-saferlhf-three-views-pku_saferlhfpy
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from etils import epath

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders import reading
from jaxalign.data.builders.reading import Record, Skip, SourceFile

SPLITS = ("train", "test")
EXTENSIONS = (".jsonl", ".jsonl.gz", ".jsonl.xz")
DATA_DIR = "data"


# --------------------------------------------------------------------------- parsing one row

def _row(text: str) -> dict[str, Any]:
    return reading.need(reading.load_json(text), dict, "the line")


def _prompt(row: dict[str, Any]) -> str:
    prompt = reading.get(row, "prompt", str).strip()
    if not prompt:
        raise Skip("empty_field", "empty prompt")
    return prompt


def _responses(row: dict[str, Any]) -> tuple[str, str]:
    return reading.get(row, "response_0", str), reading.get(row, "response_1", str)


def response_id(row: dict[str, Any], key: str) -> int:
    """row[key], a response index: 0 or 1."""
    value = reading.get(row, key, int)
    if value not in (0, 1):
        raise Skip("bad_choice", f"{key!r} is {value}, not 0 or 1")
    return value


def is_safe(row: dict[str, Any], index: int) -> bool:
    """The safety label of response `index`, which must be a JSON boolean."""
    key = f"is_response_{index}_safe"
    value = row.get(key)
    if value is None:
        raise Skip("missing_field", f"no {key!r}")
    if not isinstance(value, bool):
        raise Skip("wrong_type", f"{key!r} is {reading.type_name(value)}, not a boolean")
    return value


def parse_safer(text: str) -> Record:
    """One row -> {"prompt", "chosen": the safer response, "rejected"}; Skip unless the safer one is safe."""
    row = _row(text)
    prompt, responses = _prompt(row), _responses(row)
    safer = response_id(row, "safer_response_id")
    safe = (is_safe(row, 0), is_safe(row, 1))
    if not safe[safer]:
        if safe[1 - safer]:
            raise Skip("label_conflict", f"safer_response_id {safer} names the response labelled unsafe; "
                                         f"response {1 - safer} is labelled safe")
        raise Skip("no_safe_response", "neither response is labelled safe")
    return reading.make_pair(prompt, responses[safer], responses[1 - safer])


def parse_better(text: str) -> Record:
    """One row -> {"prompt", "chosen": the more helpful response, "rejected"}; raises Skip."""
    row = _row(text)
    prompt, responses = _prompt(row), _responses(row)
    better = response_id(row, "better_response_id")
    return reading.make_pair(prompt, responses[better], responses[1 - better])


def labelled_responses(text: str) -> list[tuple[str, str, int]]:
    """One row -> [(prompt, response_0, label_0), (prompt, response_1, label_1)]; Skip for the row."""
    row = _row(text)
    prompt, responses = _prompt(row), _responses(row)
    labels = (int(is_safe(row, 0)), int(is_safe(row, 1)))
    if responses[0].strip() == responses[1].strip() and labels[0] != labels[1]:
        raise Skip("label_conflict", "the same response is labelled safe and unsafe")
    return [(prompt, response, label) for response, label in zip(responses, labels, strict=True)]


def parse_labelled(item: tuple[str, str, int]) -> Record:
    """One response of a row (`read_responses`) -> {"prompt", "text", "label" (1 = safe)}; raises Skip."""
    prompt, response, label = item
    return reading.make_labelled(prompt, response, label)


def read_responses(path: epath.Path) -> Iterator[tuple[int | str, Any]]:
    """The safety view's reader: per row, ("<line>#0", response 0) and ("<line>#1", response 1), or
    (line, Skip) once for a row that gives neither."""
    for number, text in reading.read_lines(path):
        try:
            if isinstance(text, Skip):
                raise text
            items = labelled_responses(text)
        except Skip as skip:
            yield number, skip
            continue
        for index, item in enumerate(items):
            yield f"{number}#{index}", item


# --------------------------------------------------------------------------- finding the files

def _split_file_names(split: str) -> tuple[str, ...]:
    return tuple(split + ext for ext in EXTENSIONS)


def _has_split_files(directory: epath.Path) -> bool:
    return any((directory / name).is_file() for split in SPLITS for name in _split_file_names(split))


def _subsets(source_dir: epath.Path) -> list[epath.Path]:
    if _has_split_files(source_dir):
        return [source_dir]
    base = source_dir / DATA_DIR if (source_dir / DATA_DIR).is_dir() else source_dir
    if _has_split_files(base):
        return [base]
    return sorted(d for d in base.iterdir() if d.is_dir() and _has_split_files(d))


def source_files(source_dir: epath.Path) -> list[SourceFile]:
    """The train and test file of each subset (see docs/data.md); FileNotFoundError if none."""
    reading.require_dir(source_dir, "a PKU-SafeRLHF download")
    subsets = _subsets(source_dir)
    if not subsets:
        raise FileNotFoundError(
            f"{source_dir}: no train.jsonl or test.jsonl (.gz, .xz) here, in data/ or in a subdirectory "
            "(expected a PKU-SafeRLHF clone with data/Alpaca-7B/train.jsonl, a data/<model> directory, "
            "or the v0 release's train.jsonl.xz)"
        )
    files = []
    for subset in subsets:
        for split in SPLITS:
            names = _split_file_names(split)
            path = reading.one_of(subset, names, "each PKU-SafeRLHF subset has train and test")
            files.append(SourceFile(path, path.relative_to(source_dir).as_posix(), split))
    return files


# --------------------------------------------------------------------------- the builders

class _PkuSafeRlhf(common.FeedbackBuilder, skip_registration=True):
    """What the three views share: the files, the splits, where to download them."""

    SPLITS = SPLITS
    HOMEPAGE = "https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download PKU-SafeRLHF (the clone needs git-lfs) and pass the clone as the source:
        git lfs install
        git clone https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF
    Every data/<model>/ directory (Alpaca-7B, Alpaca2-7B, Alpaca3-8B) is read; pass one of them
    (e.g. PKU-SafeRLHF/data/Alpaca-7B) to read only that model's responses. The first release
    (branch v0 of the same repository, train.jsonl.xz and test.jsonl.xz) works too, as does any
    directory holding train.jsonl and test.jsonl (or .jsonl.gz, .jsonl.xz) in this format.
    """

    source_files = staticmethod(source_files)


class PkuSafeRlhf(_PkuSafeRlhf):
    """PKU-SafeRLHF, chosen = the safer response, kept only when it is labelled safe."""

    name = "pku_saferlhf"
    TASK = "pku_saferlhf"
    DESCRIPTION = ("PKU-SafeRLHF (Ji et al. 2023): the safer response chosen over the other, for rows whose "
                   "safer response is labelled safe.")
    RELEASE_NOTES = {"1.0.0": "prompt, chosen (safer and safe), rejected, id, task."}

    parse_line = staticmethod(parse_safer)


class PkuSafeRlhfBetter(_PkuSafeRlhf):
    """PKU-SafeRLHF, chosen = the more helpful response (better_response_id), every row."""

    name = "pku_saferlhf_better"
    TASK = "pku_saferlhf_better"
    DESCRIPTION = "PKU-SafeRLHF (Ji et al. 2023): the more helpful response chosen over the other."
    RELEASE_NOTES = {"1.0.0": "prompt, chosen (more helpful), rejected, id, task."}

    parse_line = staticmethod(parse_better)


class PkuSafeRlhfSafety(_PkuSafeRlhf):
    """PKU-SafeRLHF responses labelled 1 = safe, 0 = unsafe, two per row: a safety judge's data."""

    name = "pku_saferlhf_safety"
    TASK = "pku_saferlhf_safety"
    SCHEMA = "labelled"
    RECORD_FEATURES = common.LABELLED_FEATURES
    DESCRIPTION = ("PKU-SafeRLHF (Ji et al. 2023): each response with its prompt, labelled 1 if annotated "
                   "safe, 0 if unsafe.")
    RELEASE_NOTES = {"1.0.0": "prompt, text (a response), label (1 = safe), id (<file>:<line>#<0|1>), task."}

    parse_line = staticmethod(parse_labelled)
    read_items = staticmethod(read_responses)
