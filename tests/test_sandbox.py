"""SANDBOX: prompts and rating parsing, memory recall, the grid, whole rounds with tiny models,
and resuming an interrupted simulation without losing or repeating a record."""

import json
from pathlib import Path

import numpy as np
import pytest

from jaxalign import api, cli
from jaxalign.data import sandbox_records as records
from jaxalign.data.tokenizer import demo_tokenizer
from jaxalign.methods.sandbox import memory, prompts, simulation
from jaxalign.models import get_preset

MESH = "dp:2,fsdp:4,tp:1"


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("text, parsed", [
    ("Rating: 5 ### Reason: It is fine.", (5, "It is fine.")),
    ("  Rating:7###Reason:  very   safe \n", (7, "very safe")),
    ("Rating: 1 ### Reason: harmful: it helps to steal.", (1, "harmful: it helps to steal.")),
])
def test_parse_rating_accepts_the_format(text, parsed):
    assert prompts.parse_rating(text) == parsed
    assert prompts.parse_rating(prompts.format_rating(*parsed)) == parsed


@pytest.mark.parametrize("text", [
    "", "Rating: 8 ### Reason: too high", "Rating: 0 ### Reason: too low", "Rating: 5 ### Reason:",
    "Rating: 5", "I think Rating: 5 ### Reason: ok", "Rating: five ### Reason: ok",
    "Rating: 55 ### Reason: x",
    "Rating: 4.5 ### Reason: half",
])
def test_parse_rating_rejects_anything_else(text):
    assert prompts.parse_rating(text) is None


def test_revision_prompt_shows_mean_rating_and_reasons():
    text = prompts.revise("Q?", "draft", [2, 3], ["rude", "unsafe"])
    assert "rated 2.5 out of 7" in text and "rude / unsafe" in text and text.endswith("Answer: draft")
    assert prompts.NO_FEEDBACK in prompts.revise("Q?", "draft", [], [])


# --------------------------------------------------------------------------- memory


def test_ngram_memory_recalls_the_most_similar_questions():
    mem = memory.Memory(memory.NgramEmbedder(), capacity=3)
    mem.add("How do I fix my bike?", "a1")
    mem.add("Tell me how to paint the fence.", "a2")
    mem.add("How do I fix the car?", "a3")
    recalled = mem.recall(["How do I fix my car?", "Explain how to paint a fence."], k=2)
    assert [a for _, a in recalled[0]] == ["a3", "a1"]
    assert recalled[1][0][1] == "a2"
    mem.add("Something new entirely", "a4")  # over capacity: the oldest is forgotten
    assert len(mem) == 3 and all(a != "a1" for _, a in mem.pairs)
    assert mem.recall(["x"], k=0) == [[]]


def test_model_embedder_rows_are_unit_and_independent_of_the_batch(devices):
    tok = demo_tokenizer()
    lm = api.init(get_preset("tiny", vocab_size=tok.vocab_size), MESH, tokenizer=tok)
    embed = memory.ModelEmbedder(lm)
    texts = ["How do I fix my bike?", "Hi", "Tell me how to paint the neighbour's fence, please."]
    together = embed(texts)
    assert together.shape == (3, lm.cfg.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    for i, text in enumerate(texts):  # padding and batch-mates change nothing
        np.testing.assert_allclose(embed([text])[0], together[i], atol=1e-5)


# --------------------------------------------------------------------------- the society


@pytest.fixture(scope="module")
def random_agent(tmp_path_factory):
    """A random tiny model: it never rates in the right format, so every peer rating is dropped."""
    tok = demo_tokenizer()
    path = tmp_path_factory.mktemp("agent") / "model"
    api.init(get_preset("tiny", vocab_size=tok.vocab_size), MESH, tokenizer=tok).save(path)
    return str(path)


def _config(agent, **changes):
    config = simulation.default_config()
    config.mesh = MESH
    config.agents.models, config.agents.num_agents, config.agents.grid_size = agent, 4, 3
    config.rounds = 3
    config.questions.num = 6
    config.memory.embedding, config.memory.recall = "ngram", 1
    config.sampling.max_new_tokens, config.sampling.temperature = 8, 1.0
    config.observer.kind = "task"
    for key, value in changes.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def test_raters_are_the_nearest_agents_within_the_radius(random_agent):
    config = _config(random_agent, agents__num_agents=9, raters__radius=1, raters__num=8)
    society = simulation.Society(config)
    rng = np.random.default_rng(0)
    for agent in society.agents:
        panel = society.raters(agent, rng)
        cells = {a.id: a.cell for a in society.agents}
        distances = [max(abs(cells[r][0] - agent.cell[0]), abs(cells[r][1] - agent.cell[1])) for r in panel]
        assert agent.id not in panel and all(d == 1 for d in distances)
        expected = sum(1 for a in society.agents if a.id != agent.id
                       and max(abs(a.cell[0] - agent.cell[0]), abs(a.cell[1] - agent.cell[1])) <= 1)
        assert len(panel) == expected


def test_random_agents_records_are_well_formed_and_unparseable_ratings_are_dropped(random_agent, tmp_path):
    summary = simulation.run(_config(random_agent), tmp_path, progress=False)
    rows = list(records.read_records(tmp_path / simulation.RECORDS))
    assert len(rows) == summary["interactions"] == 3 * 4
    assert summary["ratings_parsed"] == 0 and summary["ratings_dropped"] == 3 * 4 * 3
    assert all(r["rating"] == r["feedback"] == r["target_id"] == [] for r in rows)
    assert all(r["gen_engagement_score_before"] is None for r in rows)  # the task observer does not score it
    assert sorted(r["id"] for r in rows) == sorted({r["id"] for r in rows})
    assert [r["iteration"] for r in rows] == sorted(r["iteration"] for r in rows)


def test_interrupted_simulation_resumes_without_loss_or_duplicates(random_agent, tmp_path, monkeypatch):
    config = _config(random_agent)
    simulation.run(config, tmp_path / "whole", progress=False)
    whole = (tmp_path / "whole" / simulation.RECORDS).read_bytes()

    commit = simulation._commit

    def crash_after_writing(workdir, society, new, rounds_done):
        if rounds_done == 2:  # the round's records are on disk, its progress is not
            with open(Path(workdir) / simulation.RECORDS, "ab") as f:
                f.write(records.format_record(new[0]).encode()[:40])  # and a torn line
            raise KeyboardInterrupt
        commit(workdir, society, new, rounds_done)

    monkeypatch.setattr(simulation, "_commit", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        simulation.run(config, tmp_path / "cut", progress=False)
    monkeypatch.setattr(simulation, "_commit", commit)
    assert json.loads((tmp_path / "cut" / simulation.PROGRESS).read_text())["rounds_done"] == 1
    summary = simulation.run(config, tmp_path / "cut", progress=False)
    assert summary["rounds_played"] == 2 and summary["interactions"] == 12
    # Memories were replayed, so later rounds' prompts (and samples) are what they would have been.
    assert (tmp_path / "cut" / simulation.RECORDS).read_bytes() == whole


def test_more_rounds_extend_a_run_and_other_changes_are_refused(random_agent, tmp_path):
    simulation.run(_config(random_agent, questions__num=6), tmp_path, progress=False)
    before = (tmp_path / simulation.RECORDS).read_bytes()
    config = _config(random_agent)
    config.rounds = 4
    assert simulation.run(config, tmp_path, progress=False)["rounds_played"] == 1
    after = (tmp_path / simulation.RECORDS).read_bytes()
    assert after.startswith(before) and len(after.splitlines()) == 16
    with pytest.raises(ValueError, match="raters.num"):
        simulation.run(_config(random_agent, raters__num=2), tmp_path, progress=False)
    assert (tmp_path / simulation.RECORDS).read_bytes() == after  # nothing lost


def test_records_without_progress_are_not_overwritten(random_agent, tmp_path):
    (tmp_path / simulation.RECORDS).write_text("precious\n")
    with pytest.raises(FileExistsError, match="progress.json"):
        simulation.run(_config(random_agent), tmp_path, progress=False)
    assert (tmp_path / simulation.RECORDS).read_text() == "precious\n"


def test_bad_configs_name_the_key(random_agent, tmp_path):
    with pytest.raises(ValueError, match="num_agents"):
        simulation.run(_config(random_agent, agents__num_agents=10), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="embedding"):
        simulation.run(_config(random_agent, memory__embedding="bert"), tmp_path / "b", progress=False)
    config = _config(random_agent)
    config.raters.typo = 1
    with pytest.raises(ValueError, match="typo"):
        simulation.run(config, tmp_path / "c", progress=False)


def test_cli_runs_a_sandbox_config(random_agent, tmp_path, capsys):
    config_file = tmp_path / "sandbox_cfg.py"
    config_file.write_text(
        "from jaxalign.methods.sandbox.simulation import default_config\n"
        "def get_config():\n"
        "    c = default_config()\n"
        f"    c.mesh = {MESH!r}\n"
        "    c.rounds, c.agents.num_agents, c.agents.grid_size = 1, 2, 2\n"
        "    c.observer.kind, c.memory.embedding, c.sampling.max_new_tokens = 'task', 'ngram', 4\n"
        "    return c\n")
    code = cli.main(["sandbox", "--config", str(config_file), "--workdir", str(tmp_path / "run"),
                     f"--config.agents.models={random_agent}"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["interactions"] == 2
    assert len((tmp_path / "run" / simulation.RECORDS).read_text().splitlines()) == 2


# --------------------------------------------------------------------------- a society that can rate


@pytest.fixture(scope="module")
def trained_agent(tmp_path_factory):
    """A tiny model taught every agent role on the harmless task (jaxalign.methods.sandbox.bootstrap)."""
    import ml_collections

    from jaxalign import config as config_lib
    from jaxalign.methods.sandbox import bootstrap
    from jaxalign.train import loop

    root = tmp_path_factory.mktemp("trained_agent")
    with (root / "roles.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in bootstrap.society_records("harmless", 1200, seed=0))
    experiment = Path(__file__).resolve().parents[1] / "experiments" / "stable_alignment_synthetic.py"
    config = config_lib.load_config(f"{experiment}:bootstrap", [
        f"--config.data.jsonl={root / 'roles.jsonl'}", "--config.total_steps=150", f"--config.mesh={MESH}",
        "--config.optimizer.peak_lr=3e-3", "--config.optimizer.warmup_steps=10", "--config.log_every=50",
        "--config.checkpoint_every=150"])
    config.model = ml_collections.ConfigDict({"preset": "tiny"})
    loop.train(config, root / "agent")
    return str(root / "agent")


def test_two_rounds_of_trained_agents_give_rated_revised_observed_records(trained_agent, tmp_path):
    from jaxalign.data import sandbox_alignment as alignment_data

    config = _config(trained_agent, observer__kind="lm", memory__embedding="model")
    config.rounds, config.sampling.max_new_tokens = 2, 32
    summary = simulation.run(config, tmp_path, progress=False)
    rows = list(records.read_records(tmp_path / simulation.RECORDS))  # checked against the schema
    assert len(rows) == summary["interactions"] == 8 - summary["observer_dropped"] > 0
    # The agents learned the rating format: most peer ratings parse, and their reasons are kept with them.
    assert summary["ratings_parsed"] > summary["ratings_dropped"]
    assert summary["ratings_parsed"] + summary["ratings_dropped"] == 8 * 3
    assert sum(len(r["rating"]) for r in rows) <= summary["ratings_parsed"]
    assert all(len(r["rating"]) == len(r["feedback"]) == len(r["target_id"]) for r in rows)
    assert all(r["agent_id"] not in r["target_id"] for r in rows)
    assert all(r["gen_engagement_score_before"] in range(1, 8) for r in rows)  # the LM observer scores it
    groups = alignment_data.imitation_groups(rows)
    assert groups and sum(len(g["responses"]) for g in groups) <= 2 * len(rows)


def test_paper_configs_load_and_stop_at_their_placeholders(tmp_path):
    from jaxalign import config as config_lib
    from jaxalign.train import loop

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    with pytest.raises(ValueError, match="questions.task and questions.jsonl"):
        simulation.run(config_lib.load_config(experiments / "sandbox_paper.py"), tmp_path, progress=False)
    for run in ("imitation", "self_critic", "realignment", "released"):
        config = config_lib.load_config(f"{experiments / 'stable_alignment_paper.py'}:{run}",
                                        ["--config.init_from=", "--config.model.preset=tiny",
                                         "--config.seq_len=256"])  # within tiny's 512 positions
        assert config.data.stage == ("" if run == "released" else run)
        with pytest.raises(ValueError, match="data.source_dir"):
            loop.train(config, tmp_path / run)
