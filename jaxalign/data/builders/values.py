"""The three value-alignment benchmarks of Second Thoughts (Liu et al. 2022), built from their upstream files.

    sources = prepare("moral_stories", "downloads/moral_stories", "workdir/tfds")  # {"train": ..., ...}
    skip_report("mic", "workdir/tfds")   # {"records": ..., "skipped": {"neutral": 3}, ...}

One entry point for ``moral_stories`` (preference pairs) and ``ethics_commonsense`` and ``mic``
(labelled texts, 1 = aligned); `schema(name)` tells which.

Details: docs/data.md#moral-stories-ethics-and-mic-second-thoughts
"""

from __future__ import annotations

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders.ethics import EthicsCommonsense
from jaxalign.data.builders.feedback_common import FeedbackBuilder
from jaxalign.data.builders.mic import Mic
from jaxalign.data.builders.moral_stories import MoralStories
from jaxalign.data.builders.reading import MALFORMED, SKIPPED, Skip

BUILDERS: dict[str, type[FeedbackBuilder]] = {
    "moral_stories": MoralStories, "ethics_commonsense": EthicsCommonsense, "mic": Mic,
}

__all__ = [
    "BUILDERS", "MALFORMED", "SKIPPED", "EthicsCommonsense", "Mic", "MoralStories", "Skip",
    "builder_class", "decode_record", "prepare", "schema", "skip_report",
]


_REGISTRY = common.Registry("value", BUILDERS)
builder_class, schema, prepare, skip_report = (
    _REGISTRY.builder_class, _REGISTRY.schema, _REGISTRY.prepare, _REGISTRY.skip_report)
decode_record = common.decode_stored  # text fields as str, ``label`` as int (1 = aligned)
