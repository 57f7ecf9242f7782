"""Tokenizers: a sentencepiece `.model` or a Hugging Face `tokenizer.json`, behind one interface.

    tok = Tokenizer.load("path")            # a .model, a tokenizer.json, or an HF-style directory
    tok = train_sentencepiece(texts, vocab_size=512)
    [chain] = tok.add_special_tokens(["<|chain|>"])
    ids = tok.encode("Good: <|chain|> fine", add_bos=True)
    tok.save_pretrained("out/")             # transformers.AutoTokenizer loads the same ids
    tok.save_pretrained("out/", chat_template=dialogue.chat_template(template, tok.bos_token))

Paths may be local or URLs (``gs://...``): files are read and written whole, as bytes or text,
through `jaxalign.paths`, never handed to sentencepiece or tokenizers by name.

Sentencepiece models trained here use LLaMA's special ids (unk=0, bos=1, eos=2) plus a real pad
piece, pad=3, so batches can be filled with an id the model owns; `<pad>` is a control piece that
encoding never produces and decoding drops. They also differ from LLaMA's own model in one way:
no dummy prefix (a space is not prepended to the text). That keeps `encode(a) + encode(b) ==
encode(a + b)` whenever b starts with a space or a special token, which is how the objectives
assemble sequences from pieces, and it is what lets transformers reproduce the ids exactly,
special tokens and leading spaces included (its LLaMA tokenizer splits at added tokens before it
adds a prefix, sentencepiece after).

Known differences from transformers, by design of the upstream libraries:
- sentencepiece never reads control tokens ("<s>", "</s>", "<pad>") from text; transformers does.
- a loaded sentencepiece model *with* a dummy prefix (Meta's LLaMA files) is exported as
  LlamaTokenizer and matches transformers except for text that starts with whitespace or with a
  special token.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import sentencepiece as spm
import tokenizers
from etils import epath
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from jaxalign import paths

log = logging.getLogger(__name__)

_Piece = sp_pb2.ModelProto.SentencePiece
SP_FILE = "tokenizer.model"
JSON_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # what transformers 5 saves; it reads it before the config's key

# When a bare tokenizer.json names no special tokens, these spellings (most common first) are
# recognised as bos / eos / pad / unk.
_GUESSES = {
    "bos_token": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
    "eos_token": ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"),
    "pad_token": ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>"),
    "unk_token": ("<unk>", "[UNK]", "<|unk|>"),
}
# Keys of a loaded tokenizer_config.json that describe the files it came with, not the tokenizer.
_STALE_CONFIG_KEYS = (
    "tokenizer_class", "added_tokens_decoder", "auto_map", "tokenizer_file", "vocab_file",
    "name_or_path", "is_local", "local_files_only", "additional_special_tokens", "extra_special_tokens",
)


class Tokenizer:
    """Text <-> token ids. Construct with `Tokenizer.load` or `train_sentencepiece`."""

    @staticmethod
    def load(path: str | os.PathLike) -> Tokenizer:
        """A sentencepiece `.model`, a `tokenizer.json`, or a directory holding either.

        A directory with both (most Hugging Face LLaMA repositories) loads tokenizer.json, since
        that is the file transformers itself uses.
        """
        path = paths.path(path)
        if path.is_dir():
            if (path / JSON_FILE).is_file():
                return HFTokenizer.from_file(path / JSON_FILE)
            if (path / SP_FILE).is_file():
                return SentencePieceTokenizer.from_file(path / SP_FILE)
            raise FileNotFoundError(f"{path}: no tokenizer here (expected {JSON_FILE} or {SP_FILE})")
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no such file or directory (expected a sentencepiece .model, a {JSON_FILE}, "
                "or a directory holding one)"
            )
        if path.suffix == ".json":
            return HFTokenizer.from_file(path)
        return SentencePieceTokenizer.from_file(path)

    # Subclasses provide these.
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        """The id of a whole token (piece), or None if the vocabulary lacks it."""
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> str:
        """The token (piece) of an id, as the vocabulary spells it."""
        raise NotImplementedError

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_id is None else self.id_to_token(self.bos_id)

    @property
    def eos_token(self) -> str | None:
        return None if self.eos_id is None else self.id_to_token(self.eos_id)

    # The prompt template a run renders prompts with in place of its objective's own: the chat
    # template's (`dialogue.chat_prompt_template`), set by `jaxalign.data.sources.build` when
    # config.data.prompt_template is "chat_template"; `examples.prompt_template` reads it.
    prompt_template: str | None = None

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template that came with this tokenizer (chat_template.jinja beside it, else
        tokenizer_config.json's ``chat_template``, as transformers reads them), or None."""
        return None

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Makes each token one id that is matched atomically anywhere in text; returns the ids.

        New tokens get ids at the end of the vocabulary (grow the model's embedding to
        `vocab_size`); a token that is already special keeps its id.
        """
        raise NotImplementedError

    def save_pretrained(self, out_dir: str | os.PathLike, chat_template: str | None = None) -> epath.Path:
        """Writes files that `Tokenizer.load` and `transformers.AutoTokenizer` both read into
        `out_dir` (local or a URL); returns it. A `chat_template` (Jinja, e.g.
        `dialogue.chat_template`) goes into tokenizer_config.json and chat_template.jinja, which
        transformers 5 reads first; without one, a loaded tokenizer_config.json's is kept."""
        raise NotImplementedError

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ids = self._encode(text)
        if add_bos:
            ids.insert(0, self._require(self.bos_id, "bos"))
        if add_eos:
            ids.append(self._require(self.eos_id, "eos"))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, dropping bos, eos and pad; added special tokens come back as written."""
        ids = [int(i) for i in ids]  # accepts numpy / jax arrays
        n = self.vocab_size
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is out of range for a vocabulary of {n}")
        dropped = {self.bos_id, self.eos_id, self.pad_id} - {None}
        return self._decode([i for i in ids if i not in dropped])

    def __len__(self) -> int:
        return self.vocab_size

    def _require(self, token_id: int | None, name: str) -> int:
        if token_id is None:
            raise ValueError(f"{self!r} has no {name} token")
        return token_id


def _check_special(tokens: Sequence[str]) -> list[str]:
    if isinstance(tokens, str):
        raise TypeError("add_special_tokens takes a sequence of strings, e.g. ['<|chain|>']")
    for token in tokens:
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            # Whitespace would be rewritten (to "▁") before matching, differently by each library.
            raise ValueError(f"special token {token!r} must be a non-empty string without whitespace")
    return list(dict.fromkeys(tokens))


# --------------------------------------------------------------------------- sentencepiece


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model; special tokens live in the model itself, as USER_DEFINED pieces."""

    def __init__(self, model_proto: bytes, source: str = "<in memory>"):
        self._proto = sp_pb2.ModelProto()
        self._source = source
        try:
            self._proto.ParseFromString(model_proto)
            if not self._proto.pieces:
                raise ValueError("it has no pieces")
            self._reload()
        except Exception as e:  # protobuf's DecodeError, sentencepiece's RuntimeError, ...
            raise ValueError(f"{source}: not a sentencepiece model ({e})") from e

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        return cls(paths.path(path).read_bytes(), source=str(path))

    def _reload(self) -> None:
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto.SerializeToString())

    @property
    def model_proto(self) -> bytes:
        return self._proto.SerializeToString()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def _special(self, spec_id: int) -> int | None:
        return spec_id if 0 <= spec_id < self.vocab_size else None

    @property
    def bos_id(self) -> int | None:
        return self._special(self._sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        return self._special(self._sp.eos_id())

    @property
    def pad_id(self) -> int | None:
        return self._special(self._sp.pad_id())

    @property
    def unk_id(self) -> int | None:
        return self._special(self._sp.unk_id())

    def _encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)  # answers unk_id for unknown pieces
        return i if self._sp.id_to_piece(i) == token else None

    def id_to_token(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        ids = []
        for token in _check_special(tokens):
            i = self.token_to_id(token)
            if i is None:
                self._proto.pieces.add(piece=token, score=0.0, type=_Piece.USER_DEFINED)
                i = len(self._proto.pieces) - 1
            elif self._proto.pieces[i].type == _Piece.NORMAL:
                # An ordinary piece the model merges its way to: keep the id, make it atomic (what
                # tokenizers.Tokenizer.add_special_tokens does with an existing token too).
                self._proto.pieces[i].type = _Piece.USER_DEFINED
            elif self._proto.pieces[i].type != _Piece.USER_DEFINED:
                kind = _Piece.Type.Name(self._proto.pieces[i].type)
                raise ValueError(
                    f"{token!r} is the {kind} piece {i} of {self._source}; it cannot be a text marker"
                )
            ids.append(i)
        self._reload()
        return ids

    def _user_defined(self) -> list[str]:
        return [p.piece for p in self._proto.pieces if p.type == _Piece.USER_DEFINED]

    def _piece(self, i: int | None) -> str | None:
        return None if i is None else self._sp.id_to_piece(i)

    def save_pretrained(self, out_dir: str | os.PathLike, chat_template: str | None = None) -> epath.Path:
        out = paths.path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / SP_FILE).write_bytes(self.model_proto)
        prefix = self._proto.normalizer_spec.add_dummy_prefix
        # transformers 5 rebuilds a LlamaTokenizer from tokenizer.model as BPE with byte fallback
        # always on (it drops characters a model without byte pieces cannot encode) and a prefix
        # only before the first stretch of text when add_prefix_space. Its generic backend reads
        # model type, byte fallback and unk from the model but never adds a prefix.
        spec = self._proto.trainer_spec
        llama = spec.model_type == sp_pb2.TrainerSpec.BPE and spec.byte_fallback
        if prefix and not llama:
            log.warning("%s: transformers cannot add this model's dummy prefix, so the first word of a "
                        "text may get other ids there", self._source)
        special = {
            "bos_token": self._piece(self.bos_id), "eos_token": self._piece(self.eos_id),
            "unk_token": self._piece(self.unk_id), "pad_token": self._piece(self.pad_id),
        }
        config = {
            "tokenizer_class": "LlamaTokenizer" if llama else "PreTrainedTokenizerFast",
            **special,
            "add_bos_token": self.bos_id is not None,  # LLaMA convention: tokenizer(text) starts with bos
            "add_eos_token": False,
            "add_prefix_space": prefix,
            "legacy": False,
            "clean_up_tokenization_spaces": False,
            "extra_special_tokens": self._user_defined(),
        }
        _write_configs(out, config, special, self._user_defined(), chat_template)
        return out

    def __getstate__(self) -> dict:
        return {"model_proto": self.model_proto, "source": self._source}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"], state["source"])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self._source}, vocab_size={self.vocab_size})"


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "bpe",
    user_defined_symbols: Sequence[str] = (),
    byte_fallback: bool = True,
    add_dummy_prefix: bool = False,
    seed: int = 0,
    **trainer_options: Any,
) -> SentencePieceTokenizer:
    """Trains a sentencepiece model in memory (no files); the same inputs give the same model.

    Ids: <unk>=0, <s>=1, </s>=2, <pad>=3, then `user_defined_symbols`, then (byte_fallback) the
    256 byte pieces, so any text encodes without <unk>; then learned pieces. `vocab_size` is an
    upper bound (hard_vocab_limit=False): a small corpus gives fewer pieces, so size the model
    from `tok.vocab_size`. Each text is split into lines. Text is not normalised (identity rule,
    whitespace kept), so decode(encode(text)) == text. `trainer_options` go to
    sentencepiece.SentencePieceTrainer.train and override these defaults.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    symbols = _check_special(user_defined_symbols)
    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("train_sentencepiece: no text to train on")
    options: dict[str, Any] = dict(
        vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False, byte_fallback=byte_fallback,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        pad_piece="<pad>", user_defined_symbols=symbols, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=1.0,
        num_threads=1,  # threads make unigram's results depend on scheduling
        shuffle_input_sentence=False, minloglevel=2,
    )
    options.update(trainer_options)
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **options)
    except RuntimeError as e:
        raise ValueError(f"sentencepiece training failed: {e}") from e
    return SentencePieceTokenizer(model.getvalue(), source=f"<trained {model_type} {vocab_size}>")


_DEMO_TEXT = """\
Chain of hindsight turns feedback into text: a good answer, then a worse one, each labelled.
The model learns to tell them apart and, asked for a good answer, writes a better one.
Stable alignment lets simulated agents rate each other and revise what they say.
Mistake analysis asks the model to find the flaw in a bad response and explain it.
A helpful reply is clear, honest and kind. An unhelpful reply is vague or rude.
Question: what is two plus two? Answer: four. Question: name a colour. Answer: blue.
The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!
Digits and signs: 0 1 2 3 4 5 6 7 8 9 + - * / = % < > ( ) [ ] { } , ; : ' " # @ & _ ~ | ^ ` $ \\
"""


def demo_tokenizer(vocab_size: int = 256) -> SentencePieceTokenizer:
    """A small BPE tokenizer trained on a bundled paragraph, for smoke tests of randomly
    initialised presets (the "tiny" preset has 256 ids). No byte fallback, so that it fits in 256:
    characters it never saw encode as <unk>."""
    return train_sentencepiece([_DEMO_TEXT], vocab_size=vocab_size, byte_fallback=False)


# --------------------------------------------------------------------------- tokenizers (tokenizer.json)


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (a tokenizer.json) and the names of its bos/eos/pad/unk tokens."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        hf_config: dict | None = None,
        source: str = "<in memory>",
    ):
        self._tok = tokenizer
        self._source = source
        self._hf_config = dict(hf_config or {})
        self._names = {"bos": bos_token, "eos": eos_token, "pad": pad_token, "unk": unk_token}
        for kind, name in self._names.items():
            if name is not None and tokenizer.token_to_id(name) is None:
                raise ValueError(f"{source}: {kind} token {name!r} is not in the vocabulary")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> HFTokenizer:
        """A tokenizer.json; special-token names come from tokenizer_config.json or
        special_tokens_map.json beside it, else from common spellings found in the vocabulary."""
        path = paths.path(path)
        try:  # from the text, not the file name: tokenizers reads local files only
            tok = tokenizers.Tokenizer.from_str(path.read_text(encoding="utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path}: not a tokenizers tokenizer.json ({e})") from e
        config = _read_json(path.parent / CONFIG_FILE)
        if (path.parent / CHAT_TEMPLATE_FILE).is_file():  # transformers 5 prefers it to the config's key
            config["chat_template"] = (path.parent / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        special_map = _read_json(path.parent / SPECIAL_MAP_FILE)
        names = {}
        for key, guesses in _GUESSES.items():
            if key in config or key in special_map:
                name = _token_content(config.get(key, special_map.get(key)))
                if name is not None and tok.token_to_id(name) is None:
                    log.warning("%s: %s %r is not in the vocabulary; ignoring it", path, key, name)
                    name = None
                names[key] = name
            else:
                names[key] = next((g for g in guesses if tok.token_to_id(g) is not None), None)
        model_unk = getattr(tok.model, "unk_token", None)  # BPE, WordPiece and WordLevel name theirs
        if names["unk_token"] is None and model_unk is not None and tok.token_to_id(model_unk) is not None:
            names["unk_token"] = model_unk
        return cls(tok, **names, hf_config=config, source=str(path))

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tok

    @property
    def chat_template(self) -> str | None:
        template = self._hf_config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            if "default" not in named:
                raise ValueError(f"{self._source}: the chat templates are named {sorted(named)}, "
                                 "none 'default'")
            template = named["default"]
        if template is not None and not isinstance(template, str):
            raise ValueError(f"{self._source}: chat_template is a {type(template).__name__}, not Jinja text")
        return template

    @property
    def vocab_size(self) -> int:
        # Added tokens may leave gaps; the embedding needs max id + 1 rows.
        added = self._tok.get_added_tokens_decoder()
        return max(self._tok.get_vocab_size(with_added_tokens=False), max(added, default=-1) + 1)

    @property
    def bos_id(self) -> int | None:
        return self._id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._id("eos")

    @property
    def pad_id(self) -> int | None:
        return self._id("pad")

    @property
    def unk_id(self) -> int | None:
        return self._id("unk")

    def _id(self, kind: str) -> int | None:
        name = self._names[kind]
        return None if name is None else self._tok.token_to_id(name)

    def _encode(self, text: str) -> list[int]:
        # bos/eos are ours to add (Tokenizer.encode), not the tokenizer.json's post-processor's.
        return self._tok.encode(text, add_special_tokens=False).ids

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        token = self._tok.id_to_token(token_id)
        if token is None:
            raise ValueError(f"{self!r} has no token {token_id}")
        return token

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        tokens = _check_special(tokens)
        self._tok.add_special_tokens(
            [tokenizers.AddedToken(t, special=True, normalized=False) for t in tokens]
        )
        return [self._tok.token_to_id(t) for t in tokens]

    def _markers(self) -> list[str]:
        named = set(self._names.values())
        added = self._tok.get_added_tokens_decoder()
        return [t.content for _, t in sorted(added.items()) if t.special and t.content not in named]

    def save_pretrained(self, out_dir: str | os.PathLike, chat_template: str | None = None) -> epath.Path:
        out = paths.path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / JSON_FILE).write_text(self._tok.to_str(pretty=True), encoding="utf-8")  # what save() writes
        special = {f"{k}_token": v for k, v in self._names.items()}
        config = {k: v for k, v in self._hf_config.items() if k not in _STALE_CONFIG_KEYS}
        # transformers' generic backend loads tokenizer.json as it is. A model class such as
        # LlamaTokenizer would rebuild its pipeline from the vocabulary and could disagree with it.
        markers = self._markers()
        config.update(tokenizer_class="PreTrainedTokenizerFast", **special, extra_special_tokens=markers)
        config.setdefault("clean_up_tokenization_spaces", False)
        _write_configs(out, config, special, markers, chat_template)
        return out

    def __repr__(self) -> str:
        return f"HFTokenizer({self._source}, vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------- helpers


def _write_configs(out: epath.Path, config: dict, special: dict, markers: list[str],
                   chat_template: str | None = None) -> None:
    if chat_template is not None:
        # transformers 5 reads chat_template.jinja first, then the config's key (all 4.x reads).
        config = {**config, "chat_template": chat_template}
        (out / CHAT_TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")
    _write_json(out / CONFIG_FILE, config)
    # transformers 5 reads tokenizer_config.json only; 4.x also reads this one.
    _write_json(out / SPECIAL_MAP_FILE, {**special, "additional_special_tokens": markers})


def _write_json(path: epath.Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: epath.Path) -> dict:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return obj


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string, {"content": ...}, or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value
