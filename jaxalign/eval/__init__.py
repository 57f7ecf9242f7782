"""Evaluation metrics, as Chain of Hindsight (Liu et al., 2023) reports them.

Table 4 of the paper has two columns, and each has a function here:

- "Sum": summarisation quality, the *average ROUGE* (mean of ROUGE-1, ROUGE-2 and ROUGE-L
  F-measures, x 100) of the model's summaries, generated with the positive feedback prompt,
  against the preferred summary of each summarize-from-feedback validation comparison.
  `rouge(predictions, references)` returns it as "avg", beside rouge1/rouge2/rougeL/rougeLsum.
- "Dia": dialogue, the *preference accuracy* on Anthropic HH pairs: the share of pairs for which
  the model gives the chosen response a higher log-likelihood than the rejected one (ties count
  half). `compare(params, cfg, mesh, chosen_examples, rejected_examples, normalize=...)` scores
  both and returns it with the mean margin; `preference_accuracy` does the arithmetic on scores
  computed elsewhere. The paper reports it in %; these return a fraction.

Both rest on `sequence_logprobs(params, cfg, mesh, examples)`: the weighted log-likelihood
sum_t weights[t] * log p(tokens[t] | tokens[:t]) of each example ({"tokens", "weights"}, the
convention of `jaxalign.data.packing`) and its number of weighted tokens, computed packed and
sharded on the mesh, never truncating an example unless asked to.
"""

from jaxalign.eval.preference import compare, preference_accuracy
from jaxalign.eval.rouge import rouge
from jaxalign.forward import SequenceScores, sequence_logprobs

__all__ = ["SequenceScores", "compare", "preference_accuracy", "rouge", "sequence_logprobs"]

# Mistake Analysis's judges (harmless rate, helpfulness), on a reward model (jaxalign.models.reward,
# scored by jaxalign.forward).
from jaxalign.eval.safety import Judge, SafetyJudge, agreement, helpfulness, safety_records  # noqa: E402

__all__ += ["Judge", "SafetyJudge", "agreement", "helpfulness", "safety_records"]
