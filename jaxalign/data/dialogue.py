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
"""

from __future__ import annotations

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
