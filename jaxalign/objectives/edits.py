"""The edit-chain algorithm of Second Thoughts (Liu et al., "Second Thoughts are Best: Learning to
Re-Align With Human Values from Text Edits", NeurIPS 2022, arXiv 2301.00355), apart from any model.

Minimum-cost chains of span edits between two token sequences (`compute_chain`; positions in source
coordinates, so any subset of a chain applies on its own: `apply_chain`), their serialisation as
tokens with marker tokens (`serialize`), and parsing a generated continuation back into a chain and
a text (`parse_generation`). It works on token ids alone (numpy and rapidfuzz, no model), so it can
be used and tested on its own; the objective that trains on it is `jaxalign.objectives.edit_chain`.

Details: docs/methods.md#edit-chains-jaxalignobjectivesedits
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
from rapidfuzz.distance import Indel, Levenshtein

from jaxalign.data.tokenizer import Tokenizer

OPS = ("insert", "delete", "replace")
# Token ids are int32. rapidfuzz compares list elements by hash, and Python's int hash wraps at
# 2**61 - 1 (and maps -1 to -2), so out-of-range ids could silently compare equal.
_MAX_ID = 2**31


# --------------------------------------------------------------------------- costs and chains


@dataclasses.dataclass(frozen=True)
class Costs:
    """Per-token edit costs; a replacement costs `replace`, not a deletion plus an insertion."""

    insert: float = 1.0
    delete: float = 1.0
    replace: float = 2.0

    def __post_init__(self) -> None:
        for name in ("insert", "delete", "replace"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"edit cost {name} must be a finite number > 0, got {value!r}")

    @property
    def substitutes(self) -> bool:
        """Whether a replacement is cheaper than a deletion plus an insertion (else never used)."""
        return self.replace < self.insert + self.delete

    def span_cost(self, old: int, new: int) -> float:
        """The cheapest way to turn `old` tokens into `new` different ones (docs/methods.md)."""
        pairs = min(old, new) if self.substitutes else 0
        return pairs * self.replace + (old - pairs) * self.delete + (new - pairs) * self.insert


DEFAULT_COSTS = Costs()
# Chosen because they give different chains of the same pair: 1/1/2 never substitutes (a longest
# common subsequence), 1/1/1 substitutes where that ties with deleting and inserting, 2/2/1 even
# gives up a match to substitute; 1/1/1.5 mostly finds an equally cheap alignment to 1/1/2's but,
# aligned by the dynamic programme here, breaks ties differently (later matches first) from rapidfuzz.
AUGMENT_COSTS: tuple[Costs, ...] = (DEFAULT_COSTS, Costs(1.0, 1.0, 1.0), Costs(1.0, 1.0, 1.5),
                                   Costs(2.0, 2.0, 1.0))


class Edit(NamedTuple):
    """Replace ``src[start:end]`` by `tokens`; insert: ``start == end``; delete: ``tokens == ()``."""

    op: str  # "insert" | "delete" | "replace"
    start: int
    end: int
    tokens: tuple[int, ...] = ()


def _span(start: int, end: int, tokens: Sequence[int]) -> Edit:
    op = "insert" if start == end else "replace" if tokens else "delete"
    return Edit(op, start, end, tuple(tokens))


def _ids(ids: Any, name: str) -> list[int]:
    """A sequence of token ids (list, tuple, 1-D numpy array) as a list of Python ints, checked."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"{name} must be a 1-D sequence of integer token ids, got shape "
                             f"{ids.shape} dtype {ids.dtype}")
        ids = ids.tolist()
    elif isinstance(ids, (str, bytes)):
        raise ValueError(f"{name} must be token ids, not text ({type(ids).__name__})")
    else:
        ids = list(ids)
    if not all(type(t) is int for t in ids):
        bad = next(t for t in ids if type(t) is not int)
        if isinstance(bad, bool) or not isinstance(bad, numbers.Integral):
            raise ValueError(f"{name} must hold integer token ids, got {bad!r}")
        ids = [int(t) for t in ids]
    if ids and (min(ids) < 0 or max(ids) >= _MAX_ID):
        raise ValueError(f"{name} holds token id {min(ids) if min(ids) < 0 else max(ids)}, "
                         f"outside [0, 2**31)")
    return ids


def _merge_opcodes(opcodes: Iterable[tuple[str, int, int, int, int]], src_len: int,
                   tgt: list[int]) -> list[Edit]:
    """rapidfuzz opcodes -> span edits, each maximal run of non-"equal" opcodes one edit."""
    chain: list[Edit] = []
    start, new_start = None, 0
    for tag, i1, _, j1, _ in opcodes:
        if tag == "equal":
            if start is not None:
                chain.append(_span(start, i1, tgt[new_start:j1]))
                start = None
        elif start is None:
            start, new_start = i1, j1
    if start is not None:
        chain.append(_span(start, src_len, tgt[new_start:]))
    return chain


def _dp_chain(src: list[int], tgt: list[int], costs: Costs) -> list[Edit]:
    """Minimum-cost chain for costs rapidfuzz's opcodes cannot take (docs/methods.md).

    A common prefix and suffix are always matched in some optimal alignment (costs are positive
    and per token), so only the middle is aligned. Row i of the table is
    ``D[i, j] = min(E[j], D[i, j-1] + ins)`` with ``E`` the deletion / diagonal candidates, i.e.
    ``D[i, j] = j*ins + min_{k<=j} (E[k] - k*ins)``, one prefix minimum per row.
    """
    n, m = len(src), len(tgt)
    head = 0
    while head < min(n, m) and src[head] == tgt[head]:
        head += 1
    tail = 0
    while tail < min(n, m) - head and src[n - 1 - tail] == tgt[m - 1 - tail]:
        tail += 1
    a, b = src[head:n - tail], tgt[head:m - tail]
    ins, dele, sub = float(costs.insert), float(costs.delete), float(costs.replace)
    diagonal = np.where(np.equal.outer(np.asarray(a, np.int64), np.asarray(b, np.int64)), 0.0, sub)
    ramp = np.arange(len(b) + 1) * ins
    table = np.empty((len(a) + 1, len(b) + 1))
    table[0] = ramp
    candidates = np.empty(len(b) + 1)
    for i in range(1, len(a) + 1):  # numpy call overhead dominates at these sizes: few calls per row
        above, row = table[i - 1], table[i]
        np.add(above, dele, out=candidates)
        np.minimum(candidates[1:], above[:-1] + diagonal[i - 1], out=candidates[1:])
        candidates -= ramp
        np.minimum.accumulate(candidates, out=row)
        row += ramp
    rows = table.tolist()
    # Walk back choosing the cheapest predecessor (ties: match, replace, delete, insert), which
    # is robust to rounding in the prefix-minimum form.
    spans: list[Edit] = []
    i, j, run_end = len(a), len(b), None
    while i or j:
        best, move = math.inf, 0
        if i and j:
            same = a[i - 1] == b[j - 1]
            best, move = rows[i - 1][j - 1] + (0.0 if same else sub), (0 if same else 1)
        if i and rows[i - 1][j] + dele < best:
            best, move = rows[i - 1][j] + dele, 2
        if j and rows[i][j - 1] + ins < best:
            move = 3
        if move == 0:
            if run_end is not None:
                spans.append(_span(head + i, head + run_end[0], b[j:run_end[1]]))
                run_end = None
        elif run_end is None:
            run_end = (i, j)
        i, j = (i - 1 if move != 3 else i), (j - 1 if move != 2 else j)
    if run_end is not None:
        spans.append(_span(head, head + run_end[0], b[:run_end[1]]))
    return spans[::-1]


def compute_chain(src: Sequence[int], tgt: Sequence[int], costs: Costs = DEFAULT_COSTS) -> list[Edit]:
    """A minimum-cost chain of span edits turning `src` into `tgt` (token id lists), sorted by
    start, non-overlapping, each maximal run of non-matching tokens merged into one edit."""
    src, tgt = _ids(src, "src"), _ids(tgt, "tgt")
    if not costs.substitutes:  # a longest common subsequence is optimal for any insert/delete costs
        return _merge_opcodes(Indel.opcodes(src, tgt), len(src), tgt)
    if costs.insert == costs.delete == costs.replace:
        return _merge_opcodes(Levenshtein.opcodes(src, tgt), len(src), tgt)
    return _dp_chain(src, tgt, costs)


def chain_cost(chain: Sequence[Edit], costs: Costs = DEFAULT_COSTS) -> float:
    """The cost of a chain: each span edit at its cheapest (`Costs.span_cost`)."""
    return float(sum(costs.span_cost(e.end - e.start, len(e.tokens)) for e in chain))


def _integer_weights(costs: Costs) -> tuple[int, tuple[int, int, int]] | None:
    """(scale, integer weights) with weights = scale * costs, if the costs are small fractions."""
    fractions = [Fraction(c).limit_denominator(1000) for c in (costs.insert, costs.delete, costs.replace)]
    if any(float(f) != float(c) for f, c in zip(fractions, (costs.insert, costs.delete, costs.replace),
                                                   strict=True)):
        return None
    scale = math.lcm(*(f.denominator for f in fractions))
    weights = tuple(int(f * scale) for f in fractions)
    return (scale, weights) if max(weights) <= 2**20 else None


def edit_distance(src: Sequence[int], tgt: Sequence[int], costs: Costs = DEFAULT_COSTS) -> float:
    """The minimum edit cost of turning `src` into `tgt` (rapidfuzz's weighted distance if it can)."""
    src, tgt = _ids(src, "src"), _ids(tgt, "tgt")
    if not costs.substitutes:
        common = (len(src) + len(tgt) - Indel.distance(src, tgt)) // 2
        return float((len(src) - common) * costs.delete + (len(tgt) - common) * costs.insert)
    integer = _integer_weights(costs)
    if integer is not None:
        scale, weights = integer
        return Levenshtein.distance(src, tgt, weights=weights) / scale
    return chain_cost(_dp_chain(src, tgt, costs), costs)


def _integer(x: Any) -> bool:
    return type(x) is int or (isinstance(x, numbers.Integral) and not isinstance(x, bool))


def _as_edit(edit: Any, n: int) -> Edit | str:
    """`edit` as an Edit of Python ints if it is a valid edit of a source of n tokens, else why not."""
    try:
        op, start, end, tokens = edit
    except (TypeError, ValueError):
        return "is not an Edit(op, start, end, tokens)"
    if op not in OPS:
        return f"has op {op!r}, not one of {', '.join(OPS)}"
    if not (_integer(start) and _integer(end)):
        return "needs integer start and end"
    if not 0 <= start <= end <= n:
        return f"spans {start}:{end}, outside the source of {n} tokens"
    if isinstance(tokens, (str, bytes)) or not all(type(t) is int or _integer(t) for t in tokens):
        return "needs integer token ids"
    expected = "insert" if start == end else "replace" if len(tokens) else "delete"
    if op != expected or (start == end and not len(tokens)):
        return f"is not a valid {op} (insert: start == end and tokens; delete: start < end and no " \
               "tokens; replace: start < end and tokens)"
    if type(edit) is Edit and type(start) is int and type(end) is int and type(tokens) is tuple \
            and all(type(t) is int for t in tokens):
        return edit  # the common case (compute_chain's own edits): nothing to convert
    return Edit(op, int(start), int(end), tuple(int(t) for t in tokens))


def _check_chain(chain: Sequence[Edit], n: int) -> list[Edit]:
    """`chain` as Edits if they are valid, sorted and non-overlapping in a source of n tokens."""
    edits: list[Edit] = []
    previous = None
    for k, edit in enumerate(chain):
        checked = _as_edit(edit, n)
        if isinstance(checked, str):
            problem = checked
        elif previous is not None and checked.start < previous.end:
            problem = f"starts before the previous edit {tuple(previous[:3])} ends (edits must be " \
                      "sorted and must not overlap)"
        elif previous is not None and checked.op == previous.op == "insert" \
                and checked.start == previous.start:
            problem = "inserts at the same position as the previous edit (merge the two)"
        else:
            edits.append(checked)
            previous = checked
            continue
        raise ValueError(f"edit {k} {edit!r} {problem}")
    return edits


def apply_chain(src: Sequence[int], chain: Sequence[Edit]) -> list[int]:
    """`src` with the edits of `chain` applied; any subset of a valid chain is itself valid."""
    src = _ids(src, "src")
    out: list[int] = []
    position = 0
    for edit in _check_chain(chain, len(src)):
        out += src[position:edit.start]
        out += edit.tokens
        position = edit.end
    out += src[position:]
    return out


def rebase(edits: Sequence[Edit], applied: Sequence[Edit]) -> list[Edit]:
    """`edits` moved into the coordinates of ``apply_chain(src, applied)``: after accepting some
    edits of a chain, the rest (in source coordinates) as edits of the partly edited text."""
    both = sorted([*((Edit(*e), False) for e in edits), *((Edit(*e), True) for e in applied)],
                  key=lambda x: (x[0].start, x[0].end))
    # Together they must form one valid chain (the source length does not matter here).
    _check_chain([e for e, _ in both], max((e.end for e, _ in both), default=0))
    shift, moved = 0, []
    for edit, was_applied in both:
        if was_applied:
            shift += len(edit.tokens) - (edit.end - edit.start)
        else:
            moved.append(edit._replace(start=edit.start + shift, end=edit.end + shift))
    return moved


def augmented_chains(src: Sequence[int], tgt: Sequence[int],
                     costs: Sequence[Costs] = AUGMENT_COSTS) -> list[list[Edit]]:
    """The distinct minimal chains under each cost setting, in the order of `costs`."""
    return distinct_chains(src, tgt, costs, len(costs))


def distinct_chains(src: Sequence[int], tgt: Sequence[int], costs: Sequence[Costs], want: int
                    ) -> list[list[Edit]]:
    """The first `want` distinct minimal chains under the settings of `costs`, in their order."""
    if not costs:
        raise ValueError("augmented chains need at least one cost setting")
    chains: list[list[Edit]] = []
    for setting in costs:
        chain = compute_chain(src, tgt, setting)
        if chain not in chains:
            chains.append(chain)
            if len(chains) == want:
                break
    return chains


# --------------------------------------------------------------------------- serialisation

MARKER_NAMES = ("unaligned", "chain", "aligned", "insert", "delete", "replace", "to")
MARKERS = ("<|unaligned|>", "<|chain|>", "<|aligned|>", "<|ins|>", "<|del|>", "<|sub|>", "<|to|>")
SPELLING = dict(zip(MARKER_NAMES, MARKERS, strict=True))


class ChainParseError(ValueError):
    """A token sequence that is not a valid serialised chain of the given source."""


@dataclasses.dataclass(frozen=True)
class ChainFormat:
    """The ids of the markers (`MARKERS`, spelled as in `SPELLING`) in one tokenizer."""

    unaligned: int
    chain: int
    aligned: int
    insert: int
    delete: int
    replace: int
    to: int

    def __post_init__(self) -> None:
        if len(set(self.ids)) != len(self.ids):
            named = dict(zip(MARKER_NAMES, self.ids, strict=True))
            raise ValueError(f"chain markers need distinct ids, got {named}")

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in MARKER_NAMES)

    @property
    def op_of(self) -> dict[int, str]:
        """Edit marker id -> the op it starts."""
        return {self.insert: "insert", self.delete: "delete", self.replace: "replace"}

    def marker_of(self, token_id: int) -> str | None:
        """The spelling of a marker id, or None for an ordinary token."""
        names = dict(zip(self.ids, MARKERS, strict=True))
        return names.get(token_id)


def add_markers(tokenizer: Tokenizer) -> ChainFormat:
    """Adds `MARKERS` as special tokens (idempotent: existing ones keep their ids). The model's
    embedding must then cover ``tokenizer.vocab_size`` ids."""
    return ChainFormat(*tokenizer.add_special_tokens(list(MARKERS)))


def _number_text(*numbers_: int) -> str:
    return "".join(f" {x}" for x in numbers_)


_ONE_NUMBER = re.compile(r"\s*(0|[1-9][0-9]*)\s*", re.ASCII)
_TWO_NUMBERS = re.compile(r"\s*(0|[1-9][0-9]*)\s+(0|[1-9][0-9]*)\s*", re.ASCII)
# Text that may still grow into position text as more ids are decoded.
_PARTIAL_NUMBERS = re.compile(r"\s*([0-9]+(\s+([0-9]+\s*)?)?)?", re.ASCII)


def serialize(chain: Sequence[Edit], src: Sequence[int], tokenizer: Tokenizer, fmt: ChainFormat) -> list[int]:
    """The token ids of `chain` (an edit chain of `src`), in the grammar of docs/methods.md."""
    src = _ids(src, "src")
    markers = set(fmt.ids)
    out: list[int] = []
    for k, edit in enumerate(_check_chain(chain, len(src))):
        old = src[edit.start:edit.end]
        clash = markers.intersection(old) or markers.intersection(edit.tokens)
        if clash:
            raise ValueError(f"edit {k} {edit!r} holds the marker {fmt.marker_of(min(clash))}, which "
                             "a chain cannot carry (marker spellings must not occur in the texts)")
        if edit.op == "insert":
            out.append(fmt.insert)
            out += tokenizer.encode(_number_text(edit.start))
        else:
            out.append(fmt.delete if edit.op == "delete" else fmt.replace)
            out += tokenizer.encode(_number_text(edit.start, edit.end))
            out += old
        if edit.op != "delete":
            out.append(fmt.to)
            out += edit.tokens
    return out


def _token_text(token_id: int, tokenizer: Tokenizer, fmt: ChainFormat) -> str:
    return fmt.marker_of(token_id) or repr(tokenizer.decode([token_id]))


def _parse_positions(head: list[int], tokenizer: Tokenizer, where: str) -> tuple[int, int, int]:
    """(start, end, k): head[:k] is the text " start end" and head[k:] the end - start old ids.

    Tries k = 1, 2, ...: once the text of head[:k] cannot begin position text, or END - START
    exceeds the ids left, no longer prefix can fit either (decoding more ids only appends text), so
    the first fit is the only one (docs/methods.md).
    """
    for k in range(1, len(head) + 1):
        text = tokenizer.decode(head[:k])
        if not _PARTIAL_NUMBERS.fullmatch(text):
            break
        match = _TWO_NUMBERS.fullmatch(text)
        if match:
            span, left = int(match[2]) - int(match[1]), len(head) - k
            if span == left:
                return int(match[1]), int(match[2]), k
            if span > left:
                break
    text = tokenizer.decode(head[:8])
    raise ChainParseError(f"{where}: no position text ' START END' followed by END - START old tokens "
                          f"(the edit reads {text!r}..., {len(head)} tokens before the new text)")


def deserialize(ids: Sequence[int], src: Sequence[int], tokenizer: Tokenizer, fmt: ChainFormat) -> list[Edit]:
    """The chain that `serialize` wrote as `ids` for `src`; `ChainParseError` if `ids` is not one
    (bad structure, positions outside `src`, old tokens that differ from `src`, unsorted edits)."""
    try:
        ids, src = _ids(ids, "chain ids"), _ids(src, "src")
    except ValueError as e:
        raise ChainParseError(str(e)) from e
    out_of_range = [t for t in ids if t >= tokenizer.vocab_size]
    if out_of_range:
        raise ChainParseError(f"token id {out_of_range[0]} is outside the vocabulary of "
                              f"{tokenizer.vocab_size}")
    op_of = fmt.op_of
    stray = [(i, t) for i, t in enumerate(ids) if t in (fmt.unaligned, fmt.chain, fmt.aligned)]
    if stray:
        raise ChainParseError(f"chain token {stray[0][0]} is the marker {fmt.marker_of(stray[0][1])}, "
                              "which cannot occur inside a chain")
    if ids and ids[0] not in op_of:
        raise ChainParseError(f"a chain starts with an edit marker ({', '.join(MARKERS[3:6])}), got "
                              f"{_token_text(ids[0], tokenizer, fmt)}")
    starts = [i for i, t in enumerate(ids) if t in op_of] + [len(ids)]
    edits = []
    for k, (begin, stop) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        op, body = op_of[ids[begin]], ids[begin + 1:stop]
        where = f"edit {k} ({SPELLING[op]} at chain token {begin})"
        if body.count(fmt.to) > (op != "delete"):
            raise ChainParseError(f"{where}: {'a' if op == 'delete' else 'a second'} {SPELLING['to']}")
        if op != "delete" and fmt.to not in body:
            raise ChainParseError(f"{where}: no {SPELLING['to']} before the new tokens")
        cut = body.index(fmt.to) if op != "delete" else len(body)
        head, new = body[:cut], body[cut + 1:]
        if op == "insert":
            match = _ONE_NUMBER.fullmatch(tokenizer.decode(head)) if head else None
            if match is None:
                raise ChainParseError(f"{where}: expected the position as text ' POS' before "
                                      f"{SPELLING['to']}, got {tokenizer.decode(head)!r}")
            start = end = int(match[1])
        else:
            start, end, k_pos = _parse_positions(head, tokenizer, where)
            if end > len(src):
                raise ChainParseError(f"{where}: span {start}:{end} is outside the source of "
                                      f"{len(src)} tokens")
            if head[k_pos:] != src[start:end]:
                raise ChainParseError(
                    f"{where}: old tokens {tokenizer.decode(head[k_pos:])!r} differ from the source's "
                    f"tokens {start}:{end}, {tokenizer.decode(src[start:end])!r}")
        if op != "delete" and not new:
            raise ChainParseError(f"{where}: no new tokens after {SPELLING['to']}")
        if start > len(src):
            raise ChainParseError(f"{where}: position {start} is outside the source of {len(src)} tokens")
        edits.append(Edit(op, start, end, tuple(new)))
    try:
        return _check_chain(edits, len(src))
    except ValueError as e:
        raise ChainParseError(str(e)) from e


# --------------------------------------------------------------------------- decoding


@dataclasses.dataclass
class Revision:
    """A parsed continuation: the generated chain, the generated target, and the chain applied to
    the source. `agrees` says whether the two routes to the revision give the same tokens."""

    src: list[int]
    chain: list[Edit] | None
    target: list[int]
    applied: list[int] | None
    parse_error: str | None = None

    @property
    def agrees(self) -> bool:
        return self.parse_error is None and self.chain is not None and self.applied == self.target

    def accept(self, indices: Iterable[int]) -> list[int]:
        """The source with only the chain's edits at `indices` applied (interactive correction)."""
        if self.chain is None:
            raise ValueError(f"the generation has no valid chain to accept edits from: {self.parse_error}")
        chosen = sorted({int(i) for i in indices})
        bad = [i for i in chosen if not 0 <= i < len(self.chain)]
        if bad:
            raise ValueError(f"edit index {bad[0]} is outside the chain's {len(self.chain)} edits")
        return apply_chain(self.src, [self.chain[i] for i in chosen])

    def describe(self, tokenizer: Tokenizer) -> str:
        """A readable report: one line per edit, then the target and whether the chain agrees."""
        lines = []
        for k, edit in enumerate(self.chain or []):
            old = tokenizer.decode(self.src[edit.start:edit.end])
            new = tokenizer.decode(edit.tokens)
            lines.append(f"[{k}] {edit.op} {edit.start}:{edit.end} {old!r} -> {new!r}")
        lines.append(f"target: {tokenizer.decode(self.target)!r}")
        if self.applied is not None and not self.agrees:
            lines.append(f"chain applied: {tokenizer.decode(self.applied)!r}")
        status = "agrees" if self.agrees else "DISAGREES"
        if self.parse_error:
            status = f"error: {self.parse_error}"
        lines.append(f"chain and target: {status}")
        return "\n".join(lines)


def parse_generation(generated_ids: Sequence[int], src: Sequence[int], tokenizer: Tokenizer,
                     fmt: ChainFormat) -> Revision:
    """Splits the ids generated after the prompt at ``<|chain|>``, ``<|aligned|>`` and EOS.

    Missing markers (a generation cut short) and an unparseable chain set `parse_error`; `target`
    is then what there is (empty without ``<|chain|>``, where everything is taken as chain).
    """
    ids, src = _ids(generated_ids, "generated ids"), _ids(src, "src")
    errors = []
    if tokenizer.eos_id is not None and tokenizer.eos_id in ids:
        ids = ids[:ids.index(tokenizer.eos_id)]
    if fmt.chain in ids:
        cut = ids.index(fmt.chain)
        chain_ids, rest = ids[:cut], ids[cut + 1:]
    else:
        errors.append(f"no {SPELLING['chain']} after the chain")
        chain_ids, rest = ids, []
    if fmt.aligned in rest:
        target = rest[:rest.index(fmt.aligned)]
    else:
        target = rest
        if fmt.chain in ids:
            errors.append(f"no {SPELLING['aligned']} after the target")
    stray = set(fmt.ids).intersection(target)
    if stray:
        errors.append(f"the target contains the marker {fmt.marker_of(min(stray))}")
    try:
        chain = deserialize(chain_ids, src, tokenizer, fmt)
        applied = apply_chain(src, chain)
    except ChainParseError as e:
        errors.append(f"chain: {e}")
        chain = applied = None
    return Revision(src, chain, target, applied, "; ".join(errors) or None)
