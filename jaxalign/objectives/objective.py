"""What an objective gives the trainer, whatever the method: `Objective` (examples of a record, the
loss, how generation is prompted and read back, the model head) and `ExpandedSource`, the random-access
source of every record's examples. Objective modules build these and `registry` looks them up by name;
they live apart from both so that neither has to import the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxalign.data import dialogue, examples
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.objectives import lm

if TYPE_CHECKING:
    from jaxalign.objectives.coh import CoHFormat

Example = dict[str, Any]
Fanout = int | Callable[[Mapping[str, Any]], int]  # examples per record: fixed, or per record


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    fanout: Fanout  # examples per record: a number, or a function of the record
    make_example: Callable[[Mapping[str, Any], int, int], Example]  # (record, j, record index)
    loss_fn: lm.LossFn
    prompt_template: str  # str.format template with {prompt}, rendered by dialogue.render
    reference: bool = False  # the loss needs the frozen reference model's log-probs
    fields: tuple[str, ...] = ()  # extra per-token fields the packer must carry
    batch_transform: Any = None  # train-only transform (CoH's FCM)
    pretrain_transform: Any = None  # the same for the pretraining stream (CoH's fcm_pretrain)
    head: str = "lm"  # "score": the model ends in a scalar head (a reward model)
    # How a held-out record is put to the model and how its continuation is read back, when that
    # is more than `prompt_template` on record["prompt"] (edit chains show the unaligned draft too
    # and answer with a chain before the aligned text). Both take the record first.
    prompt_fn: Callable[[Mapping[str, Any]], str] | None = None
    response_fn: Callable[[Mapping[str, Any], Sequence[int]], str] | None = None
    # What evaluation asks of the method without naming it: CoH's markers (it scores both leads)
    # and whether generations are edit chains (it checks chain and text agree).
    feedback_format: CoHFormat | None = None
    edit_chains: bool = False

    def source(self, records: Sequence[Mapping[str, Any]]) -> ExpandedSource:
        return ExpandedSource(records, self.fanout, self.make_example)

    def prompt(self, record: Mapping[str, Any]) -> str:
        """The text a generation for `record` is prompted with (BOS is added when encoding)."""
        if self.prompt_fn is not None:
            return self.prompt_fn(record)
        return dialogue.render(self.prompt_template, examples.text_field(record, "prompt", "preference"))

    def response(self, record: Mapping[str, Any], generated: Sequence[int], tokenizer: Tokenizer) -> str:
        """The answer in a generation (ids after the prompt), as text."""
        if self.response_fn is not None:
            return self.response_fn(record, generated)
        return tokenizer.decode(generated).strip()


class ExpandedSource:
    """A random-access source of the examples of every record (`fanout` per record: a number or a
    function of the record), made when read (grain's read threads run it ahead of packing), so
    shuffling mixes the variants of all records.

    With a per-record fanout the records' example counts are read once, on the first ``len`` or
    read, into cumulative offsets (one pass over the records; each example is then found by
    binary search).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], fanout: Fanout,
                 make_example: Callable[[Mapping[str, Any], int, int], Example]) -> None:
        if not callable(fanout):
            if isinstance(fanout, bool) or not isinstance(fanout, (int, np.integer)) or fanout < 1:
                raise ValueError(f"fanout={fanout!r} must be a positive integer or a function of the record")
            fanout = int(fanout)
        self.records, self.fanout, self.make_example = records, fanout, make_example
        self._offsets: np.ndarray | None = None

    def offsets(self) -> np.ndarray:
        """[len(records) + 1] int64: record i's examples are offsets[i] .. offsets[i + 1] - 1."""
        if self._offsets is None:
            if callable(self.fanout):
                counts = [self._count(i) for i in range(len(self.records))]
            else:
                counts = [self.fanout] * len(self.records)
            self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        return self._offsets

    def _count(self, index: int) -> int:
        try:
            count = self.fanout(self.records[index])
        except ValueError as e:
            raise ValueError(f"record {index}: {e}") from e
        if count < 1:
            raise ValueError(f"record {index}: gives no examples")
        return count

    def __len__(self) -> int:
        if not callable(self.fanout):
            return len(self.records) * self.fanout
        return int(self.offsets()[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(record index, example index within the record) of example `index`."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} of {len(self)}")
        if not callable(self.fanout):
            return divmod(index, self.fanout)
        record_index = int(np.searchsorted(self.offsets(), index, side="right")) - 1
        return record_index, index - int(self.offsets()[record_index])

    def __getitem__(self, index: int) -> Example:
        record_index, j = self.locate(index)
        try:
            return self.make_example(self.records[record_index], j, record_index)
        except ValueError as e:
            raise ValueError(f"record {record_index}: {e}") from e
