"""Multi-turn prompts: an HH-RLHF transcript rendered turn by turn, the same way for every objective.

HH-RLHF records (`builders.hh_rlhf`) keep the dialogue so far as their prompt, verbatim:
``"\\n\\nHuman: h1\\n\\nAssistant: a1\\n\\nHuman: h2\\n\\nAssistant:"``. `turns` reads that back
into ``([(h1, a1)], "h2")``. `render` puts a prompt into an objective's template (``str.format``
with ``{prompt}``): a plain prompt as ``template.format(prompt=...)``; a transcript turn by turn,
one user marker per human turn, so a template that adds its own "User:" never doubles the role
markers. With a template whose lead starts a new line (jaxalign's own formats)::

    "{prompt}\\n"                       -> "User: h1\\nAssistant: a1\\nUser: h2\\nAssistant: "
    "User: {prompt}\\nA helpful answer: " -> "User: h1\\nAssistant: a1\\nUser: h2\\nA helpful answer: "

Earlier replies are context under the neutral "Assistant:" role; only the final reply is the
record's (and a CoH marker says what kind it is). A template whose lead stays on the prompt's line
(the CoH reference's ``"User: {prompt} A helpful answer:"``) repeats itself per turn instead, as
the reference's serving code does. Training, evaluation and generation all render through here,
so a model is prompted as it was trained (docs/data.md#dialogues).

`chat_template` writes the same rendering as a Hugging Face chat template (Jinja), which the HF
export puts beside the tokenizer, so ``tokenizer.apply_chat_template(messages,
add_generation_prompt=True)`` gives the ids jaxalign generates from.

The other direction: a model that ships a chat template is fine-tuned and prompted through it
(``config.data.prompt_template = "chat_template"``). `chat_prompt_template` makes a prompt template
that carries the model's Jinja source and special tokens; `render` then renders the prompt's
turns as messages (``user``, ``assistant``, ..., ``user``) through it, as transformers'
``apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`` does, and the reply
follows. The template's leading BOS token is left out of the text, since jaxalign adds the BOS id
when it encodes a prompt (docs/data.md#a-models-own-chat-template).
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
from typing import Any

log = logging.getLogger(__name__)
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
USER_ROLE = "User: "  # the role markers of a rendered transcript, when the template has none
ASSISTANT_ROLE = "Assistant: "

Turn = tuple[str, str]


def turns(prompt: str) -> tuple[list[Turn], str] | None:
    """(earlier (human, assistant) turns, the last human turn) of an HH-style transcript that ends
    before a reply; None for any other text (a plain prompt). Texts are stripped."""
    if not (prompt.startswith(HUMAN) and prompt.endswith(ASSISTANT)):
        return None
    pieces = prompt[: -len(ASSISTANT)].split(HUMAN)[1:]
    history, pending = [], ""
    for piece in pieces[:-1]:
        human, found, assistant = piece.partition(ASSISTANT)
        if not found:  # two human turns in a row: one turn of two paragraphs
            pending += piece + "\n"
            continue
        history.append(((pending + human).strip(), assistant.replace(ASSISTANT, "\n").strip()))
        pending = ""
    last = (pending + pieces[-1]).replace(ASSISTANT, "\n")  # a stray empty reply: keep the words
    return history, last.strip()


def split_template(template: str) -> tuple[str, str]:
    """A ``str.format`` template with one ``{prompt}`` -> (the text before it, the text after it)."""
    if is_chat(template):
        raise ValueError("a model's own chat template has no text before and after a prompt; "
                         "render prompts with dialogue.render")
    parts = template.split("{prompt}")
    if len(parts) != 2:
        raise ValueError(f"prompt template {template!r} must hold '{{prompt}}' exactly once")
    before, after = (part.format() for part in parts)  # unescapes {{ and }}
    return before, after


def messages(prompt: str) -> list[dict[str, str]]:
    """`prompt` as chat messages: an HH transcript's turns (`turns`), or one user message."""
    parsed = turns(prompt)
    if parsed is None:
        return [{"role": "user", "content": prompt}]
    history, last = parsed
    out = []
    for human, assistant in history:
        out += [{"role": "user", "content": human}, {"role": "assistant", "content": assistant}]
    return [*out, {"role": "user", "content": last}]


def render(template: str, prompt: str) -> str:
    """The text an objective presents `prompt` as (module docstring); the reply follows it."""
    if is_chat(template):
        return _render_chat(template, messages(prompt))
    parsed = turns(prompt)
    if parsed is None:
        return template.format(prompt=prompt)
    history, last = parsed
    before, after = split_template(template)
    if not after.startswith("\n"):  # the lead stays on the line: the template per turn
        return "".join(f"{before}{h}{after} {a} " for h, a in history) + before + last + after
    user = before if before.strip() else USER_ROLE
    lead = after if after.strip() else after + ASSISTANT_ROLE
    return "".join(f"{user}{h}\n{ASSISTANT_ROLE}{a}\n" for h, a in history) + user + last + lead


CHAT_TEMPLATE = "chat_template"  # config.data.prompt_template: the model's own chat template
CHAT_PREFIX = "jinja-chat-template:"  # a prompt template that holds a chat template (`chat_prompt_template`)
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")  # what apply_chat_template passes


def is_chat(template: str) -> bool:
    """Whether a prompt template is a model's chat template (`chat_prompt_template`)."""
    return template.startswith(CHAT_PREFIX)


def chat_prompt_template(source: str, special_tokens: dict[str, str | None]) -> str:
    """A prompt template that renders prompts through the Jinja chat template `source`, given the
    tokenizer's special tokens by name (`SPECIAL_TOKENS`; None for a tokenizer without one). It is a
    string, so it is saved and read back wherever a prompt template is (jaxalign_model.json)."""
    unknown = sorted(set(special_tokens) - set(SPECIAL_TOKENS))
    if unknown:
        raise ValueError(f"chat_prompt_template: unknown special token name(s) {unknown}; known: "
                         f"{list(SPECIAL_TOKENS)}")
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"chat_prompt_template: the chat template must be Jinja text, got {source!r}")
    template = CHAT_PREFIX + json.dumps({"chat_template": source, **special_tokens}, ensure_ascii=False)
    text = _render_chat(template, [{"role": "user", "content": "Hello"}], keep_bos=True)  # fails now, if so
    bos = special_tokens.get("bos_token")
    if bos and not text.startswith(bos):
        log.warning("the chat template does not start with the BOS token %r, which jaxalign puts before "
                    "every prompt; transformers' apply_chat_template(tokenize=True) gives no BOS there", bos)
    return template


@functools.lru_cache(maxsize=8)
def _chat_spec(template: str) -> tuple[Any, dict[str, str]]:
    """(the compiled Jinja template, the special tokens it is rendered with) of a chat prompt template."""
    spec = json.loads(template[len(CHAT_PREFIX):])
    source = spec.pop("chat_template")
    try:
        compiled = _jinja_environment().from_string(source)
    except Exception as e:  # noqa: BLE001 (jinja2's TemplateSyntaxError and the sandbox's errors)
        raise ValueError(f"the model's chat template is not valid Jinja: {type(e).__name__}: {e}") from None
    return compiled, {k: v for k, v in spec.items() if v is not None}


def _render_chat(template: str, chat: list[dict[str, str]], keep_bos: bool = False) -> str:
    """`chat` through the chat template, with the generation prompt, as transformers'
    ``apply_chat_template(chat, add_generation_prompt=True, tokenize=False)``, less a leading BOS."""
    compiled, special = _chat_spec(template)
    try:
        text = compiled.render(messages=chat, tools=None, documents=None, add_generation_prompt=True,
                               **special)
    except Exception as e:  # noqa: BLE001 (raise_exception's TemplateError, undefined names, ...)
        raise ValueError(f"the model's chat template failed on {len(chat)} message(s) "
                         f"({type(e).__name__}: {e})") from None
    bos = special.get("bos_token")
    return text[len(bos):] if bos and text.startswith(bos) and not keep_bos else text


@functools.cache
def _jinja_environment() -> Any:
    """Jinja as transformers renders chat templates (``chat_template_utils``): a sandbox, trimmed
    blocks, loop controls, its ``tojson`` (no HTML escaping) and the globals ``raise_exception``
    and ``strftime_now``. (Its ``{% generation %}`` tag, which only marks assistant tokens for a
    mask, is not supported.)"""
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("config.data.prompt_template='chat_template' renders the model's chat template "
                          "with jinja2: pip install 'jinja2>=3.1.6'") from None

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env


def _jinja(text: str) -> str:
    """A Jinja string literal of `text`. Jinja reads a literal's backslash escapes as Python's
    ``unicode-escape`` does (after escaping non-ASCII characters itself), so JSON's escapes of
    quotes, backslashes and control characters read back exactly; other characters stay as they are."""
    return json.dumps(text, ensure_ascii=False)


def chat_template(prompt_template: str, bos_token: str | None = None, eos_token: str | None = None) -> str:
    """A Hugging Face chat template (Jinja, for ``tokenizer.apply_chat_template``) that renders a
    conversation as `render` renders the equivalent prompt, `bos_token` first: pass the tokenizer's
    BOS when jaxalign encodes with one (``add_bos=tok.bos_id is not None``), and the ids of
    ``apply_chat_template(messages, add_generation_prompt=True)`` are the ids jaxalign generates from.

    Messages alternate ``user``, ``assistant``, ``user``, ...; the prompt is every message up to the
    last user message. A single user message is a plain prompt: ``prompt_template.format(prompt=
    content)``, the content as it is (also one that looks like an HH transcript, which `render`
    would split into turns). Earlier turns make a transcript, rendered as `render` renders
    ``"\\n\\nHuman: h1\\n\\nAssistant: a1\\n\\nHuman: h2\\n\\nAssistant:"`` (texts stripped).
    ``add_generation_prompt=True`` ends the text with the lead (what follows ``{prompt}``, after
    which jaxalign generates); without it the text ends with the last user message. A final
    assistant message (a whole exchange) follows the lead as it is, then `eos_token`: the text
    jaxalign trains on, though jaxalign encodes the reply apart from the prompt, so the ids
    may differ where the two meet.

    jaxalign models have no system prompt. A system message raises an error (rather than being
    dropped or put into the first user message unasked), as do other roles, roles out of turn and
    non-text content.

    A model trained through its own chat template (`is_chat`) gets that template back as it was.
    """
    if is_chat(prompt_template):
        return json.loads(prompt_template[len(CHAT_PREFIX):])["chat_template"]
    before, after = split_template(prompt_template)
    if after.startswith("\n"):  # the transcript's own role markers, as `render`
        user = before if before.strip() else USER_ROLE
        lead = after if after.strip() else after + ASSISTANT_ROLE
        reply_open, reply_close = "\n" + ASSISTANT_ROLE, "\n"
    else:  # the lead stays on the line: the template per turn
        user, lead, reply_open, reply_close = before, after, after + " ", " "
    j = _jinja
    return "".join([
        "{%- for message in messages -%}",
        "{%- if message['role'] == 'system' -%}",
        "{{ raise_exception('jaxalign models have no system prompt: "
        "put its text in the first user message') }}",
        "{%- elif message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}",
        "{{ raise_exception('jaxalign renders user and assistant messages in turn, "
        "starting with user; message ' ~ loop.index0 ~ ' is ' ~ message['role']) }}",
        "{%- elif message['content'] is not string -%}",
        "{{ raise_exception('jaxalign renders text messages only') }}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- set reply = messages[-1]['role'] == 'assistant' -%}",
        "{%- set ask = messages[:-1] if reply else messages -%}",
        f"{{{{- {j(bos_token or '')} -}}}}",
        "{%- if ask | length == 1 -%}",  # a plain prompt
        f"{{{{- {j(before)} + ask[0]['content'] -}}}}",
        f"{{%- set lead = {j(after)} -%}}",
        "{%- else -%}",  # a transcript, turn by turn
        "{%- for message in ask -%}",
        "{%- if message['role'] == 'assistant' -%}",
        f"{{{{- {j(reply_open)} + message['content'] | trim + {j(reply_close)} -}}}}",
        "{%- else -%}",
        f"{{{{- {j(user)} + message['content'] | trim -}}}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        f"{{%- set lead = {j(lead)} -%}}",
        "{%- endif -%}",
        "{%- if reply -%}",
        f"{{{{- lead + messages[-1]['content'] + {j(eos_token or '')} -}}}}",
        "{%- elif add_generation_prompt -%}",
        "{{- lead -}}",
        "{%- endif -%}",
    ])
