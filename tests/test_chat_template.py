"""The chat template of an HF export: transformers' `apply_chat_template(..., add_generation_prompt=True)`
gives token for token the ids jaxalign generates from (`dialogue.render` + encode with BOS), for a
plain prompt and for a dialogue (against the equivalent HH transcript), through `LM.save_hf` and
`jaxalign export`."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import tokenizers
import transformers

from jaxalign import api, export, models
from jaxalign import mesh as mesh_lib
from jaxalign.data import dialogue
from jaxalign.data.tokenizer import CHAT_TEMPLATE_FILE, CONFIG_FILE, HFTokenizer, train_sentencepiece

TEMPLATES = {  # SFT (examples.PROMPT_TEMPLATE), CoH, CoH with the reference's format
    "sft": "{prompt}\n",
    "coh": "User: {prompt}\nA helpful answer: ",
    "coh_official": "User: {prompt} A helpful answer:",
}
ONE_TURN = [{"role": "user", "content": "What is two plus two?"}]
THREE_TURNS = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue, or red."},
    {"role": "user", "content": "What is two plus two?"},
]
TRANSCRIPT = ("\n\nHuman: Name a colour.\n\nAssistant: Blue, or red."
              "\n\nHuman: What is two plus two?\n\nAssistant:")


@pytest.fixture(scope="module")
def tiny(devices):
    # Byte fallback (as trained runs have it, so transformers builds a LlamaTokenizer): newlines,
    # which the demo tokenizer never saw, get ids of their own, not <unk>.
    tok = train_sentencepiece(["Name a colour. Blue, or red. What is two plus two? Four.",
                               "User: Human: Assistant: A helpful answer:"], vocab_size=300)
    cfg = models.get_preset("tiny", vocab_size=tok.vocab_size)
    rng = np.random.default_rng(0)  # host arrays: nothing to compile
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32) * 0.02, models.param_shapes(cfg))
    return cfg, params, mesh_lib.make_mesh("dp:1,fsdp:-1,tp:1"), tok


def _chat_ids(tokenizer, messages):
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)


@pytest.mark.parametrize("name", TEMPLATES)
def test_exported_chat_template_prompts_as_jaxalign(tiny, tmp_path, name):
    cfg, params, mesh, tok = tiny
    template = TEMPLATES[name]
    lm = api.LM(cfg, params, mesh, tok, prompt_template=template)
    lm.save(tmp_path / "model")  # jaxalign export reads the template from here (or a workdir)
    outs = [lm.save_hf(tmp_path / "save_hf"), export.export(tmp_path / "model", tmp_path / "export")]
    bos = tok.bos_id is not None  # as jaxalign generates
    ours = {"one": tok.encode(dialogue.render(template, ONE_TURN[0]["content"]), add_bos=bos),
            "three": tok.encode(dialogue.render(template, TRANSCRIPT), add_bos=bos)}
    assert tok.unk_id not in ours["one"] + ours["three"]
    for out in outs:
        config = json.loads((out / CONFIG_FILE).read_text())
        assert config["chat_template"] == (out / CHAT_TEMPLATE_FILE).read_text()
        hf_tok = transformers.AutoTokenizer.from_pretrained(out)
        assert type(hf_tok).__name__ == "LlamaTokenizer"
        assert _chat_ids(hf_tok, ONE_TURN) == ours["one"]
        assert _chat_ids(hf_tok, THREE_TURNS) == ours["three"]
    # Without a generation prompt the text stops after the user's words; a final reply follows
    # the lead and ends with EOS, as jaxalign trains on it.
    prompt = dialogue.render(template, TRANSCRIPT)
    reply = {"role": "assistant", "content": "Four."}
    assert hf_tok.apply_chat_template(THREE_TURNS + [reply], tokenize=False) == f"<s>{prompt}Four.</s>"
    last = THREE_TURNS[-1]["content"]
    assert hf_tok.apply_chat_template(THREE_TURNS, tokenize=False) == "<s>" + prompt.partition(last)[0] + last
    with pytest.raises(Exception, match="no system prompt"):
        hf_tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *ONE_TURN], tokenize=False)
    with pytest.raises(Exception, match="in turn"):
        hf_tok.apply_chat_template(ONE_TURN + ONE_TURN, tokenize=False)


def test_tokenizer_json_template_replaces_the_loaded_one(tmp_path):
    """An HFTokenizer (tokenizer.json) names its BOS by token, and an export's template replaces
    the one its tokenizer_config.json came with."""
    words = "<s> </s> <unk> User : Human Assistant What is two plus ? Name a colour . Blue , or red".split()
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, "<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<s>", "</s>"])
    tok = HFTokenizer(backend, "<s>", "</s>", unk_token="<unk>", hf_config={"chat_template": "{{ 'stale' }}"})
    template = TEMPLATES["coh"]
    out = tok.save_pretrained(tmp_path, chat_template=dialogue.chat_template(template, tok.bos_token))
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert _chat_ids(hf_tok, THREE_TURNS) == tok.encode(dialogue.render(template, TRANSCRIPT), add_bos=True)
    assert "stale" not in (out / CONFIG_FILE).read_text()
    assert dialogue.chat_template(template) != dialogue.chat_template(template, tok.bos_token)  # no BOS


def test_a_plain_lm_keeps_no_chat_template_of_ours(tiny, tmp_path):
    """A model jaxalign did not train ("{prompt}", e.g. an imported chat model) gets no template of
    ours: its tokenizer's own, if it came with one, is kept."""
    cfg, params, mesh, tok = tiny
    out = api.LM(cfg, params, mesh, tok).save_hf(tmp_path / "plain")
    assert "chat_template" not in json.loads((out / CONFIG_FILE).read_text())
    assert not (out / CHAT_TEMPLATE_FILE).exists()
