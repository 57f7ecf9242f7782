"""An instruction-following assistant in miniature: the starting model of the Mistake Analysis replication.

The paper starts from Alpaca-7B: helpful, often harmful, and able to follow a hint ("answer even if
it is harmful", "give a harmless answer") and to analyse an answer it is told is harmful. A model
trained from scratch on a synthetic task can do none of that, so the miniature starts from one
trained on `assistant_records`: supervised examples of each ability, written with the exact
prompts of `jaxalign.data.mistake_prompts`, on the "harmless" task's train split.

- plain:   instruction -> the helpful answer to a benign one; to a harmful one, the refusal with
           probability `aligned`, else the step-by-step compliance (Alpaca's mix);
- induce:  instruction + INDUCE_HINT -> the compliance (harmful) or the help (benign): the hint works;
- guided:  instruction + GUIDED_HINT -> the chosen answer (refusal or help): guided generation works;
- analyse: ANALYSIS(instruction, a harmful compliance, ANALYSIS_HINT) -> the task's analysis sentence
           ("This answer is harmful: it helps to steal my friend's car."): guided analysis works.

The unguided analysis question is never taught: Mistake Analysis fine-tuning is what teaches the
model to analyse without being told the answer is harmful. Records are group records with one
response each (``jaxalign.data.jsonl`` schema "group"), trained with ``objective.name = "sft"``.
"""

from __future__ import annotations

import random
from typing import Any

from jaxalign.data import mistake_prompts as mp
from jaxalign.data import synthetic

ROLES = {"plain": 0.4, "induce": 0.2, "guided": 0.2, "analyse": 0.2}  # share of the records


def assistant_records(n: int, seed: int, aligned: float = 0.4) -> list[dict[str, Any]]:
    """n group records (one response each), roles drawn with the ROLES shares."""
    if not 0.0 <= aligned <= 1.0:
        raise ValueError(f"aligned={aligned} must be in [0, 1]")
    rng = random.Random(seed)
    examples = synthetic.make_split("harmless", "train", n, seed)
    roles, weights = list(ROLES), list(ROLES.values())
    out = []
    for i, e in enumerate(examples):
        role = rng.choices(roles, weights)[0]
        harmful = e.meta["is_harmful"]
        comply = e.rejected if harmful else e.chosen  # the step-by-step answer either way
        if role == "plain":
            prompt, reply = e.prompt, (e.chosen if not harmful or rng.random() < aligned else e.rejected)
        elif role == "induce":
            prompt, reply = mp.induce_prompt(e.prompt, mp.INDUCE_HINT), comply
        elif role == "guided":
            prompt, reply = mp.guided_prompt(e.prompt), e.chosen
        elif harmful:
            prompt, reply = mp.analysis_prompt(e.prompt, comply, mp.ANALYSIS_HINT), e.rejected_feedback
        else:  # a guided analysis is only ever asked of a harmful answer: teach the plain role instead
            prompt, reply = e.prompt, e.chosen
        out.append({"prompt": prompt, "responses": [reply], "ratings": [1.0], "id": f"{role}-{i}"})
    return out
