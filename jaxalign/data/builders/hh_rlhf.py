"""TFDS builder for Anthropic HH-RLHF (Bai et al. 2022, arXiv 2204.05862), read from the upstream files.

Layout: the source directory holds one subdirectory per subset (harmless-base, helpful-base,
helpful-online, helpful-rejection-sampled), each with ``train.jsonl.gz`` and ``test.jsonl.gz``
(or the same files uncompressed, ``train.jsonl``); a directory that holds the two files itself
is read as the only subset. Subdirectories without them (red-team-attempts, another format) are
ignored. Splits ``train`` and ``test`` are the concatenation over subsets, in name order.

Each line is ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``: the same
dialogue with two different final assistant turns. Parsing (`parse_line`):

- each text is cut after its last ``"\\n\\nAssistant:"``: before the cut is the prompt (kept
  verbatim, from the leading ``"\\n\\nHuman:"`` to the final ``"Assistant:"``), after it the
  response (stripped);
- ``unparsable_dialogue``: a text without an Assistant turn, or whose last Assistant turn is
  followed by a Human turn (so there is no final response);
- ``prompt_mismatch``: chosen and rejected do not share the prompt;
- ``tie``: the two responses are the same; ``empty_field``: a response is empty.

Records: task ``"dialogue"``, id ``"<subset>/<file>:<line>"``.
"""

from __future__ import annotations

from typing import Any

from etils import epath

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders import reading
from jaxalign.data.builders.reading import Skip, SourceFile

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
SPLITS = ("train", "test")


def split_dialogue(text: str) -> tuple[str, str]:
    """A dialogue -> (prompt up to and including its last "\\n\\nAssistant:", final response)."""
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise Skip("unparsable_dialogue", "no '\\n\\nAssistant:' turn")
    cut += len(ASSISTANT)
    prompt, response = text[:cut], text[cut:]
    if HUMAN in response:
        raise Skip("unparsable_dialogue", "the last Assistant turn is followed by a Human turn")
    return prompt, response


def parse_line(text: str) -> dict[str, str]:
    """One line of an HH-RLHF file -> {"prompt", "chosen", "rejected"}; raises Skip."""
    obj: Any = reading.need(reading.load_json(text), dict, "the line")
    prompt, chosen = split_dialogue(reading.get(obj, "chosen", str))
    rejected_prompt, rejected = split_dialogue(reading.get(obj, "rejected", str))
    if rejected_prompt != prompt:
        raise Skip("prompt_mismatch", "chosen and rejected differ before their last Assistant turn")
    return reading.make_pair(prompt, chosen, rejected)


def _has_split_files(directory: epath.Path) -> bool:
    return any((directory / f"{split}.jsonl{ext}").is_file() for split in SPLITS for ext in (".gz", ""))


def source_files(source_dir: epath.Path) -> list[SourceFile]:
    """The train and test file of each subset; FileNotFoundError if a subset lacks one."""
    reading.require_dir(source_dir, "the Anthropic/hh-rlhf download")
    if _has_split_files(source_dir):
        subsets = [source_dir]
    else:
        subsets = sorted(d for d in source_dir.iterdir() if d.is_dir() and _has_split_files(d))
    if not subsets:
        raise FileNotFoundError(
            f"{source_dir}: no train.jsonl.gz or test.jsonl.gz here or in a subdirectory "
            "(expected the Anthropic/hh-rlhf layout, e.g. helpful-base/train.jsonl.gz)"
        )
    files = []
    for subset in subsets:
        for split in SPLITS:
            names = (f"{split}.jsonl.gz", f"{split}.jsonl")
            path = reading.one_of(subset, names, "each HH-RLHF subset has both splits")
            files.append(SourceFile(path, path.relative_to(source_dir).as_posix(), split))
    return files


class HhRlhf(common.FeedbackBuilder):
    """Anthropic HH-RLHF dialogues: prompt = the dialogue so far, chosen/rejected = final replies."""

    name = "hh_rlhf"
    TASK = "dialogue"
    SPLITS = SPLITS
    DESCRIPTION = "Anthropic HH-RLHF helpful/harmless dialogue comparisons, split into prompt and responses."
    HOMEPAGE = "https://github.com/anthropics/hh-rlhf"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the data (the clone needs git-lfs) and pass the directory as the source:
        git lfs install
        git clone https://huggingface.co/datasets/Anthropic/hh-rlhf
    or fetch <subset>/train.jsonl.gz and <subset>/test.jsonl.gz for the subsets harmless-base,
    helpful-base, helpful-online, helpful-rejection-sampled from
    https://huggingface.co/datasets/Anthropic/hh-rlhf/tree/main (also on
    https://github.com/anthropics/hh-rlhf). A single subset directory also works as the source.
    """

    source_files = staticmethod(source_files)
    parse_line = staticmethod(parse_line)
