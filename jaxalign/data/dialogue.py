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
"""

from __future__ import annotations

import json

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
    parts = template.split("{prompt}")
    if len(parts) != 2:
        raise ValueError(f"prompt template {template!r} must hold '{{prompt}}' exactly once")
    before, after = (part.format() for part in parts)  # unescapes {{ and }}
    return before, after


def render(template: str, prompt: str) -> str:
    """The text an objective presents `prompt` as (module docstring); the reply follows it."""
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
    """
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
