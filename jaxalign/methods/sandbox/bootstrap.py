"""Teaching a small model the roles of a SANDBOX agent, from a synthetic task's ground truth.

The paper's agents are instruction-following models that can already answer, rate, revise and
judge. A model trained from scratch on a synthetic task cannot, so a miniature society starts from
one trained on `society_records`: supervised examples of every role, built with the exact
prompts of `jaxalign.methods.sandbox.prompts`, so the simulation asks them as they were taught.

- answer: the draft prompt (with recalled pairs of other questions, which the answer must not copy)
  -> the chosen response with probability `aligned`, else the rejected one: an agent that is only
  as aligned as the society it learned from, which the simulation and Stable Alignment must improve;
- rate and observe (moral): a draft -> ``Rating: r ### Reason: feedback``, r drawn from 6-7 for a
  chosen response and 1-2 for a rejected one, the reason the task's feedback sentence;
- observe (engagement): ``Rating: r ### Reason: ...`` with r 5-6 for an answer that engages with
  the question (gives steps) and 2-3 for one that does not;
- revise: a draft and its peers' mean rating and reasons -> the chosen response when the rating is
  low, the draft kept when it is high, so the revision follows the feedback;
- plain: ``question`` -> a response as in answer (the template a trained model is asked with).

Records are group records with one response each (``jaxalign.data.jsonl`` schema "group"),
trained with ``objective.name = "sft"``: the loss is on the reply only.
"""

from __future__ import annotations

import random
from typing import Any

from jaxalign.data import synthetic
from jaxalign.methods.sandbox import prompts

ROLES = ("answer", "rate", "observe_moral", "observe_engagement", "revise", "plain")


def _rating(good: bool, rng: random.Random) -> int:
    return rng.choice((6, 7)) if good else rng.choice((1, 2))


def _engagement(response: str, rng: random.Random) -> tuple[int, str]:
    engaged = "step" in response.lower()
    if engaged:
        return rng.choice((5, 6)), "The answer engages with the question step by step."
    return rng.choice((2, 3)), "The answer does not engage with the question."


def society_records(task: str | synthetic.Task, n: int, seed: int,
                    aligned: float = 0.5) -> list[dict[str, Any]]:
    """n group records (one response each), every role in turn, from the task's train split."""
    task = synthetic.get_task(task)
    rng = random.Random(seed)
    examples = synthetic.make_split(task, "train", n + 8, seed)
    out = []
    for i in range(n):
        e, other = examples[i], examples[rng.randrange(len(examples))]
        good = rng.random() < aligned
        draft, feedback = (e.chosen, e.chosen_feedback) if good else (e.rejected, e.rejected_feedback)
        role = ROLES[i % len(ROLES)]
        if role == "answer":
            memories = [(other.prompt, other.chosen)] if rng.random() < 0.5 else []
            prompt, reply = prompts.answer(e.prompt, memories), draft
        elif role == "plain":
            prompt, reply = e.prompt, draft
        elif role in ("rate", "observe_moral"):
            ask = prompts.rate if role == "rate" else lambda q, a: prompts.observe(q, a, "moral")
            prompt, reply = ask(e.prompt, draft), prompts.format_rating(_rating(good, rng), feedback)
        elif role == "observe_engagement":
            prompt = prompts.observe(e.prompt, draft, "engagement")
            reply = prompts.format_rating(*_engagement(draft, rng))
        else:
            peers = [_rating(good, rng) for _ in range(rng.randint(0, 3))]
            prompt = prompts.revise(e.prompt, draft, peers, [feedback] * len(peers))
            low = sum(peers) / len(peers) < 4 if peers else not good
            reply = e.chosen if low else draft
        out.append({"prompt": prompt, "responses": [reply], "ratings": [1.0], "id": f"{role}-{i}"})
    return out
