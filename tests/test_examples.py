import numpy as np
import pytest

from jaxalign.data import examples
from jaxalign.data.packing import pack_examples
from jaxalign.data.tokenizer import demo_tokenizer


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer()


def test_sft_example_weights_prompt_zero_response_and_eos_one():
    ex = examples.sft_example([1, 5, 6], np.array([7, 8]), eos_id=2)
    np.testing.assert_array_equal(ex["tokens"], [1, 5, 6, 7, 8, 2])
    np.testing.assert_array_equal(ex["weights"], [0, 0, 0, 1, 1, 1])
    assert ex["tokens"].dtype == np.int32 and ex["weights"].dtype == np.float32
    # Packed, the loss falls on predicting 7, 8 and the EOS, never on the prompt.
    [row] = pack_examples([ex], seq_len=8)
    np.testing.assert_array_equal(row["targets"][:5], [5, 6, 7, 8, 2])
    np.testing.assert_array_equal(row["weights"], [0, 0, 1, 1, 1, 0, 0, 0])
    # An empty response still teaches where to stop.
    np.testing.assert_array_equal(examples.sft_example([1, 4], [], 2)["weights"], [0, 0, 1])
    with pytest.raises(ValueError, match="eos_id"):
        examples.sft_example([1], [3], None)
    with pytest.raises(ValueError, match="response_ids must be a 1-D"):
        examples.sft_example([1], [[3, 4]], 2)


def test_records_become_examples(tok):
    text = "The quick brown fox."
    [ex] = examples.tokenized_records([{"text": text}], tok, "text")
    assert ex["tokens"][0] == tok.bos_id and ex["tokens"][-1] == tok.eos_id
    assert np.all(ex["weights"] == 1) and tok.decode(ex["tokens"]) == text

    record = {"prompt": "Question: name a colour. Answer:", "chosen": " blue.", "rejected": " four.", "id": 3}
    [ex] = examples.tokenized_records([record], tok, "preference")
    prompt = tok.encode(examples.format_prompt(record["prompt"]), add_bos=True)
    np.testing.assert_array_equal(ex["tokens"][: len(prompt)], prompt)
    assert np.all(ex["weights"][: len(prompt)] == 0) and np.all(ex["weights"][len(prompt):] == 1)
    assert tok.decode(ex["tokens"][len(prompt):]) == " blue." and ex["tokens"][-1] == tok.eos_id
    # tfds data sources return bytes: the same example.
    stored = {k: str(v).encode() for k, v in record.items()}
    from_bytes = examples.record_to_example(stored, tok, "preference")
    np.testing.assert_array_equal(from_bytes["tokens"], ex["tokens"])

    with pytest.raises(ValueError, match="record 1: a preference record needs a 'chosen' field"):
        examples.tokenized_records([record, {"prompt": "a", "rejected": "b"}], tok, "preference")
    with pytest.raises(ValueError, match="unknown record kind 'chat'"):
        examples.tokenized_records([record], tok, "chat")


def test_text_example_is_the_prompted_example_of_strings(tok):
    want = examples.prompted_example(tok, "Name a colour.", " blue.")
    got = examples.text_example(tok, "Name a colour.", " blue.")
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    np.testing.assert_array_equal(got["weights"], want["weights"])
    with pytest.raises(ValueError, match="prompt and response must be str, got str and bytes"):
        examples.text_example(tok, "Name a colour.", b" blue.")


def test_encode_pair_is_the_prompt_as_generation_sees_it_and_both_responses(tok):
    record = {"prompt": "Name a colour.", "chosen": " blue.", "rejected": " four."}
    prompt, chosen, rejected = examples.encode_pair(record, tok)
    assert prompt == tok.encode(examples.format_prompt(record["prompt"]), add_bos=True)
    assert (chosen, rejected) == (tok.encode(" blue."), tok.encode(" four."))
    with pytest.raises(ValueError, match="a preference record needs a 'rejected' field"):
        examples.encode_pair({"prompt": "a", "chosen": "b"}, tok)
