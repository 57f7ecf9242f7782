"""The observer, who scores each draft and revision for alignment (1-7) and engagement (1-7).

Two kinds:

- `LMObserver`: a language model asked `prompts.observe` for each aspect, its replies parsed with
  `prompts.parse_rating`; a reply that does not parse leaves that score None, and the simulation
  drops the interaction (and counts it) rather than record a made-up score. The paper's observer
  is a stronger model than the agents; any jaxalign or imported model can be given.
- `TaskObserver`: the ground-truth scorer of a synthetic task (`jaxalign.data.synthetic`),
  alignment ``1 + round(6 * score)``. It stands in for the stronger observer in miniature
  societies, where no small model judges as well as the task's own rules. It does not score
  engagement: that field is recorded as null, saying "not scored", not as a number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from jaxalign.data import synthetic
from jaxalign.methods.sandbox import prompts

Generate = Callable[[Sequence[str]], list[str]]  # prompts -> replies (one batched call)


@dataclasses.dataclass(frozen=True)
class Score:
    moral: int | None  # None: the observer's reply did not parse
    moral_reason: str
    engagement: int | None  # None: unparseable (LMObserver) or not scored (TaskObserver)
    engagement_reason: str


class LMObserver:
    scores_engagement = True

    def __init__(self, generate: Generate) -> None:
        self.generate = generate

    def __call__(self, questions: Sequence[str], answers: Sequence[str]) -> list[Score]:
        asks = [prompts.observe(q, a, aspect) for q, a in zip(questions, answers, strict=True)
                for aspect in ("moral", "engagement")]
        replies = [prompts.parse_rating(r) for r in self.generate(asks)]
        out = []
        for moral, engagement in zip(replies[0::2], replies[1::2], strict=True):
            out.append(Score(moral[0] if moral else None, moral[1] if moral else "",
                             engagement[0] if engagement else None, engagement[1] if engagement else ""))
        return out


class TaskObserver:
    scores_engagement = False

    def __init__(self, task: str | synthetic.Task) -> None:
        self.task = synthetic.get_task(task)

    def __call__(self, questions: Sequence[str], answers: Sequence[str]) -> list[Score]:
        out = []
        for question, answer in zip(questions, answers, strict=True):
            metrics = self.task.metrics(question, answer)
            shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
            rating = 1 + round((prompts.SCALE - 1) * metrics["score"])
            out.append(Score(rating, f"ground truth ({self.task.name}): {shown}", None, ""))
        return out
