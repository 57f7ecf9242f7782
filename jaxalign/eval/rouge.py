"""ROUGE of generated text against references, with Google's `rouge-score` (ROUGE-1.5.5 in Python).

    rouge(["the cat sat"], ["the cat sat on the mat"])
    # {"rouge1": 66.67, "rouge2": 57.14, "rougeL": 66.67, "rougeLsum": 66.67, "avg": 63.49}

Each value is the F-measure times 100, averaged over examples (each pair weighs the same).
Text is lower-cased, cut into alphanumeric tokens and Porter-stemmed (``use_stemmer=True``, as in
the summarisation papers). "rougeLsum" is the summary-level LCS: rouge-score treats each line of a
text as a sentence, so pass multi-sentence summaries one sentence per line; on single-line texts
it equals "rougeL". "avg" is the mean of rouge1, rouge2 and rougeL: the "average ROUGE" that
Chain of Hindsight reports as its summarisation score (Table 4, column "Sum").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
AVERAGED = ("rouge1", "rouge2", "rougeL")  # what "avg" is the mean of


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE F-measures x 100 of predictions[i] against references[i], and their "avg"."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # an optional dependency: only evaluation needs it
        raise ImportError("jaxalign.eval.rouge needs the rouge-score package: pip install rouge-score") from e
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"rouge: {len(predictions)} predictions but {len(references)} references; "
                         "prediction i is scored against reference i")
    if not predictions:
        raise ValueError("rouge: no predictions to score")
    for name, texts in (("prediction", predictions), ("reference", references)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"rouge: {name} {bad} is a {type(texts[bad]).__name__}, not a str")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    # RougeScorer.score takes (target, prediction).
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references, strict=True)]
    out = {name: 100.0 * float(np.mean([s[name].fmeasure for s in scores])) for name in ROUGE_TYPES}
    out["avg"] = float(np.mean([out[name] for name in AVERAGED]))
    return out
