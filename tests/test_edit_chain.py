"""Second Thoughts edit chains: minimal chains (checked against an independent DP), subsets of edits,
serialisation round trips with a real tokenizer, training examples and parsing generations."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxalign.data.tokenizer import train_sentencepiece
from jaxalign.objectives import edit_chain as ec
from jaxalign.objectives import edits
from jaxalign.objectives.edits import ChainParseError, Costs, Edit

# (context, unaligned, aligned), Moral Stories style.
TRIPLES = [
    ("Tom is at a party and wants a drink.", "Tom takes a beer from the fridge without asking.",
     "Tom asks the host if he can have a beer from the fridge."),
    ("Anna found a wallet on the bus.", "Anna keeps the money and throws the wallet away.",
     "Anna gives the wallet to the driver."),
    ("Sam is angry at his friend.", "Sam tells his friend that he is an idiot.",
     "Sam tells his friend that he is upset."),
    ("Mia has a test tomorrow.", "Mia copies the answers from her neighbour.",
     "Mia studies the answers in her book."),
    ("Leo is late for work.", "Leo drives through a red light.", "Leo calls his boss and drives carefully."),
    ("", "You are stupid and nobody likes you.", "You are kind and many people like you."),
    ("Ben borrowed 20 dollars.", "Ben never pays back the 20 dollars.",
     "Ben pays back the 20 dollars on Friday."),
    ("Zoe sees a lost dog.", "Zoe ignores the dog.", "Zoe ignores nothing and helps the dog find its owner."),
]
COSTS = [Costs(), Costs(1, 1, 1), Costs(1, 1, 1.5), Costs(2, 2, 1), Costs(1, 2, 2), Costs(2, 1, 1.25),
         Costs(0.3, 0.7, 0.45)]
ids_lists = st.lists(st.integers(0, 5), max_size=40)
costs_st = st.one_of(st.sampled_from(COSTS),
                     st.builds(Costs, *[st.floats(0.1, 5.0, allow_nan=False)] * 3))
SETTINGS = settings(max_examples=200, deadline=None)


def reference_cost(src, tgt, costs):
    """Plain Wagner-Fischer with per-token costs, independent of the module."""
    row = [j * costs.insert for j in range(len(tgt) + 1)]
    for i in range(1, len(src) + 1):
        new = [i * costs.delete]
        for j in range(1, len(tgt) + 1):
            diagonal = row[j - 1] + (0.0 if src[i - 1] == tgt[j - 1] else costs.replace)
            new.append(min(row[j] + costs.delete, new[j - 1] + costs.insert, diagonal))
        row = new
    return row[-1]


def splice(src, chain):
    """Applies edits right to left by slice assignment (a second, independent implementation)."""
    out = list(src)
    for edit in sorted(chain, key=lambda e: e.start, reverse=True):
        out[edit.start:edit.end] = edit.tokens
    return out


# --------------------------------------------------------------------------- chains


@SETTINGS
@given(ids_lists, ids_lists, costs_st)
def test_chain_turns_source_into_target_and_is_canonical(src, tgt, costs):
    chain = edits.compute_chain(src, tgt, costs)
    assert edits.apply_chain(src, chain) == tgt
    assert splice(src, chain) == tgt
    for edit in chain:
        assert isinstance(edit, Edit) and isinstance(edit.tokens, tuple)
        assert 0 <= edit.start <= edit.end <= len(src)
        assert edit.op == ("insert" if edit.start == edit.end else "replace" if edit.tokens else "delete")
        assert edit.start < edit.end or edit.tokens
    # Adjacent single-token operations are merged: between two edits at least one token is kept.
    for before, after in itertools.pairwise(chain):
        assert after.start > before.end


@SETTINGS
@given(ids_lists, ids_lists, costs_st)
def test_chain_cost_is_the_minimum_edit_cost(src, tgt, costs):
    best = reference_cost(src, tgt, costs)
    chain = edits.compute_chain(src, tgt, costs)
    assert edits.chain_cost(chain, costs) == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert edits.edit_distance(src, tgt, costs) == pytest.approx(best, rel=1e-9, abs=1e-9)


@SETTINGS
@given(ids_lists, ids_lists, st.sampled_from(COSTS), st.data())
def test_any_subset_of_edits_applies_and_the_rest_completes_it(src, tgt, costs, data):
    chain = edits.compute_chain(src, tgt, costs)
    chosen = data.draw(st.sets(st.sampled_from(range(len(chain))) if chain else st.nothing()))
    subset = [chain[i] for i in sorted(chosen)]
    rest = [chain[i] for i in range(len(chain)) if i not in chosen]
    partial = edits.apply_chain(src, subset)
    assert partial == splice(src, subset)  # exactly those spans replaced, everything else kept
    assert len(partial) == len(src) + sum(len(e.tokens) - (e.end - e.start) for e in subset)
    assert edits.apply_chain(partial, edits.rebase(rest, subset)) == tgt


def test_costs_decide_the_chain():
    # Under 2/2/1 two replacements (cost 2) beat a deletion plus an insertion (cost 4); under the
    # default costs a replacement is never cheaper, so the kept token 2 splits the chain in two.
    src, tgt = [1, 2], [2, 3]
    assert edits.compute_chain(src, tgt) == [Edit("delete", 0, 1, ()), Edit("insert", 2, 2, (3,))]
    assert edits.compute_chain(src, tgt, Costs(2, 2, 1)) == [Edit("replace", 0, 2, (2, 3))]
    chains = edits.augmented_chains(src, tgt)
    assert chains[0] == edits.compute_chain(src, tgt, edits.DEFAULT_COSTS)
    assert len(chains) == len({tuple(c) for c in chains}) >= 2
    assert ec.num_chains() == len(edits.AUGMENT_COSTS)
    assert edits.compute_chain([], []) == [] and edits.compute_chain([4], [4]) == []
    assert edits.compute_chain(np.array([5, 6, 7]), np.array([5, 7])) == [Edit("delete", 1, 2, ())]


@SETTINGS
@given(ids_lists, ids_lists)
def test_augmented_chains_are_distinct_and_each_minimal(src, tgt):
    chains = edits.augmented_chains(src, tgt)
    assert chains[0] == edits.compute_chain(src, tgt)
    assert len({tuple(c) for c in chains}) == len(chains) <= len(edits.AUGMENT_COSTS)
    for chain in chains:
        assert edits.apply_chain(src, chain) == tgt
        assert any(edits.chain_cost(chain, c) == pytest.approx(reference_cost(src, tgt, c))
                   for c in edits.AUGMENT_COSTS)


@pytest.mark.parametrize("chain, message", [
    ([Edit("replace", 2, 4, (9,)), Edit("delete", 3, 5, ())], "edit 1 .*previous edit"),
    ([Edit("delete", 3, 4, ()), Edit("delete", 1, 2, ())], "edit 1 .*sorted"),
    ([Edit("insert", 2, 2, (7,)), Edit("insert", 2, 2, (8,))], "edit 1 .*same position"),
    ([Edit("delete", 4, 7, ())], "edit 0 .*outside the source of 6"),
    ([Edit("delete", 1, 2, (5,))], "edit 0 .*not a valid delete"),
    ([Edit("insert", 1, 1, ())], "edit 0 .*not a valid insert"),
    ([Edit("swap", 1, 2, (5,))], "edit 0 .*op 'swap'"),
    ([(1, 2)], "edit 0 .*not an Edit"),
])
def test_apply_chain_rejects_invalid_chains(chain, message):
    with pytest.raises(ValueError, match=message):
        edits.apply_chain([0, 1, 2, 3, 4, 5], chain)


def test_bad_costs_and_ids_are_errors():
    for bad in (0, -1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="finite number > 0"):
            Costs(replace=bad)
    with pytest.raises(ValueError, match="token id -1"):
        edits.compute_chain([1, -1], [1])
    with pytest.raises(ValueError, match="integer token ids"):
        edits.compute_chain([1.5], [1])
    with pytest.raises(ValueError, match="not text"):
        edits.compute_chain("abc", [1])


# --------------------------------------------------------------------------- serialisation


@pytest.fixture(scope="module")
def tok_fmt():
    corpus = [text for triple in TRIPLES for text in triple if text]
    corpus += ["0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", "The dog and the host are kind."]
    tok = train_sentencepiece(corpus, vocab_size=400)
    fmt = edits.add_markers(tok)
    return tok, fmt


def test_add_markers_is_idempotent(tok_fmt):
    tok, fmt = tok_fmt
    size = tok.vocab_size
    assert edits.add_markers(tok) == fmt and tok.vocab_size == size
    for spelling, token_id in zip(edits.MARKERS, fmt.ids, strict=True):
        assert tok.encode(f"a{spelling}b")[1] == token_id and tok.decode([token_id]) == spelling
        assert fmt.marker_of(token_id) == spelling


def test_serialised_chains_round_trip_and_read_as_text(tok_fmt):
    tok, fmt = tok_fmt
    spell = dict(zip(edits.OPS, ("<|ins|>", "<|del|>", "<|sub|>"), strict=True))
    for _, unaligned, aligned in TRIPLES:
        src, tgt = tok.encode(unaligned), tok.encode(aligned)
        for chain in edits.augmented_chains(src, tgt):
            ids = edits.serialize(chain, src, tok, fmt)
            assert edits.deserialize(ids, src, tok, fmt) == chain
            # Readable: marker, positions, the replaced text, <|to|>, the new text.
            expected = ""
            for e in chain:
                where = f" {e.start}" if e.op == "insert" else f" {e.start} {e.end}"
                new = "" if e.op == "delete" else "<|to|>" + tok.decode(e.tokens)
                expected += spell[e.op] + where + tok.decode(src[e.start:e.end]) + new
            assert tok.decode(ids) == expected
    src, tgt = tok.encode(TRIPLES[2][1]), tok.encode(TRIPLES[2][2])
    chain_ids = edits.serialize(edits.compute_chain(src, tgt), src, tok, fmt)
    assert tok.decode(chain_ids).endswith(" idiot<|to|> upset")


@SETTINGS
@given(st.data())
def test_round_trip_of_arbitrary_ids_including_digits_and_spaces(tok_fmt, data):
    tok, fmt = tok_fmt
    tricky = tok.encode("0123456789 10 20  ") + [tok.token_to_id("<0x20>"), tok.token_to_id("<0x0A>")]
    ordinary = [i for i in range(tok.vocab_size) if i not in fmt.ids]
    token = st.one_of(st.sampled_from(tricky), st.sampled_from(ordinary))
    src = data.draw(st.lists(token, max_size=30))
    tgt = data.draw(st.lists(st.one_of(token, st.sampled_from(src) if src else token), max_size=30))
    chain = edits.compute_chain(src, tgt, data.draw(st.sampled_from(edits.AUGMENT_COSTS)))
    assert edits.deserialize(edits.serialize(chain, src, tok, fmt), src, tok, fmt) == chain


def test_serialize_refuses_marker_tokens(tok_fmt):
    tok, fmt = tok_fmt
    with pytest.raises(ValueError, match=r"edit 0 .*<\|chain\|>"):
        edits.serialize([Edit("insert", 0, 0, (fmt.chain,))], [5], tok, fmt)


def test_deserialize_errors_name_the_problem(tok_fmt):
    tok, fmt = tok_fmt
    src = tok.encode("Sam tells his friend that he is an idiot.")
    chain = edits.compute_chain(src, tok.encode("Sam tells his friend that he is upset."))
    good = edits.serialize(chain, src, tok, fmt)
    num = lambda text: tok.encode(text)  # noqa: E731
    cases = {
        "starts with an edit marker": num("hello") + good,
        r"no <\|to\|>": [fmt.replace] + num(" 0 1") + src[:1],
        r"differ from the source": [fmt.delete] + num(" 0 1") + src[1:2],
        r"outside the source": [fmt.delete] + num(f" 0 {len(src) + 1}") + src + src[:1],
        r"no position text": [fmt.delete] + num(" x 1") + src[:1],
        r"position as text": [fmt.insert] + num(" three") + [fmt.to] + src[:1],
        r"no new tokens": [fmt.insert] + num(" 1") + [fmt.to],
        r"a <\|to\|>": [fmt.delete] + num(" 0 1") + src[:1] + [fmt.to],
        r"marker <\|chain\|>": good + [fmt.chain],
        r"edit 1 .*sorted": [fmt.delete] + num(" 2 3") + src[2:3] + [fmt.delete] + num(" 0 1") + src[:1],
        r"outside the vocabulary": [fmt.insert] + num(" 1") + [fmt.to, tok.vocab_size],
    }
    for message, ids in cases.items():
        with pytest.raises(ChainParseError, match=message):
            edits.deserialize(ids, src, tok, fmt)
    assert issubclass(ChainParseError, ValueError)
    assert edits.deserialize([], src, tok, fmt) == []


# --------------------------------------------------------------------------- training examples


@pytest.mark.parametrize("loss_on", ec.LOSS_ON)
def test_example_layout_and_weights(tok_fmt, loss_on):
    tok, fmt = tok_fmt
    for context, unaligned, aligned in TRIPLES:
        src, tgt = tok.encode(unaligned), tok.encode(aligned)
        chains = edits.augmented_chains(src, tgt)
        for index in range(ec.num_chains()):
            example = ec.make_example(context, unaligned, aligned, tok, fmt, chain_index=index,
                                      loss_on=loss_on)
            tokens, weights = example["tokens"].tolist(), example["weights"]
            assert example["tokens"].dtype == np.int32 and weights.dtype == np.float32
            prompt = [tok.bos_id] + tok.encode(ec.prompt_text(context, unaligned))
            chain = chains[index] if index < len(chains) else chains[0]
            body = edits.serialize(chain, src, tok, fmt) + [fmt.chain]
            assert tokens == prompt + body + tgt + [fmt.aligned, tok.eos_id]
            # The prompt holds the source tokens the chain's positions refer to.
            assert prompt[-len(src) - 1:] == src + [fmt.unaligned]
            chain_weight = 1.0 if loss_on == "chain+aligned" else 0.0
            want = [0.0] * len(prompt) + [chain_weight] * len(body) + [1.0] * (len(tgt) + 2)
            np.testing.assert_array_equal(weights, np.asarray(want, np.float32))
            weighted_text = tok.decode([t for t, w in zip(tokens, weights, strict=True)
                                        if w and t not in fmt.ids[3:] and t != fmt.chain])
            assert weighted_text.endswith(aligned + "<|aligned|>")


def test_generation_prompt_is_the_trained_prefix(tok_fmt):
    tok, fmt = tok_fmt
    for context, unaligned, aligned in TRIPLES:
        example = ec.make_example(context, unaligned, aligned, tok, fmt)
        prompt = tok.encode(ec.prompt_text(context, unaligned), add_bos=True)
        np.testing.assert_array_equal(example["tokens"][:len(prompt)], prompt)
        assert not example["weights"][:len(prompt)].any() and example["weights"][len(prompt)] == 1
        assert tok.decode(prompt) == (f"{context}\n" if context else "") + unaligned + "<|unaligned|>"


def test_example_options_and_errors(tok_fmt):
    tok, fmt = tok_fmt
    context, unaligned, aligned = TRIPLES[0]
    with pytest.raises(ValueError, match="chain_index 4"):
        ec.make_example(context, unaligned, aligned, tok, fmt, chain_index=4)
    with pytest.raises(ValueError, match="loss_on"):
        ec.make_example(context, unaligned, aligned, tok, fmt, loss_on="chain")
    with pytest.raises(ValueError, match=r"aligned text contains the marker <\|chain\|>"):
        ec.make_example(context, unaligned, "fine <|chain|> text", tok, fmt)
    with pytest.raises(ValueError, match="add_markers"):
        ec.make_example(context, unaligned, aligned, tok, edits.ChainFormat(*range(10, 17)))
    record = {"context": context.encode(), "unaligned": unaligned, "aligned": aligned}
    np.testing.assert_array_equal(ec.example_from_record(record, tok, fmt)["tokens"],
                                  ec.make_example(context, unaligned, aligned, tok, fmt)["tokens"])
    with pytest.raises(ValueError, match="'aligned'"):
        ec.example_from_record({"unaligned": unaligned}, tok, fmt)
    # A single cost setting: one example per record.
    one = ec.make_example(context, unaligned, aligned, tok, fmt, costs=[Costs(1, 1, 1)])
    src, tgt = tok.encode(unaligned), tok.encode(aligned)
    assert edits.serialize(edits.compute_chain(src, tgt, Costs(1, 1, 1)), src, tok, fmt) == \
        one["tokens"].tolist()[len(tok.encode(ec.prompt_text(context, unaligned))) + 1:][:-len(tgt) - 3]


def test_example_without_bos():
    corpus = [text for triple in TRIPLES for text in triple if text]
    tok = train_sentencepiece(corpus, vocab_size=400, bos_id=-1)
    fmt = edits.add_markers(tok)
    assert tok.bos_id is None
    context, unaligned, aligned = TRIPLES[1]
    example = ec.make_example(context, unaligned, aligned, tok, fmt)
    prompt = tok.encode(ec.prompt_text(context, unaligned))
    assert example["tokens"][:len(prompt)].tolist() == prompt and not example["weights"][:len(prompt)].any()


# --------------------------------------------------------------------------- decoding


def test_parse_generation_agreeing_and_disagreeing(tok_fmt):
    tok, fmt = tok_fmt
    context, unaligned, aligned = TRIPLES[0]
    src, tgt = tok.encode(unaligned), tok.encode(aligned)
    example = ec.make_example(context, unaligned, aligned, tok, fmt)
    prompt_len = len(tok.encode(ec.prompt_text(context, unaligned), add_bos=True))
    generated = example["tokens"][prompt_len:].tolist() + [tok.pad_id, 77]  # what follows EOS is ignored
    revision = edits.parse_generation(generated, src, tok, fmt)
    chain = edits.compute_chain(src, tgt)
    assert revision.agrees and revision.parse_error is None
    assert revision.chain == chain and revision.target == tgt and revision.applied == tgt
    assert revision.accept(range(len(chain))) == tgt and revision.accept([]) == src
    assert revision.accept([0]) == edits.apply_chain(src, chain[:1])
    assert "agrees" in revision.describe(tok)
    with pytest.raises(ValueError, match="edit index"):
        revision.accept([len(chain)])

    # A target the chain does not produce: parsed fine, reported as a disagreement.
    other = tok.encode(" Tom drinks water.")
    changed = edits.serialize(chain, src, tok, fmt) + [fmt.chain] + other + [fmt.aligned, tok.eos_id]
    revision = edits.parse_generation(changed, src, tok, fmt)
    assert not revision.agrees and revision.parse_error is None
    assert revision.target == other and revision.applied == tgt
    assert "DISAGREES" in revision.describe(tok) and "chain applied" in revision.describe(tok)

    # A chain whose old tokens are not the source's: no chain, an error, the target still there.
    bad = [fmt.delete] + tok.encode(" 0 1") + src[1:2] + [fmt.chain] + tgt + [fmt.aligned]
    revision = edits.parse_generation(bad, src, tok, fmt)
    assert revision.chain is None and revision.applied is None and not revision.agrees
    assert "differ from the source" in revision.parse_error and revision.target == tgt
    with pytest.raises(ValueError, match="no valid chain"):
        revision.accept([0])


def test_parse_generation_cut_short(tok_fmt):
    tok, fmt = tok_fmt
    src, tgt = tok.encode(TRIPLES[2][1]), tok.encode(TRIPLES[2][2])
    chain_ids = edits.serialize(edits.compute_chain(src, tgt), src, tok, fmt)
    no_aligned = edits.parse_generation(chain_ids + [fmt.chain] + tgt[:3], src, tok, fmt)
    assert "no <|aligned|>" in no_aligned.parse_error and no_aligned.target == tgt[:3]
    assert no_aligned.chain == edits.compute_chain(src, tgt) and not no_aligned.agrees
    no_chain = edits.parse_generation(chain_ids, src, tok, fmt)
    assert "no <|chain|>" in no_chain.parse_error and no_chain.target == [] and not no_chain.agrees
    stray = edits.parse_generation(chain_ids + [fmt.chain, fmt.insert] + tgt + [fmt.aligned], src, tok, fmt)
    assert r"marker <|ins|>" in stray.parse_error
