"""Tokenizer: sentencepiece training, special tokens, save/load, and id parity with transformers."""

import json
import pickle

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from jaxalign.data.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    demo_tokenizer,
    train_sentencepiece,
)

CORPUS = """\
Chain of hindsight shows the model a good answer and a bad answer, each with its label.
Good: the reply is clear and polite. Bad: the reply is vague, rude, or simply wrong.
An edit chain walks from a first draft to a final answer, one small revision at a time.
Stable alignment lets simulated agents rate each other's answers and revise their own.
Mistake analysis asks the model to find what went wrong in a response, and why.
Feedback can be a score from 1 to 10, a ranking of 4 replies, or a written critique.
The quick brown fox jumps over the lazy dog; THE LAZY DOG SLEEPS IN THE SUN.
Numbers such as 3.14159, 2024 and 1,000,000 show up in questions about maths.
  Indented lines, double  spaces and trailing spaces matter to a tokenizer.
Une réponse utile est claire ; ein Beispiel für Umlaute: Größe, Übung, Straße.
Questions and answers: what is the capital of France? Paris is the capital of France.
Emails look like alice@example.com and paths look like /home/user/notes.txt today.
""".splitlines() * 4

MARKERS = ["<|chain|>", "<|good|>"]

# Texts for the parity checks: markers anywhere, unicode (incl. unseen scripts and emoji),
# leading/trailing/double spaces, control characters, digits, and the empty string.
TEXTS = [
    "Good: the reply is clear.",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "double  spaces  here",
    " ",
    "",
    "<|chain|>starts with a marker",
    "ends with a marker<|chain|>",
    "a<|chain|>b <|good|> c",
    "<|good|><|chain|><|good|>",
    " <|chain|> spaced <|good|> ",
    "Größe café naïve 日本語 Ελληνικά 🙂👍",
    "tabs\tand\nnew lines\r\n",
    "3.14159 and 1,000,000",
]


@pytest.fixture(scope="module")
def sp_bpe():
    return train_sentencepiece(CORPUS, vocab_size=400)


def _hf_dir(tmp_path, tok, name, llama_config=True):
    """What hf.export_checkpoint writes around a tokenizer: a llama config.json beside it."""
    out = tok.save_pretrained(tmp_path / name)
    if llama_config:  # AutoTokenizer also consults the model config's model_type
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return out


def _assert_hf_parity(tok, out_dir, texts=TEXTS):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(out_dir))
    for text in texts:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, text
        assert hf.decode(ids) == tok.decode(ids) == text, text
    return hf


# --------------------------------------------------------------------------- training


def test_trained_ids_and_round_trip(sp_bpe):
    tok = sp_bpe
    assert isinstance(tok, Tokenizer)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert 300 < tok.vocab_size <= 400  # 4 specials + 256 bytes + learned pieces
    assert len(tok) == tok.vocab_size
    for text in TEXTS:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    ids = tok.encode("Good: the reply", add_bos=True, add_eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids) == "Good: the reply"
    # Learned pieces make familiar words short, and no dummy prefix makes concatenation exact.
    assert len(tok.encode(" the answer")) < len(" the answer") / 2
    assert tok.encode("Good: the reply") == tok.encode("Good:") + tok.encode(" the reply")
    # decode drops pad (and bos/eos) and takes arrays.
    padded = np.array([3, 3, *tok.encode("the reply"), 2, 3])
    assert tok.decode(padded) == "the reply"


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_training_is_deterministic(model_type):
    a = train_sentencepiece(CORPUS, vocab_size=380, model_type=model_type, user_defined_symbols=MARKERS)
    b = train_sentencepiece(CORPUS, vocab_size=380, model_type=model_type, user_defined_symbols=MARKERS)
    assert a.model_proto == b.model_proto
    assert [a.encode(t) for t in TEXTS] == [b.encode(t) for t in TEXTS]
    # Symbols given at training time sit right after the four specials and are atomic.
    assert [a.token_to_id(m) for m in MARKERS] == [4, 5]
    assert a.encode("x<|good|>y").count(5) == 1


def test_byte_fallback_encodes_unseen_characters(sp_bpe):
    unseen = "ζωή ☃ 🙂 שלום"  # no Greek, Hebrew or emoji in the corpus
    ids = sp_bpe.encode(unseen)
    assert sp_bpe.unk_id not in ids
    assert sp_bpe.decode(ids) == unseen
    assert sp_bpe.token_to_id("<0xF0>") in ids  # the emoji's first byte, as a byte piece
    # Without byte fallback those characters are <unk>.
    no_bytes = train_sentencepiece(CORPUS, vocab_size=200, byte_fallback=False)
    assert no_bytes.unk_id in no_bytes.encode(unseen)


def test_demo_tokenizer_fits_tiny_preset():
    tok = demo_tokenizer()
    assert tok.vocab_size <= 256
    text = "The answer is 42, isn't it? (Yes!)"
    assert tok.unk_id not in tok.encode(text)
    assert tok.decode(tok.encode(text)) == text


# --------------------------------------------------------------------------- special tokens


def test_special_tokens_are_atomic_and_survive_save_load(tmp_path):
    tok = train_sentencepiece(CORPUS, vocab_size=400)
    n = tok.vocab_size
    assert tok.add_special_tokens(MARKERS) == [n, n + 1]
    assert tok.vocab_size == n + 2
    assert tok.add_special_tokens(["<|good|>", "<|chain|>"]) == [n + 1, n]  # idempotent
    assert tok.vocab_size == n + 2
    chain, good = n, n + 1

    text = "Bad: rude.<|chain|>Good: polite. <|good|> x<|chain|><|chain|>"
    ids = tok.encode(text)
    assert ids.count(chain) == 3 and ids.count(good) == 1
    assert tok.decode(ids) == text
    assert tok.encode("x<|chain|>y") == tok.encode("x") + [chain] + tok.encode("y")

    out = tok.save_pretrained(tmp_path / "tok")
    for path in (out, out / "tokenizer.model"):
        loaded = Tokenizer.load(path)
        assert isinstance(loaded, SentencePieceTokenizer)
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.token_to_id("<|chain|>") == chain
        assert [loaded.encode(t) for t in TEXTS + [text]] == [tok.encode(t) for t in TEXTS + [text]]

    restored = pickle.loads(pickle.dumps(tok))  # data loaders may ship tokenizers to workers
    assert restored.encode(text) == ids


def test_special_token_errors(sp_bpe):
    with pytest.raises(ValueError, match="CONTROL"):
        sp_bpe.add_special_tokens(["<s>"])
    with pytest.raises(ValueError, match="without whitespace"):
        sp_bpe.add_special_tokens(["<|two words|>"])
    with pytest.raises(TypeError, match="sequence"):
        sp_bpe.add_special_tokens("<|chain|>")


# --------------------------------------------------------------------------- transformers parity


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_matches_transformers(tmp_path, model_type):
    tok = train_sentencepiece(CORPUS, vocab_size=400, model_type=model_type)
    tok.add_special_tokens(MARKERS)
    out = _hf_dir(tmp_path, tok, "hf")
    config = json.loads((out / "tokenizer_config.json").read_text())
    expected_class = "LlamaTokenizer" if model_type == "bpe" else "PreTrainedTokenizerFast"
    assert config["tokenizer_class"] == expected_class
    assert json.loads((out / "special_tokens_map.json").read_text())["pad_token"] == "<pad>"

    hf = _assert_hf_parity(tok, out)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (1, 2, 3, 0)
    assert hf.convert_tokens_to_ids(MARKERS) == [tok.token_to_id(m) for m in MARKERS]
    # LLaMA convention: transformers' tokenizer(text) starts with bos, as encode(add_bos=True) does.
    assert hf("a<|chain|>b")["input_ids"] == tok.encode("a<|chain|>b", add_bos=True)

    # And back: the directory transformers saves (tokenizer.json) loads with the same ids.
    hf.save_pretrained(str(tmp_path / "resaved"))
    back = Tokenizer.load(tmp_path / "resaved")
    assert isinstance(back, HFTokenizer)
    assert (back.bos_id, back.eos_id, back.pad_id, back.unk_id) == (1, 2, 3, 0)
    assert [back.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
    # Re-exporting it keeps transformers' own tokenizer_config.json keys and still matches.
    _assert_hf_parity(back, back.save_pretrained(tmp_path / "again"))


def test_sentencepiece_without_byte_fallback_matches_transformers(tmp_path):
    tok = demo_tokenizer()  # what `jaxalign generate --preset tiny` uses
    out = _hf_dir(tmp_path, tok, "hf", llama_config=False)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(out))
    for text in ["The answer is 42.", " Good: clear", "unseen 日本 ~ Zz"]:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text), text


def _tokenizers_bpe():
    """A byte-level BPE in the style of Llama 3, trained in-process."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return HFTokenizer(tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", pad_token="<|pad|>")


def test_tokenizers_json_matches_transformers(tmp_path):
    tok = _tokenizers_bpe()
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (0, 1, 2, None)
    n = tok.vocab_size
    assert tok.add_special_tokens(MARKERS) == [n, n + 1]
    assert tok.add_special_tokens(MARKERS) == [n, n + 1] and tok.vocab_size == n + 2
    ids = tok.encode("a<|chain|>b <|good|>", add_bos=True)
    assert ids[0] == 0 and ids.count(n) == 1 and ids.count(n + 1) == 1
    assert tok.decode(ids + [1, 2, 2]) == "a<|chain|>b <|good|>"

    out = _hf_dir(tmp_path, tok, "hf")
    assert (out / "tokenizer.json").is_file() and (out / "special_tokens_map.json").is_file()
    hf = _assert_hf_parity(tok, out)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2)

    loaded = Tokenizer.load(out)  # special-token names come back from tokenizer_config.json
    assert isinstance(loaded, HFTokenizer)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id, loaded.vocab_size) == (0, 1, 2, n + 2)
    assert [loaded.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
    # A tokenizer.json alone: bos/eos/pad are recognised by their usual spellings.
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "tokenizer.json").write_text((out / "tokenizer.json").read_text())
    bare = Tokenizer.load(tmp_path / "bare" / "tokenizer.json")
    assert (bare.bos_id, bare.eos_id, bare.pad_id) == (0, 1, 2)
    assert [bare.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
    with pytest.raises(ValueError, match="'<nope>' is not in the vocabulary"):
        HFTokenizer(tok.backend, bos_token="<nope>")


# --------------------------------------------------------------------------- errors


def test_bad_paths_raise_clear_errors(tmp_path, sp_bpe):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        Tokenizer.load(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*tokenizer\.json or tokenizer\.model"):
        Tokenizer.load(empty)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a protobuf \xff\xfe")
    with pytest.raises(ValueError, match="garbage.model: not a sentencepiece model"):
        Tokenizer.load(garbage)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a tokenizers tokenizer\.json"):
        Tokenizer.load(bad_dir)
    with pytest.raises(ValueError, match="out of range"):
        sp_bpe.decode([sp_bpe.vocab_size])
    with pytest.raises(ValueError, match="model_type"):
        train_sentencepiece(CORPUS, vocab_size=300, model_type="wordpiece")
    with pytest.raises(ValueError, match="sentencepiece training failed"):
        train_sentencepiece(CORPUS, vocab_size=10)  # smaller than specials + 256 byte pieces
