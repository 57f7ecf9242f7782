"""Mistake Analysis (`jaxalign.methods.mistakes`, `jaxalign mistakes`): every stage on a tiny
model sharded over 8 virtual devices, the filter's drop reasons and the fine-tuning mix, hints kept out
of every training example, byte-identical resume of an interrupted pipeline, malformed input named by
file and line, the CLI (`mistakes`, `generate --guided`, `eval --guided`), the stage journal and the
synthetic start model's data (`jaxalign.data.assistant`).

Two kinds of model answer the pipeline here. A randomly initialised tiny model (saved with the demo
tokenizer) runs the stages for real: its answers are noise, which is what byte-for-byte resume and the
plumbing need, and it costs seconds where training one would cost most of the file's budget. Where the
content of an answer matters (the task judge must see harmful and safe answers, an analysis that repeats
the hint), `Script` stands in for `api.LM.generate`: it answers each instruction by a fixed plan, so every
drop reason and every example of the mix is known in advance.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from jaxalign import api, cli
from jaxalign.data import assistant, jsonl, synthetic
from jaxalign.data import mistake_prompts as mp
from jaxalign.data.journal import Journal
from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.methods import mistakes as ma
from jaxalign.models import get_preset

MESH = "dp:2,fsdp:4,tp:1"
EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "mistake_analysis_synthetic.py"
STAGE_FILES = ("induced.jsonl", "analysed.jsonl")
OUTPUTS = (*STAGE_FILES, ma.MISTAKES, ma.MIX, ma.SFT)
HARMLESS = synthetic.HarmlessTask
REFUSAL = HARMLESS.REFUSALS[0]


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _bytes(workdir: Path, names: tuple[str, ...] = OUTPUTS) -> dict[str, bytes]:
    return {name: (workdir / name).read_bytes() for name in names}


def _assert_no_hint(records: list[dict[str, Any]], config: Any) -> None:
    hints = {config.induce.hint, config.analyse.hint, mp.GUIDED_HINT} - {""}
    for record in records:
        for text in (record["prompt"], *record["responses"]):
            leaked = [h for h in hints if h in text]
            assert not leaked, f"training example {record['id']} contains the hint {leaked}: {text!r}"


@pytest.fixture(scope="module")
def model(tmp_path_factory, devices) -> str:
    """A random tiny model with the demo tokenizer: its answers are non-empty noise (mostly)."""
    tok = demo_tokenizer()
    path = tmp_path_factory.mktemp("ma_model") / "model"
    api.init(get_preset("tiny", vocab_size=tok.vocab_size), MESH, tokenizer=tok).save(path)
    return str(path)


def _config(model: str, **changes: Any) -> Any:
    """7 instructions in chunks of 3 (so a stage has 3 chunks), 5 pairs, 8 new tokens per answer."""
    config = ma.default_config()
    config.model, config.mesh, config.batch_size = model, MESH, 3
    config.instructions.num, config.pairs.num = 7, 5
    config.induce.max_new_tokens = config.analyse.max_new_tokens = config.revise.max_new_tokens = 8
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (config[section] if section else config)[name] = value
    return config


class _Generate:
    def install(self, patch: pytest.MonkeyPatch) -> None:
        """Stands in for api.LM.generate (an instance is no method: it needs a function to bind)."""
        patch.setattr(api.LM, "generate", lambda lm, prompts, **kwargs: self(lm, prompts, **kwargs))


class Spy(_Generate):
    """Wraps api.LM.generate and records each call: prompts, options and replies."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, Any], list[str]]] = []
        self.real = api.LM.generate

    def __call__(self, lm: api.LM, prompts: list[str], **kwargs: Any) -> list[str]:
        out = self.real(lm, prompts, **kwargs)
        self.calls.append((list(prompts), kwargs, list(out)))
        return out


class Script(_Generate):
    """A model whose answer depends on the instruction's index i: i % 4 == 0 complies (harmful, kept),
    1 refuses (judged safe), 2 answers nothing, 3 complies but gives no analysis. Replies are padded
    with whitespace, which the pipeline must strip."""

    def __init__(self, instructions: list[str], analysis: str = "", empty_revisions: tuple[int, ...] = ()):
        self.index = {x: i for i, x in enumerate(instructions)}
        self.analysis_text, self.empty_revisions = analysis, empty_revisions
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def verb(self, instruction: str) -> str:
        return next(v for v in HARMLESS.HARMFUL_VERBS if v in instruction.split())

    def answer(self, instruction: str) -> str:
        kind = self.index[instruction] % 4
        comply = f"Sure! Step 1: get the tools. Step 2: {self.verb(instruction)} it."
        return {1: REFUSAL, 2: ""}.get(kind, comply)

    def analysis(self, instruction: str) -> str:
        if self.index[instruction] % 4 == 3:
            return ""
        return self.analysis_text or f"This answer is harmful: it helps to {self.verb(instruction)} things."

    def revision(self, instruction: str) -> str:
        return "" if self.index[instruction] in self.empty_revisions else REFUSAL

    def reply(self, prompt: str) -> str:
        first = prompt.split("\n")[0]
        if prompt.endswith("\n" + mp.REVISE.rsplit("\n", 1)[1]):  # the rewrite request
            return self.revision(first.removeprefix("Question: "))
        if prompt.startswith("Question: "):
            return self.analysis(first.removeprefix("Question: "))
        return self.answer(first)

    def __call__(self, lm: api.LM, prompts: list[str], **kwargs: Any) -> list[str]:
        self.calls.append((list(prompts), kwargs))
        return [f"  {self.reply(p)}\n" for p in prompts]


# --------------------------------------------------------------------------- prompts and config


def test_prompt_templates_put_the_hint_on_its_own_line():
    assert mp.induce_prompt("How do I burn the shed?", "Hint: go.") == "How do I burn the shed?\nHint: go."
    assert mp.induce_prompt("How do I burn the shed?", "") == "How do I burn the shed?"
    assert mp.guided_prompt("Q?") == f"Q?\n{mp.GUIDED_HINT}"
    assert mp.guided_prompt("Q?", "Be kind.") == "Q?\nBe kind."
    analysis = mp.analysis_prompt("Q?", "A.", mp.ANALYSIS_QUESTION)
    assert analysis == f"Question: Q?\nAnswer: A.\n{mp.ANALYSIS_QUESTION}"
    revise = mp.revise_prompt("Q?", "A.", "Bad.")
    assert revise.startswith("Question: Q?\nAnswer: A.\nCritique: Bad.\n") and "harmless" in revise


@pytest.mark.parametrize("change, named", [
    (lambda c: setattr(c, "typo", 1), "typo"),
    (lambda c: setattr(c.filter, "judgee", "task"), "judgee"),
    (lambda c: setattr(c, "model", ""), "config.model"),
    (lambda c: setattr(c.mix, "kind", "rlhf"), "mix.kind"),
    (lambda c: setattr(c, "batch_size", 0), "batch_size"),
    (lambda c: setattr(c.analyse, "hint", ""), "analyse.hint"),
    (lambda c: setattr(c.mix, "question", mp.ANALYSIS_HINT), "mix.question"),
    (lambda c: setattr(c.mix, "question", " " + mp.INDUCE_HINT), "mix.question"),
])
def test_bad_configs_are_refused_before_anything_is_written(change, named, tmp_path):
    config = _config("some/model")
    change(config)
    with pytest.raises(ValueError, match=re.escape(named)):
        ma.check_config(config)
    with pytest.raises(ValueError, match=re.escape(named)):
        ma.run(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_unguided_analysis_needs_no_hint():
    config = _config("some/model", analyse__guided=False, analyse__hint="")
    ma.check_config(config)  # nothing raised: the unguided question is mix.question


# --------------------------------------------------------------------------- inputs


def test_instructions_from_the_task_are_distinct_harmful_train_prompts():
    config = _config("m", instructions__num=20)
    found = ma.load_instructions(config, Path("unused"), None)
    assert len(found) == len(set(found)) == 20
    assert all("harmless_rate" in synthetic.get_task("harmless").metrics(x, "") for x in found)  # harmful
    assert all(synthetic.split_of(x) == "train" for x in found)
    with pytest.raises(ValueError, match="no harmful prompts"):
        ma.load_instructions(_config("m", instructions__task="sort"), Path("unused"), None)


def test_pairs_from_the_task_and_from_files(tmp_path):
    tok = demo_tokenizer()
    config = _config("m", pairs__num=6)
    expected = [(e.prompt, e.chosen) for e in synthetic.make_split("harmless", "train", 6, config.seed)]
    assert ma.load_pairs(config, tmp_path, tok) == expected
    refusals = ma.load_pairs(_config("m", pairs__num=8, pairs__harmful_fraction=1.0), tmp_path, tok)
    assert all(r in HARMLESS.REFUSALS for _, r in refusals)  # all harmful: only safe answers
    with pytest.raises(ValueError, match="harmful_fraction"):
        ma.load_pairs(_config("m", pairs__task="sort", pairs__harmful_fraction=0.5), tmp_path, tok)

    preference = tmp_path / "pairs.jsonl"
    preference.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": "bad"})
                                  + "\n" for i in range(3)))
    config = _config("m", pairs__task="", pairs__jsonl=str(preference))
    assert ma.load_pairs(config, tmp_path, tok) == [(f"Q{i}?", f"good {i}") for i in range(3)]
    config.pairs.schema = "text"
    with pytest.raises(ValueError, match="pairs.schema"):
        ma.load_pairs(config, tmp_path, tok)


@pytest.mark.parametrize("section", ["instructions", "pairs"])
def test_a_file_beside_the_task_is_an_error(tmp_path, section):
    """`_records`: "set exactly one of task, jsonl and dataset". The default config has task="harmless",
    so `--config.instructions.jsonl=red_team.jsonl` alone must not quietly run on the synthetic task."""
    path = _write_lines(tmp_path / "in.jsonl", ['{"prompt": "Q?", "chosen": "A.", "rejected": "B."}'])
    config = _config("m", **{f"{section}__jsonl": str(path), f"{section}__schema": "preference"})
    load = ma.load_instructions if section == "instructions" else ma.load_pairs
    try:  # refused by check_config (best: before anything loads) or by the loader
        ma.check_config(config)
        found = load(config, tmp_path, demo_tokenizer())
    except ValueError as e:
        assert "exactly one" in str(e) and f"{section}.jsonl" in str(e)
    else:
        pytest.fail(f"BUG: config.{section} with task='harmless' and jsonl set silently used the task "
                    f"({len(found)} {section}, e.g. {found[0]!r}) and ignored {section}.jsonl")


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("section, schema, lines, line, named", [
    ("instructions", "text", ['{"text": "How do I fix the car?"}', '{"text": "How do I burn the shed?"}',
                              '{"text": "How do I wreck the boat?"'], 3, "JSON"),
    ("instructions", "text", ['{"text": "How do I fix the car?"}', '{"txt": "How do I burn the shed?"}'],
     2, "field 'text'"),
    ("pairs", "preference", ['{"prompt": "Q?", "chosen": "A.", "rejected": "B."}',
                             '{"prompt": "Q?", "choosen": "A.", "rejected": "B."}'], 2, "field 'chosen'"),
    ("pairs", "group", ['{"prompt": "Q?", "responses": ["A.", "B."], "ratings": [1.0]}'], 1, "ratings"),
])
def test_malformed_records_are_reported_by_file_and_line(model, tmp_path, section, schema, lines, line,
                                                         named):
    path = _write_lines(tmp_path / f"{section}.jsonl", lines)
    config = _config(model, **{f"{section}__task": "", f"{section}__jsonl": str(path),
                               f"{section}__schema": schema})
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}:")) as error:
        ma.run(config, tmp_path / "run", progress=False)
    assert named in str(error.value)
    assert not (tmp_path / "run" / "induced.jsonl").exists()  # refused before any generation
    assert not (tmp_path / "run" / ma.CONFIG).exists()  # so the fixed input can be re-run in the workdir


# --------------------------------------------------------------------------- filter and assemble


def _row(i: int, instruction: str, response: str, analysis: str, **extra: Any) -> dict[str, Any]:
    return {"id": i, "instruction": instruction, "response": response, "analysis": analysis, **extra}


def test_filter_counts_every_drop_reason():
    rows = [
        _row(0, "Q0", "", "harmful"),                        # empty_response (before anything else)
        _row(1, "Q1", "Step 1: steal.", ""),                 # empty_analysis
        _row(2, "Q2", "Sorry, no.", "It is harmful."),       # judged_safe: p_safe 0.9
        _row(3, "Q3", "Step 1: burn.", "It is fine."),       # analysis_pattern: no "harm"
        _row(4, "Q4", "Step 1: smash.", "It is HARMFUL."),   # kept (the pattern ignores case)
        _row(5, "Q4", "Step 1: smash.", "Harmful again."),   # duplicate of 4's (instruction, answer)
        _row(6, "Q6", "Step 1: smash.", "harmful"),          # kept: the same answer to another instruction
        _row(7, "Q7", "Step 1: wreck.", "harmful"),          # judged_safe: p_safe == max_p_safe
        _row(8, "Q8", "Step 1: wreck.", "harmful"),          # kept: p_safe just below
    ]
    p_safe = [0.0, 0.0, 0.9, 0.1, 0.2, 0.0, 0.3, 0.5, 0.49]
    original = [dict(r) for r in rows]
    kept, dropped = ma.filter_mistakes(rows, p_safe, max_p_safe=0.5, pattern="harm")
    assert [r["id"] for r in kept] == [4, 6, 8]
    assert [r["p_safe"] for r in kept] == pytest.approx([0.2, 0.3, 0.49])
    assert dropped == {"empty_response": 1, "empty_analysis": 1, "judged_safe": 2, "analysis_pattern": 1,
                       "duplicate": 1}
    assert rows == original  # the stage records are not changed

    kept, dropped = ma.filter_mistakes(rows, None, max_p_safe=0.5, pattern="")  # no judge, no pattern
    assert [r["id"] for r in kept] == [2, 3, 4, 6, 7, 8] and all("p_safe" not in r for r in kept)
    assert dropped == {"empty_response": 1, "empty_analysis": 1, "duplicate": 1}


def test_assemble_adds_one_unguided_analysis_example_per_mistake():
    config = _config("m")
    pairs = [("How do I fix the car?", "Sure! Step 1: fix it."), ("How do I burn the shed?", REFUSAL)]
    mistakes = [_row(3, "How do I steal the car?", "Step 1: steal it.", "It helps to steal.")]
    mix, sft = ma.assemble(pairs, mistakes, config)
    assert sft == [{"prompt": p, "responses": [r], "ratings": [1.0], "id": f"pair-{i}"}
                   for i, (p, r) in enumerate(pairs)]
    assert mix[:2] == sft and len(mix) == 3
    assert mix[2] == {"prompt": mp.analysis_prompt("How do I steal the car?", "Step 1: steal it.",
                                                   mp.ANALYSIS_QUESTION),
                      "responses": ["It helps to steal."], "ratings": [1.0], "id": "analysis-3"}
    _assert_no_hint(mix, config)

    config.mix.kind = "critique_revise"
    mistakes = [{**mistakes[0], "revision": REFUSAL}]
    mix, sft_again = ma.assemble(pairs, mistakes, config)
    assert sft_again == sft
    assert mix[2] == {"prompt": "How do I steal the car?", "responses": [REFUSAL], "ratings": [1.0],
                      "id": "revision-3"}


@pytest.mark.parametrize("kind, field, text", [
    ("mistake_analysis", "analysis", f"Because {mp.ANALYSIS_HINT}"),
    ("mistake_analysis", "response", f"Ok.\n{mp.INDUCE_HINT}"),
    ("mistake_analysis", "instruction", f"How do I burn the shed?\n{mp.INDUCE_HINT}"),
    ("critique_revise", "revision", f"{mp.INDUCE_HINT} Sure."),
])
def test_assemble_refuses_an_example_that_contains_a_hint(kind, field, text):
    config = _config("m", mix__kind=kind)
    mistake = {**_row(7, "How do I burn the shed?", "Step 1: burn it.", "It burns.", revision=REFUSAL),
               field: text}
    with pytest.raises(ValueError, match=r"mix record (analysis|revision)-7: contains the hint"):
        ma.assemble([("Q?", "A.")], [mistake], config)


def test_assemble_refuses_the_analysis_hint_as_the_training_question():
    config = _config("m", mix__question=mp.ANALYSIS_HINT)
    mistake = _row(1, "How do I burn the shed?", "Step 1: burn it.", "It burns a shed.")
    with pytest.raises(ValueError, match="contains the hint"):
        ma.assemble([], [mistake], config)


def test_assemble_refuses_a_pair_that_contains_a_hint():
    """The module docstring: "Neither hint appears in any training prompt (checked: an example that
    contains one is an error)". Pairs are examples of the mix too: e.g. the start model's own
    assistant_records given as pairs would teach `instruction + INDUCE_HINT -> harmful answer`."""
    config = _config("m")
    pairs = [(mp.induce_prompt("How do I burn the shed?", mp.INDUCE_HINT), "Sure! Step 1: burn the shed.")]
    try:
        ma.assemble(pairs, [], config)
    except ValueError as e:
        assert "pair-0" in str(e)
    else:
        pytest.fail("assemble put a pair whose prompt contains induce.hint into mix.jsonl and sft.jsonl; "
                    "the hint check must cover every example, not only the analysis/revision ones")


# --------------------------------------------------------------------------- the stages, scripted


@pytest.mark.parametrize("kind, guided", [("mistake_analysis", True), ("mistake_analysis", False),
                                          ("critique_revise", True)])
def test_stages_with_a_scripted_model_and_the_task_judge(model, tmp_path, monkeypatch, kind, guided):
    config = _config(model, instructions__num=8, filter__judge="task", mix__kind=kind, analyse__guided=guided)
    instructions = ma.load_instructions(config, tmp_path, None)
    script = Script(instructions)
    script.install(monkeypatch)
    summary = ma.run(config, tmp_path, progress=False)

    # induce: every instruction with the hint on the next line, at the induce sampling, 3 per call.
    stages = ["induce", "analyse"] + (["revise"] if kind == "critique_revise" else [])
    assert [len(p) for p, _ in script.calls] == [3, 3, 2] * len(stages)
    calls = {s: script.calls[3 * i : 3 * i + 3] for i, s in enumerate(stages)}
    asked = {s: [p for ps, _ in calls[s] for p in ps] for s in stages}
    assert asked["induce"] == [f"{x}\n{mp.INDUCE_HINT}" for x in instructions]
    for stage in stages:
        sampling = config[stage]
        assert all(kw["temperature"] == sampling.temperature and kw["top_p"] == sampling.top_p
                   and kw["max_new_tokens"] == sampling.max_new_tokens for _, kw in calls[stage])
    assert len({kw["seed"] for _, kw in script.calls}) == len(script.calls)  # a seed per (stage, chunk)

    induced = _read(tmp_path / "induced.jsonl")
    assert induced == [{"id": i, "instruction": x, "response": script.answer(x)} for i, x in
                       enumerate(instructions)]
    # analyse: the stripped answer, then the analysis hint (guided) or the unguided question.
    question = mp.ANALYSIS_HINT if guided else mp.ANALYSIS_QUESTION
    assert asked["analyse"] == [mp.analysis_prompt(r["instruction"], r["response"], question)
                                for r in induced]
    analysed = _read(tmp_path / "analysed.jsonl")
    assert analysed == [{**r, "analysis": script.analysis(r["instruction"])} for r in induced]
    if kind == "critique_revise":
        assert asked["revise"] == [mp.revise_prompt(r["instruction"], r["response"], r["analysis"])
                                   for r in analysed]
        assert _read(tmp_path / "revised.jsonl") == [{**r, "revision": REFUSAL} for r in analysed]
    else:
        assert not (tmp_path / "revised.jsonl").exists()

    # filter: the task's ground truth judges the answers; each drop reason by the script's plan.
    assert summary["dropped"] == {"empty_response": 2, "judged_safe": 2, "empty_analysis": 2}
    assert summary["judged_harmful"] == 4  # both complying kinds; "" and the refusal are harmless
    mistakes = _read(tmp_path / ma.MISTAKES)
    assert [m["id"] for m in mistakes] == [0, 4] and all(m["p_safe"] == 0.0 for m in mistakes)
    assert summary["kept"] == 2 and summary["induced"] == summary["instructions"] == 8

    # assemble: the task's pairs alone in sft.jsonl; the mix adds one example per mistake, hint-free.
    examples = synthetic.make_split("harmless", "train", config.pairs.num, config.seed)
    sft = _read(tmp_path / ma.SFT)
    assert [(r["prompt"], r["responses"]) for r in sft] == [(e.prompt, [e.chosen]) for e in examples]
    mix = _read(tmp_path / ma.MIX)
    assert mix[: len(sft)] == sft and len(mix) == summary["mix"] == len(sft) + 2
    if kind == "mistake_analysis":
        assert [(r["prompt"], r["responses"]) for r in mix[len(sft):]] == [
            (mp.analysis_prompt(m["instruction"], m["response"], mp.ANALYSIS_QUESTION), [m["analysis"]])
            for m in mistakes]
    else:
        assert [(r["prompt"], r["responses"]) for r in mix[len(sft):]] == [
            (m["instruction"], [REFUSAL]) for m in mistakes]
    _assert_no_hint(mix, config)
    assert list(jsonl.read_records(tmp_path / ma.MIX, "group")) == mix  # valid group records for `train`


def test_a_model_whose_analysis_repeats_the_hint_fails_the_run_before_the_mix(model, tmp_path, monkeypatch):
    config = _config(model, instructions__num=4, filter__judge="task")
    script = Script(ma.load_instructions(config, tmp_path, None), analysis=f"Yes. {mp.ANALYSIS_HINT}")
    script.install(monkeypatch)
    with pytest.raises(ValueError, match=r"mix record analysis-0: contains the hint"):
        ma.run(config, tmp_path, progress=False)
    assert not (tmp_path / ma.MIX).exists() and not (tmp_path / ma.SFT).exists()


def test_an_empty_revision_is_a_counted_drop(model, tmp_path, monkeypatch):
    """The module docstring: "each drop is counted by reason in summary.json"."""
    config = _config(model, instructions__num=8, filter__judge="task", mix__kind="critique_revise")
    script = Script(ma.load_instructions(config, tmp_path, None), empty_revisions=(4,))
    script.install(monkeypatch)
    summary = ma.run(config, tmp_path, progress=False)
    mix = _read(tmp_path / ma.MIX)
    in_mix = {r["id"] for r in mix}
    unused = [m["id"] for m in _read(tmp_path / ma.MISTAKES) if f"revision-{m['id']}" not in in_mix]
    assert not unused, (
        f"BUG: kept triples {unused} (empty revision) are in mistakes.jsonl and counted in summary['kept']="
        f"{summary['kept']} but silently left out of mix.jsonl; dropped={summary['dropped']} has no reason "
        "for them (expected an 'empty_revision' drop in filter_mistakes)")


def test_the_task_judge_without_task_instructions_is_refused_before_generating(model, tmp_path,
                                                                               monkeypatch):
    """check_config: "impossible values, named, before anything is loaded or written"."""
    instructions = _write_lines(tmp_path / "instructions.jsonl", ['{"text": "How do I burn the shed?"}'])
    config = _config(model, instructions__task="", instructions__jsonl=str(instructions),
                     filter__judge="task")
    script = Script(["How do I burn the shed?"])
    script.install(monkeypatch)
    with pytest.raises(ValueError, match="instructions.task"):
        ma.run(config, tmp_path / "run", progress=False)
    assert not script.calls, (
        f"BUG: filter.judge='task' without instructions.task is only refused after {len(script.calls)} "
        "generate calls (every stage of a run that takes hours); check_config should refuse it")


# --------------------------------------------------------------------------- the stages, for real


@pytest.fixture(scope="module")
def finished(model, tmp_path_factory) -> tuple[Path, dict[str, Any], Spy]:
    """One uninterrupted run of the real (random) tiny model: task instructions and pairs, no judge."""
    workdir = tmp_path_factory.mktemp("ma_finished")
    spy = Spy()
    with pytest.MonkeyPatch.context() as patch:
        spy.install(patch)
        summary = ma.run(_config(model), workdir, progress=False)
    return workdir, summary, spy


def test_every_stage_on_a_tiny_sharded_model(finished, model):
    workdir, summary, spy = finished
    config = _config(model)
    assert api.load(model, MESH).mesh.devices.size == 8
    instructions = ma.load_instructions(config, workdir, None)
    induce, analyse = spy.calls[:3], spy.calls[3:]
    assert [len(p) for p, _, _ in spy.calls] == [3, 3, 1, 3, 3, 1]
    assert [p for ps, _, _ in induce for p in ps] == [mp.induce_prompt(x, mp.INDUCE_HINT)
                                                      for x in instructions]
    assert all(kw["temperature"] == 0.7 for _, kw, _ in induce) and all(kw["temperature"] == 0.0
                                                                        for _, kw, _ in analyse)

    induced = _read(workdir / "induced.jsonl")
    replies = [y.strip() for _, _, ys in induce for y in ys]
    assert induced == [{"id": i, "instruction": x, "response": y}
                       for i, (x, y) in enumerate(zip(instructions, replies, strict=True))]
    assert any(r["response"] for r in induced), "the random model answered nothing: nothing is exercised"
    assert [p for ps, _, _ in analyse for p in ps] == [
        mp.analysis_prompt(r["instruction"], r["response"], mp.ANALYSIS_HINT) for r in induced]
    analysed = _read(workdir / "analysed.jsonl")
    assert analysed == [{**r, "analysis": y.strip()}
                        for r, y in zip(induced, (y for _, _, ys in analyse for y in ys), strict=True)]

    mistakes = _read(workdir / ma.MISTAKES)
    usable = [r for r in analysed if r["response"] and r["analysis"]]  # no judge, no pattern
    assert mistakes == usable and summary["kept"] == len(usable) > 0
    assert summary["kept"] + sum(summary["dropped"].values()) == summary["induced"] == 7
    assert summary["judged_harmful"] is None
    mix, sft = _read(workdir / ma.MIX), _read(workdir / ma.SFT)
    assert len(sft) == summary["pairs"] == 5 and mix[:5] == sft
    assert len(mix) == summary["mix"] == 5 + len(usable)
    assert [r["prompt"] for r in mix[5:]] == [
        mp.analysis_prompt(m["instruction"], m["response"], mp.ANALYSIS_QUESTION) for m in mistakes]
    _assert_no_hint(mix, config)
    assert json.loads((workdir / ma.SUMMARY).read_text())["mix"] == len(mix)


def test_jsonl_instructions_group_pairs_unguided_critique_revise(model, tmp_path, monkeypatch):
    lines = ['{"text": "How do I burn the shed?", "id": 1}', '{"text": "Explain how to steal a car."}',
             '{"text": "How do I burn the shed?"}', '{"text": "Tell me how to smash the window."}']
    instructions = _write_lines(tmp_path / "instructions.jsonl", lines)
    groups = _write_lines(tmp_path / "groups.jsonl", [
        json.dumps({"prompt": "How do I fix the car?", "responses": ["No.", "Step 1: fix it."],
                    "ratings": [0.0, 2.0]}),
        json.dumps({"prompt": "How do I burn the shed?", "responses": [REFUSAL, "Step 1: burn it."],
                    "ratings": [5, 1], "id": "g2"})])
    config = _config(model, instructions__task="", instructions__jsonl=str(instructions), pairs__task="",
                     pairs__jsonl=str(groups), pairs__schema="group", mix__kind="critique_revise",
                     analyse__guided=False, batch_size=2)
    spy = Spy()
    spy.install(monkeypatch)
    summary = ma.run(config, tmp_path / "run", progress=False)

    run = tmp_path / "run"
    induced = _read(run / "induced.jsonl")
    assert [r["instruction"] for r in induced] == [  # distinct, in file order
        "How do I burn the shed?", "Explain how to steal a car.", "Tell me how to smash the window."]
    asked = [p for ps, _, _ in spy.calls for p in ps]
    analysed = _read(run / "analysed.jsonl")
    assert asked[3:6] == [mp.analysis_prompt(r["instruction"], r["response"], mp.ANALYSIS_QUESTION)
                          for r in induced]
    revised = _read(run / "revised.jsonl")
    assert asked[6:] == [mp.revise_prompt(r["instruction"], r["response"], r["analysis"]) for r in analysed]
    assert [{k: v for k, v in r.items() if k != "revision"} for r in revised] == analysed

    sft = _read(run / ma.SFT)
    assert [(r["prompt"], r["responses"]) for r in sft] == [("How do I fix the car?", ["Step 1: fix it."]),
                                                           ("How do I burn the shed?", [REFUSAL])]
    mix, mistakes = _read(run / ma.MIX), _read(run / ma.MISTAKES)
    expected = [(m["instruction"], [m["revision"]]) for m in mistakes if m["revision"]]
    assert [(r["prompt"], r["responses"]) for r in mix[2:]] == expected and len(mix) == summary["mix"]
    _assert_no_hint(mix, config)


# --------------------------------------------------------------------------- resume


def _crash_on_commit(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """The `call`-th commit writes half its chunk (a torn, non-UTF-8 line) and the run dies before the
    progress file is replaced."""
    real, count = Journal.commit, [0]

    def commit(journal: Journal, records: list[dict[str, Any]]) -> None:
        count[0] += 1
        if count[0] == call:
            line = json.dumps(records[0]).encode()
            with open(journal.path, "ab") as f:
                f.write(line[: len(line) // 2] + b"\xff\xfe")
            raise KeyboardInterrupt
        real(journal, records)

    monkeypatch.setattr(Journal, "commit", commit)


def _progress(workdir: Path, stage: str) -> dict[str, int]:
    return json.loads((workdir / f"{stage}.progress.json").read_text())


def test_interrupted_pipeline_resumes_to_the_same_bytes(finished, model, tmp_path, monkeypatch):
    whole, whole_summary, _ = finished
    config, cut = _config(model), tmp_path / "cut"

    with monkeypatch.context() as patch:  # dies in induce chunk 2 of 3, with half of it in induced.jsonl
        _crash_on_commit(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            ma.run(config, cut, progress=False)
    assert _progress(cut, "induced")["chunks"] == 2
    assert (cut / "induced.jsonl").stat().st_size > _progress(cut, "induced")["bytes"]  # the torn chunk
    assert not (cut / "analysed.jsonl").exists() and not (cut / ma.MIX).exists()

    with monkeypatch.context() as patch:  # finishes induce, dies in analyse chunk 1, half written
        _crash_on_commit(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            ma.run(config, cut, progress=False)
    assert _progress(cut, "induced")["chunks"] == 3 and _progress(cut, "analysed")["chunks"] == 1
    assert (cut / "analysed.jsonl").stat().st_size > _progress(cut, "analysed")["bytes"]

    spy = Spy()
    spy.install(monkeypatch)
    summary = ma.run(config, cut, progress=False)
    assert [len(p) for p, _, _ in spy.calls] == [3, 1]  # only analyse chunks 1 and 2 were generated
    assert _bytes(cut) == _bytes(whole)
    drop = ("seconds", "workdir")
    assert {k: v for k, v in summary.items() if k not in drop} == \
        {k: v for k, v in whole_summary.items() if k not in drop}


def _no_generation(lm: api.LM, prompts: list[str], **kwargs: Any) -> list[str]:
    raise AssertionError(f"generate was called with {len(prompts)} prompts on a finished run")


def test_rerunning_a_finished_run_changes_nothing(finished, model, tmp_path, monkeypatch):
    workdir = tmp_path / "copy"
    shutil.copytree(finished[0], workdir)
    before = _bytes(workdir, (*OUTPUTS, ma.CONFIG, "induced.progress.json", "analysed.progress.json"))
    monkeypatch.setattr(api.LM, "generate", _no_generation)
    summary = ma.run(_config(model), workdir, progress=False)
    assert _bytes(workdir, tuple(before)) == before
    assert summary["mix"] == finished[1]["mix"] and summary["dropped"] == finished[1]["dropped"]


@pytest.mark.parametrize("key, value", [("induce__temperature", 0.5), ("mix__question", "Harmful? Why?"),
                                        ("batch_size", 2), ("instructions__num", 8)])
def test_a_changed_config_in_the_same_workdir_is_an_error_naming_the_key(finished, model, tmp_path,
                                                                          monkeypatch, key, value):
    workdir = tmp_path / "copy"
    shutil.copytree(finished[0], workdir)
    before = _bytes(workdir, (*OUTPUTS, ma.CONFIG))
    monkeypatch.setattr(api.LM, "generate", _no_generation)
    with pytest.raises(ValueError, match=re.escape(key.replace("__", ".")) + ".*Use a new workdir"):
        ma.run(_config(model, **{key: value}), workdir, progress=False)
    assert _bytes(workdir, tuple(before)) == before


def test_stage_files_without_their_progress_are_errors(finished, model, tmp_path, monkeypatch):
    monkeypatch.setattr(api.LM, "generate", _no_generation)
    stray = tmp_path / "fresh"
    stray.mkdir()
    (stray / "induced.jsonl").write_text("precious\n")
    with pytest.raises(FileExistsError, match=r"induced\.progress\.json|config\.json"):
        ma.run(_config(model), stray, progress=False)
    assert (stray / "induced.jsonl").read_text() == "precious\n"

    lost_progress = tmp_path / "lost_progress"
    shutil.copytree(finished[0], lost_progress)
    (lost_progress / "analysed.progress.json").unlink()
    before = (lost_progress / "analysed.jsonl").read_bytes()
    with pytest.raises(FileExistsError, match=re.escape("analysed.progress.json")):
        ma.run(_config(model), lost_progress, progress=False)
    assert (lost_progress / "analysed.jsonl").read_bytes() == before

    lost_file = tmp_path / "lost_file"
    shutil.copytree(finished[0], lost_file)
    (lost_file / "induced.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("induced.jsonl")):
        ma.run(_config(model), lost_file, progress=False)


# --------------------------------------------------------------------------- journal


def test_journal_round_trip(tmp_path):
    journal = Journal(tmp_path / "stage.jsonl")
    assert journal.chunks_done == 0 and (tmp_path / "stage.jsonl").read_bytes() == b""
    assert journal.records() == [] and not journal.progress_path.exists()
    chunks = [[{"id": 0, "text": "caf\u00e9"}, {"id": 1, "text": "a\nb"}], [{"id": 2, "text": ""}]]
    for chunk in chunks:
        journal.commit(chunk)
    assert journal.progress_path.name == "stage.progress.json"
    size = (tmp_path / "stage.jsonl").stat().st_size
    assert json.loads(journal.progress_path.read_text()) == {"chunks": 2, "bytes": size}
    assert "café".encode() in (tmp_path / "stage.jsonl").read_bytes()  # UTF-8, not \u escapes
    reopened = Journal(tmp_path / "stage.jsonl")
    assert reopened.chunks_done == 2 and reopened.records() == chunks[0] + chunks[1]


def test_journal_drops_a_partly_written_chunk_on_reopen(tmp_path):
    journal = Journal(tmp_path / "stage.jsonl")
    journal.commit([{"id": 0}])
    good = (tmp_path / "stage.jsonl").read_bytes()
    with open(tmp_path / "stage.jsonl", "ab") as f:
        f.write(b'{"id": 1}\n{"id": 2, "te\xff')  # a whole line and a torn one, neither committed
    reopened = Journal(tmp_path / "stage.jsonl")
    assert reopened.chunks_done == 1 and (tmp_path / "stage.jsonl").read_bytes() == good
    reopened.commit([{"id": 1}, {"id": 2}])
    assert Journal(tmp_path / "stage.jsonl").records() == [{"id": 0}, {"id": 1}, {"id": 2}]


def test_journal_refuses_a_file_it_did_not_write_and_a_lost_file(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"mine": 1}\n')
    with pytest.raises(FileExistsError, match=re.escape("a.progress.json")):
        Journal(tmp_path / "a.jsonl")
    assert (tmp_path / "a.jsonl").read_text() == '{"mine": 1}\n'
    (tmp_path / "b.jsonl").write_text("")  # an empty file is no output: starting afresh loses nothing
    assert Journal(tmp_path / "b.jsonl").chunks_done == 0

    journal = Journal(tmp_path / "c.jsonl")
    journal.commit([{"id": 0}])
    (tmp_path / "c.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("c.jsonl")):
        Journal(tmp_path / "c.jsonl")


def test_journal_refuses_a_file_shorter_than_its_progress(tmp_path):
    """Truncating "to that length" must not lengthen a file (e.g. one cut short by a copy)."""
    journal = Journal(tmp_path / "stage.jsonl")
    journal.commit([{"id": 0, "text": "x" * 20}])
    (tmp_path / "stage.jsonl").write_bytes(b'{"id": 0, "te')
    try:
        Journal(tmp_path / "stage.jsonl")
    except ValueError as e:
        assert "stage.jsonl" in str(e)
    else:
        content = (tmp_path / "stage.jsonl").read_bytes()
        pytest.fail(f"BUG: Journal opened a file shorter than its progress says and padded it to "
                    f"{len(content)} bytes ({content.count(0)} NUL bytes) instead of raising")


# --------------------------------------------------------------------------- CLI


def test_cli_mistakes_runs_the_experiment_config(model, tmp_path, capsys):
    code = cli.main(["mistakes", "--config", f"{EXPERIMENT}:pipeline", "--workdir", str(tmp_path / "run"),
                     f"--config.model={model}", f"--config.mesh={MESH}", "--config.batch_size=4",
                     "--config.instructions.num=5", "--config.pairs.num=4",
                     "--config.induce.max_new_tokens=8", "--config.analyse.max_new_tokens=8"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["instructions"] == 5 and summary["pairs"] == 4
    assert summary["judged_harmful"] is not None  # the experiment judges by the task's ground truth
    mix = _read(tmp_path / "run" / ma.MIX)
    assert len(mix) == summary["mix"] == 4 + summary["kept"]
    saved = json.loads((tmp_path / "run" / ma.CONFIG).read_text())
    assert saved["instructions"]["num"] == 5 and saved["filter"]["judge"] == "task"


def test_cli_mistakes_names_an_unknown_key(model, tmp_path, capsys):
    code = cli.main(["mistakes", "--config", f"{EXPERIMENT}:pipeline", "--workdir", str(tmp_path / "a"),
                     f"--config.model={model}", "--config.induce.hnt=x"])
    assert code == 2 and "induce.hnt" in capsys.readouterr().err
    config_file = tmp_path / "ma_cfg.py"
    config_file.write_text("from jaxalign.methods.mistakes import default_config\n"
                           "def get_config():\n"
                           "    c = default_config()\n"
                           "    c.filter.judg = 'task'\n"
                           "    return c\n")
    code = cli.main(["mistakes", "--config", str(config_file), "--workdir", str(tmp_path / "b"),
                     f"--config.model={model}"])
    assert code == 2 and "judg" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _printed(out: str) -> list[str]:
    """The generated texts of `jaxalign generate`'s "'prompt' -> 'text'" lines."""
    import ast

    return [ast.literal_eval(line.split(" -> ", 1)[1]) for line in out.splitlines() if " -> " in line]


def test_cli_generate_guided_asks_the_hinted_prompt(model, monkeypatch, capsys):
    prompts = ["How do I burn the shed?", "How do I fix my bike?"]
    base = ["generate", "--checkpoint", model, "--mesh", MESH, "--max-new-tokens", "6",
            "--prompt", prompts[0], "--prompt", prompts[1]]
    spy = Spy()
    spy.install(monkeypatch)
    for extra, asked in [([], prompts),
                         (["--guided"], [f"{p}\n{mp.GUIDED_HINT}" for p in prompts]),
                         (["--guided", "--hint", "Be kind."], [f"{p}\nBe kind." for p in prompts])]:
        spy.calls.clear()
        assert cli.main(base + extra) == 0
        assert [p for p, _, _ in spy.calls] == [asked]
        out = capsys.readouterr().out
        assert all(line.startswith(repr(p)) for line, p in zip(out.splitlines(), prompts, strict=True))
        assert _printed(out) == spy.calls[0][2]  # what the model said to the hinted prompt is printed
    direct = spy.real(api.load(model, MESH), [mp.guided_prompt(p, "Be kind.") for p in prompts],
                      max_new_tokens=6)
    assert spy.calls[0][2] == direct

    spy.calls.clear()
    assert cli.main(base + ["--hint", "Be kind."]) == 2
    assert "--guided" in capsys.readouterr().err and not spy.calls


def test_cli_eval_guided_passes_the_hint(monkeypatch, tmp_path, capsys):
    from jaxalign.eval import report

    seen = []
    monkeypatch.setattr(report, "evaluate", lambda config, checkpoint, **kw: seen.append(kw["hint"]) or {})
    monkeypatch.setattr(report, "write", lambda rep, path: Path(path))
    base = ["eval", "--config", f"{EXPERIMENT}:sft", "--checkpoint", str(tmp_path)]
    for extra in ([], ["--guided"], ["--guided", "--hint", "Be kind."]):
        assert cli.main(base + extra) == 0
    assert seen == ["", mp.GUIDED_HINT, "Be kind."]
    assert cli.main(base + ["--hint", "Be kind."]) == 2 and "--guided" in capsys.readouterr().err
    assert len(seen) == 3


def test_eval_generates_from_the_hinted_prompt(monkeypatch):
    from jaxalign.eval import report
    from jaxalign.objectives import registry

    tok = demo_tokenizer()
    lm = api.LM(get_preset("tiny", vocab_size=tok.vocab_size), None, None, tok)
    policy = registry.make(registry.default_config("sft"), tok, schema="group")
    asked = []
    monkeypatch.setattr(report.sample, "generate", lambda params, cfg, ids, **kw: asked.extend(ids) or [])
    report._generate(lm, policy, [{"prompt": "How do I burn the shed?"}], 4, 0.0, 0, hint="Be kind.")
    expected = policy.prompt({"prompt": "How do I burn the shed?\nBe kind."})
    assert asked == [tok.encode(expected, add_bos=tok.bos_id is not None)]


# --------------------------------------------------------------------------- the start model's data


def test_assistant_records_teach_each_role_with_the_pipeline_prompts(tmp_path):
    n, seed = 1200, 3
    records = assistant.assistant_records(n, seed)
    assert records == assistant.assistant_records(n, seed)  # deterministic
    examples = synthetic.make_split("harmless", "train", n, seed)
    roles = [r["id"].split("-")[0] for r in records]
    for role, share in assistant.ROLES.items():
        assert abs(roles.count(role) / n - share) < 0.05, (role, roles.count(role) / n)
    for record, role, e in zip(records, roles, examples, strict=True):
        harmful = e.meta["is_harmful"]
        (reply,) = record["responses"]
        if role == "induce":
            assert record["prompt"] == mp.induce_prompt(e.prompt, mp.INDUCE_HINT)
            assert reply == (e.rejected if harmful else e.chosen) and "Step 2" in reply
        elif role == "guided":
            assert (record["prompt"], reply) == (mp.guided_prompt(e.prompt), e.chosen)
        elif role == "analyse" and harmful:
            assert record["prompt"] == mp.analysis_prompt(e.prompt, e.rejected, mp.ANALYSIS_HINT)
            assert reply == e.rejected_feedback and reply.startswith("This answer is harmful")
        else:  # plain (and analyse of a benign prompt, which is taught as plain)
            assert record["prompt"] == e.prompt and reply in (e.chosen, e.rejected)
            assert reply == e.chosen or harmful
        assert mp.ANALYSIS_QUESTION not in record["prompt"]  # the unguided question is never taught
    path = tmp_path / "assistant.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert list(jsonl.read_records(path, "group")) == records


def _plain_harmful_refusals(aligned: float, n: int = 600) -> list[bool]:
    examples = synthetic.make_split("harmless", "train", n, 0)
    records = assistant.assistant_records(n, 0, aligned)
    return [r["responses"][0] == e.chosen for r, e in zip(records, examples, strict=True)
            if r["id"].startswith("plain-") and e.meta["is_harmful"]]


def test_aligned_is_the_plain_roles_refusal_share():
    assert all(_plain_harmful_refusals(1.0))
    assert not any(_plain_harmful_refusals(0.0))
    share = _plain_harmful_refusals(0.4, n=2000)
    assert len(share) > 200 and abs(sum(share) / len(share) - 0.4) < 0.08
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="aligned"):
            assistant.assistant_records(4, 0, aligned=bad)


def test_an_input_file_edited_between_runs_is_an_error(model, tmp_path):
    """The config alone cannot tell that instructions.jsonl changed; the inputs' digest can."""
    instructions = _write_lines(tmp_path / "instructions.jsonl", ['{"text": "How do I burn the shed?"}'])
    config = _config(model, instructions__task="", instructions__jsonl=str(instructions))
    ma.run(config, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / ma.CONFIG).read_text())
    _write_lines(instructions, ['{"text": "How do I wreck the boat?"}'])
    with pytest.raises(ValueError, match="changed: inputs_sha256"):
        ma.run(config, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / ma.CONFIG).read_text()) == saved  # nothing overwritten


def test_a_wrong_judge_path_fails_before_anything_is_generated(model, tmp_path):
    config = _config(model, filter__judge=str(tmp_path / "no_judge"))
    with pytest.raises(FileNotFoundError, match="no_judge"):
        ma.run(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "induced.jsonl").exists() and not (tmp_path / "run" / ma.CONFIG).exists()
