"""The datasets of Mistake Analysis (Chen et al. 2024, arXiv 2310.10477), built from their upstream files.

    sources = prepare("pku_saferlhf", "downloads/PKU-SafeRLHF", "workdir/tfds")  # {"train", "test"}
    skip_report("hh_red_team", "workdir/tfds")   # {"records": ..., "skipped": {"duplicate": 3}, ...}

One entry point for the PKU-SafeRLHF views and the HH-RLHF red-team instructions; `schema(name)`
tells each one's record schema (preference, labelled or text), so each consumer reads a schema the
pipeline already knows.

Details: docs/data.md#pku-saferlhf-and-hh-red-team-mistake-analysis
"""

from __future__ import annotations

from jaxalign.data.builders import feedback_common as common
from jaxalign.data.builders.feedback_common import FeedbackBuilder
from jaxalign.data.builders.hh_red_team import HhRedTeam
from jaxalign.data.builders.pku_saferlhf import PkuSafeRlhf, PkuSafeRlhfBetter, PkuSafeRlhfSafety
from jaxalign.data.builders.reading import MALFORMED, SKIPPED, Skip

BUILDERS: dict[str, type[FeedbackBuilder]] = {
    "pku_saferlhf": PkuSafeRlhf, "pku_saferlhf_better": PkuSafeRlhfBetter,
    "pku_saferlhf_safety": PkuSafeRlhfSafety, "hh_red_team": HhRedTeam,
}

__all__ = [
    "BUILDERS", "MALFORMED", "SKIPPED", "HhRedTeam", "PkuSafeRlhf", "PkuSafeRlhfBetter", "PkuSafeRlhfSafety",
    "Skip", "builder_class", "decode_record", "prepare", "schema", "skip_report",
]


_REGISTRY = common.Registry("safety", BUILDERS)
builder_class, schema, prepare, skip_report = (
    _REGISTRY.builder_class, _REGISTRY.schema, _REGISTRY.prepare, _REGISTRY.skip_report)
decode_record = common.decode_stored  # text fields as str, ``label`` as int (1 = safe)
