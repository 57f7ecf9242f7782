"""Fine-tuning through an imported model's own chat template (config.data.prompt_template =
"chat_template"): SFT and DPO prompts, multi-turn ones included, are token for token transformers'
``apply_chat_template(messages, add_generation_prompt=True)`` with the reply after it; a run trains
through it, saves it as its prompt template and generates with it; CoH is refused."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import tokenizers
import transformers

from jaxalign import api, models
from jaxalign import mesh as mesh_lib
from jaxalign.data import dialogue, examples, sources
from jaxalign.data.tokenizer import CHAT_TEMPLATE_FILE, HFTokenizer, Tokenizer, demo_tokenizer
from jaxalign.eval import report as report_lib
from jaxalign.objectives import registry
from jaxalign.train import loop
from jaxalign.train.defaults import default_train_config

# Qwen2.5's template without its tool branches (a default system prompt, no BOS).
QWEN = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or \
(message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
# Llama 3's template (the BOS token first, trimmed contents).
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
FAMILIES = {  # template, special tokens, bos, eos, whether the template ships as chat_template.jinja
    "qwen": (QWEN, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", False),
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|eot_id|>", True),
}
TEXTS = ["Name a colour. Blue, or red. What is two plus two? Four. How are you today? Fine, thanks.",
         "You are a helpful assistant. system user assistant Hello! Tell me more about the sea."]
TRANSCRIPT = ("\n\nHuman: Name a colour.\n\nAssistant: Blue, or red.\n\nHuman: And another one?"
              "\n\nAssistant: Green.\n\nHuman: What is two plus two?\n\nAssistant:")
MESSAGES = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, or red."},
            {"role": "user", "content": "And another one?"}, {"role": "assistant", "content": "Green."},
            {"role": "user", "content": "What is two plus two?"}]
RECORDS = [  # (prompt, its messages)
    (TRANSCRIPT, MESSAGES),
    ("How are you today?", [{"role": "user", "content": "How are you today?"}]),
]


def _hf_dir(path, family):
    """A Hugging Face tokenizer directory of a small byte-level BPE with the family's special tokens
    and chat template (in tokenizer_config.json, or in chat_template.jinja as transformers 5 saves it)."""
    template, special, bos, eos, as_file = FAMILIES[family]
    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TEXTS, trainer)
    tok = HFTokenizer(backend, bos, eos, hf_config={} if as_file else {"chat_template": template})
    tok.save_pretrained(path)
    if as_file:
        (path / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_are_apply_chat_template_token_for_token(tmp_path, family):
    path = _hf_dir(tmp_path / "tok", family)
    tok = Tokenizer.load(path)
    sources.use_chat_template(tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    reply, rejected = "Four.", "Five, I think."
    for prompt, messages in RECORDS:
        hf_text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        hf_ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
        bos = FAMILIES[family][2] or ""
        assert hf_text.startswith(bos) and dialogue.render(tok.prompt_template, prompt) == hf_text[len(bos):]
        # SFT: prompt ids (jaxalign adds the BOS id itself) + reply + EOS, the loss on the reply.
        example = examples.prompted_example(tok, prompt, reply)
        reply_ids = hf_tok.encode(reply, add_special_tokens=False)
        assert example["tokens"].tolist() == hf_ids + reply_ids + [hf_tok.eos_token_id]
        assert example["weights"].tolist() == [0.0] * len(hf_ids) + [1.0] * (len(reply_ids) + 1)
        # DPO's pieces: the same prompt ids.
        record = {"prompt": prompt, "chosen": reply, "rejected": rejected}
        assert examples.encode_pair(record, tok) == (hf_ids, reply_ids,
                                                     hf_tok.encode(rejected, add_special_tokens=False))
    # The objective prompts generation the same way, and an HF export hands the template back as it was.
    objective = registry.make(registry.default_config("dpo"), tok)
    assert objective.prompt({"prompt": TRANSCRIPT}) == dialogue.render(tok.prompt_template, TRANSCRIPT)
    assert dialogue.chat_template(objective.prompt_template) == FAMILIES[family][0]


def test_sft_trains_saves_and_generates_through_the_chat_template(tmp_path, devices):
    tok_dir = _hf_dir(tmp_path / "tok", "qwen")
    tok = Tokenizer.load(tok_dir)
    cfg = models.get_preset("tiny", vocab_size=tok.vocab_size, bos_token_id=None, eos_token_id=tok.eos_id)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32) * 0.02, models.param_shapes(cfg))
    model_dir = api.LM(cfg, params, mesh_lib.make_mesh("dp:1,fsdp:-1,tp:1"), tok).save_hf(tmp_path / "hf")
    assert Tokenizer.load(model_dir).chat_template == QWEN  # the HF directory keeps the template
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": "No."}) + "\n"
                            for p, c in [(TRANSCRIPT, "Four."), ("How are you today?", "Fine, thanks.")] * 8))
    config = default_train_config()
    config.update(total_steps=3, batch_size=2, seq_len=160, log_every=1, checkpoint_every=3, num_samples=0,
                  init_from=str(model_dir))
    config.optimizer.update(schedule="constant", warmup_steps=0)
    config.model = {"preset": "tiny", "bos_token_id": None, "eos_token_id": tok.eos_id}
    config.data.update(task="", jsonl=str(data), num_eval=2, prompt_template="chat_template")
    summary = loop.train(config, tmp_path / "run")
    assert summary["status"] == "done" and summary["step"] == 3

    lm = api.load(tmp_path / "run")  # prompted as it was trained
    assert dialogue.is_chat(lm.prompt_template)
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    hf_text = hf_tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert dialogue.render(lm.prompt_template, TRANSCRIPT) == hf_text
    assert len(lm.generate([TRANSCRIPT], max_new_tokens=2)) == 1
    assert Tokenizer.load(tmp_path / "run" / "tokenizer").chat_template == QWEN  # a resume finds it again
    # jaxalign eval scores and generates through the same template.
    report = report_lib.evaluate(config, tmp_path / "run", max_new_tokens=2)
    assert dialogue.render(report["prompt_template"], TRANSCRIPT) == hf_text


def test_coh_with_a_chat_template_is_refused_before_anything_is_written(tmp_path):
    tok_dir = _hf_dir(tmp_path / "tok", "qwen")
    tok = Tokenizer.load(tok_dir)
    sources.use_chat_template(tok)
    with pytest.raises(ValueError, match=r"objective 'coh' cannot use: it puts its own markers"):
        registry.make(registry.default_config("coh"), tok)
    config = default_train_config()
    config.objective = registry.default_config("edit_chain")
    config.data.update(tokenizer=str(tok_dir), prompt_template="chat_template")
    with pytest.raises(ValueError, match=r"objective 'edit_chain' cannot use"):
        loop.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_tokenizer_without_a_chat_template_and_bad_values_are_named():
    with pytest.raises(ValueError, match=r"data.prompt_template='chat_template': .* has no chat template"):
        sources.use_chat_template(demo_tokenizer())
    data = sources.default_data_config()
    data.prompt_template = "chatml"
    with pytest.raises(ValueError, match=r"config.data.prompt_template='chatml'; choose"):
        sources.check(data)
    data.prompt_template = "chat_template"
    with pytest.raises(ValueError, match=r"set init_from \(or data.tokenizer\)"):
        sources.check(data)
