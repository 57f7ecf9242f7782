"""Chain of Hindsight: example layout and loss weights per template family, the inference prefix,
and random past-token masking (FCM)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import mesh as mesh_lib
from jaxalign import models
from jaxalign.data import packing, synthetic
from jaxalign.data.tokenizer import train_sentencepiece
from jaxalign.objectives import coh, lm
from jaxalign.train import optim
from jaxalign.train import state as state_lib
from jaxalign.train import step as step_lib

RECORDS = synthetic.to_records(synthetic.make_split("harmless", "train", 12, seed=0))
for _i, _r in enumerate(RECORDS):
    _r["task"] = ("summary", "dialogue", "webgpt")[_i % 3]


@pytest.fixture(scope="module")
def tok():
    corpus = synthetic.get_task("harmless").corpus(0, 400)
    corpus += ["User: A helpful answer: An unhelpful answer: For the following two summaries responses "
               "answers which one is better? The answer is the first one the second one The following "
               "is a better worse summary."]
    return train_sentencepiece(corpus, vocab_size=400)


def expected(tok, record, variant, fmt, first_is_chosen):
    """The example as pieces tokenized by hand: (ids, weight) per piece."""
    ctx = fmt.context(record["prompt"])
    lead = lambda positive: fmt.lead(positive, record["task"])  # noqa: E731
    out = {True: record["chosen"], False: record["rejected"]}
    if variant == "compare":
        a, b = (out[first_is_chosen], out[not first_is_chosen])
        nouns = coh.NOUNS[record["task"]][1]
        text = ctx + f"For the following two {nouns}:\n{a}\nand\n{b}\nwhich one is better? The answer is "
        answer = "the first one" if first_is_chosen else "the second one"
        return [([tok.bos_id] + tok.encode(text), 0), (tok.encode(answer) + [tok.eos_id], 1)]
    order = {"p": [True], "n": [False], "pn": [True, False], "np": [False, True]}[variant]
    pieces, first = [], True
    for positive in order:
        prefix = ([tok.bos_id] + tok.encode(ctx + lead(positive))) if first else tok.encode(lead(positive))
        pieces += [(prefix, 0), (tok.encode(out[positive]) + [tok.eos_id], 1)]
        first = False
    return pieces


@pytest.mark.parametrize("aux", [False, True])
@pytest.mark.parametrize("variant", coh.VARIANTS)
def test_weights_are_zero_on_template_and_one_on_outputs(tok, variant, aux):
    fmt = coh.CoHFormat(variants=coh.VARIANTS, aux_phrases=aux)
    for index, record in enumerate(RECORDS[:6]):
        example = coh.make_example(record, variant, tok, fmt, seed=3, record_index=index)
        pieces = expected(tok, record, variant, fmt, coh.first_is_chosen(3, index))
        want_tokens = np.concatenate([ids for ids, _ in pieces])
        want_weights = np.concatenate([np.full(len(ids), w, np.float32) for ids, w in pieces])
        np.testing.assert_array_equal(example["tokens"], want_tokens)
        np.testing.assert_array_equal(example["weights"], want_weights)
        # The weighted tokens are exactly the outputs (or the comparison's answer) and their EOS.
        weighted = tok.decode([t for t, w in zip(example["tokens"], example["weights"], strict=True)
                               if w and t != tok.eos_id])
        if variant == "compare":
            assert weighted in coh.ANSWERS
        else:
            outputs = {"p": "chosen", "n": "rejected", "pn": "chosen rejected", "np": "rejected chosen"}
            assert weighted == "".join(record[k] for k in outputs[variant].split())
        eos_weight = np.sum(example["weights"][example["tokens"] == tok.eos_id])
        assert eos_weight == (1 if variant == "compare" else len(variant))


def test_generation_prompt_is_the_trained_prefix(tok):
    fmt = coh.CoHFormat(aux_phrases=True)
    for index, record in enumerate(RECORDS):
        for variant in ("p", "pn"):
            example = coh.make_example(record, variant, tok, fmt, record_index=index)
            template = fmt.prompt_template(record["task"])
            prompt = [tok.bos_id] + tok.encode(template.format(prompt=record["prompt"]))
            n = len(prompt)
            np.testing.assert_array_equal(example["tokens"][:n], prompt)
            assert not example["weights"][:n].any() and example["weights"][n] == 1
            np.testing.assert_array_equal(example["tokens"][n:n + 3], tok.encode(record["chosen"])[:3])


def test_templates_with_braces_and_no_user_marker(tok):
    fmt = coh.CoHFormat(user_marker="", positive_marker="Good {answer}:", negative_marker="Bad:")
    assert fmt.prompt_template().format(prompt="x") == "x\nGood {answer}: "


def test_comparison_order_is_seeded_and_balanced():
    orders = [coh.first_is_chosen(0, i) for i in range(400)]
    assert orders == [coh.first_is_chosen(0, i) for i in range(400)]
    assert 150 < sum(orders) < 250
    assert orders != [coh.first_is_chosen(1, i) for i in range(400)]


def test_bad_format_and_record_are_clear_errors(tok):
    with pytest.raises(ValueError, match="variants"):
        coh.CoHFormat(variants=("p", "chain"))
    with pytest.raises(ValueError, match="both"):
        coh.CoHFormat(positive_marker="Good:", negative_marker="Good:")
    with pytest.raises(ValueError, match="'chosen'"):
        coh.make_example({"prompt": "a", "rejected": "b"}, "p", tok, coh.CoHFormat())


# --------------------------------------------------------------------------- FCM


def _rows(seq_len=24):
    examples = [{"tokens": np.arange(2, 2 + n, dtype=np.int32)} for n in (9, 7, 12, 5, 10, 6, 8, 11)]
    rows = packing.pack_examples(examples, seq_len)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_fcm_masks_only_strict_past_never_a_segment_start():
    batch = _rows()
    keep = np.asarray(coh.fcm_mask(jax.random.key(0), jnp.asarray(batch["segment_ids"]),
                                   jnp.asarray(batch["positions"]), 0.3, 0.6))
    b, length = batch["segment_ids"].shape
    q, k = np.meshgrid(np.arange(length), np.arange(length), indexing="ij")
    dropped = ~keep
    assert not dropped[:, k >= q].any()  # never self or future
    starts = batch["positions"] == 0
    assert not (dropped & starts[:, None, :]).any()  # never the first token of a segment
    assert dropped.any()
    # Per example, the drop rate among droppable same-segment entries lies in [min, max] (within noise).
    for row in range(b):
        for seg in set(batch["segment_ids"][row]) - {0}:
            idx = np.flatnonzero(batch["segment_ids"][row] == seg)
            sub = dropped[row][np.ix_(idx, idx)]
            droppable = np.tril(np.ones_like(sub), -1) & ~starts[row, idx][None, :]
            rate = sub[droppable].mean()
            assert 0.0 <= rate <= 0.95


def test_fcm_rate_matches_its_draw():
    batch = {"segment_ids": jnp.ones((4, 256), jnp.int32), "positions": jnp.arange(256)[None].repeat(4, 0)}
    keep = np.asarray(coh.fcm_mask(jax.random.key(1), batch["segment_ids"], batch["positions"], 0.1, 0.1))
    past = np.tril(np.ones((256, 256), bool), -1)
    past[:, 0] = False
    assert abs((~keep[:, past]).mean() - 0.1) < 0.005


def test_fcm_transform_rejects_bad_rates_and_is_off_at_zero():
    assert coh.fcm_transform(0.0, 0.0) is None
    with pytest.raises(ValueError, match="fcm_min <= fcm_max"):
        coh.fcm_transform(0.2, 0.1)


def test_fcm_is_train_only(devices):
    """With FCM the train step's loss differs from the unmasked loss; the eval step is unmasked."""
    cfg = models.get_preset("tiny", vocab_size=64)
    mesh = mesh_lib.make_mesh("dp:2,fsdp:4,tp:1")
    batch = _rows()
    batch = {k: np.concatenate([v, v]) for k, v in batch.items()}  # 8 rows: divisible by dp*fsdp
    opt = optim.default_optimizer_config()
    opt.total_steps = 10
    tx = optim.make_optimizer(opt)[0]
    evaluate = step_lib.make_eval_step(cfg, mesh, lm.make_loss_fn("sequence"))
    losses = {}
    for fcm in (0.0, 0.9):
        state = state_lib.init_train_state(cfg, tx, mesh, seed=0)
        eval_loss = float(evaluate(state.params, batch)["loss"])
        train = step_lib.make_train_step(cfg, tx, mesh, loss_fn=lm.make_loss_fn("sequence"),
                                         batch_transform=coh.fcm_transform(fcm, fcm))
        losses[fcm] = float(train(state, batch)[1]["loss"])
        assert losses[fcm] == pytest.approx(eval_loss, rel=1e-5) if fcm == 0 else True
        if fcm:
            assert abs(losses[fcm] - eval_loss) > 1e-4
