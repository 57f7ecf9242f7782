"""`jaxalign plot`: metrics.jsonl curves of several runs to one PNG."""

import json
import struct

import pytest

from jaxalign import cli, plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(directory, rows):
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def _sft(root):
    """A plain run: bookkeeping keys beside loss, accuracy, grad_norm, lr, mfu, tokens_per_s."""
    return _write_run(root / "sft", [
        {"step": s, "loss": 3.0 / s, "accuracy": 0.1 * s, "grad_norm": 1.0, "lr": 1e-3, "tokens": 512.0,
         "step_s": 0.4, "data_fraction": 0.05, "loss_tokens": 300.0, "loss_weight": 300.0,
         "tokens_per_s": 1200.0, "loss_tokens_per_s": 800.0, "mfu": 0.3}
        for s in (10, 20, 30)])


def _coh(root):
    """A two-stream run (feedback/ and pretrain/ keys) and RL keys, some rows without some keys."""
    rows = [{"step": s, "loss": 4.0 / s, "feedback/loss": 3.0 / s, "pretrain/loss": 1.0 / s,
             "feedback/loss_weight": 20.0, "reward": 0.1 * s, "kl": 0.01 * s, "status": "ok"}
            for s in (5, 10, 15, 20)]
    rows[-1]["task_score"] = 0.7
    rows[1]["feedback/weighted_tokens_kept"] = 0.95
    return _write_run(root / "coh", rows)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_default_metrics_are_the_subplots_of_both_runs(tmp_path):
    runs = plot.load_runs([_sft(tmp_path), _coh(tmp_path)])
    assert [label for label, _ in runs] == ["sft", "coh"]
    expected = ["loss", "feedback/loss", "pretrain/loss", "accuracy", "reward", "kl", "task_score",
                "grad_norm", "lr", "mfu", "tokens_per_s"]
    assert plot.default_metrics(runs) == expected
    fig = plot.figure(runs)
    assert plot.titles(fig) == expected
    # One line per run that has the metric; the legend names every run once.
    loss_axes = fig.axes[0]
    assert [line.get_label() for line in loss_axes.get_lines()] == ["sft", "coh"]
    assert [line.get_label() for line in fig.axes[expected.index("reward")].get_lines()] == ["coh"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["sft", "coh"]


def test_plot_runs_writes_a_png_of_the_chosen_metrics(tmp_path):
    workdirs = [_sft(tmp_path), _coh(tmp_path)]
    out = plot.plot_runs(workdirs, tmp_path / "plots" / "curves.png", metrics=["loss", "feedback/loss"])
    assert out == tmp_path / "plots" / "curves.png"
    width, height = _png_size(out)
    assert 600 <= width <= 1600 and 250 <= height <= 800, (width, height)
    assert plot.titles(plot.figure(plot.load_runs(workdirs), ["loss", "feedback/loss"])) == [
        "loss", "feedback/loss"]
    assert not list((tmp_path / "plots").glob(".*tmp*"))  # written atomically: no temporary left
    # Every default metric: 11 subplots in rows of 3.
    out = plot.plot_runs(workdirs, tmp_path / "all.png")
    width, height = _png_size(out)
    assert 1200 <= width <= 1600 and 1000 <= height <= 1600, (width, height)


def test_cli_plot(tmp_path, capsys):
    sft, coh = _sft(tmp_path), _coh(tmp_path)
    out = tmp_path / "sft" / "curves.png"  # inside a workdir is fine
    assert cli.main(["plot", str(sft), str(coh), "--out", str(out), "--metrics", "loss, kl"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    _png_size(out)
    before = out.stat().st_mtime_ns
    assert cli.main(["plot", str(sft), "--out", str(out), "--x", "tokens", "--metrics", "loss"]) == 0
    assert out.stat().st_mtime_ns >= before
    _png_size(out)


def test_same_names_are_told_apart(tmp_path):
    a = _write_run(tmp_path / "seed0" / "run", [{"step": 1, "loss": 1.0}])
    b = _write_run(tmp_path / "seed1" / "run", [{"step": 1, "loss": 2.0}])
    assert [label for label, _ in plot.load_runs([a, b])] == ["seed0/run", "seed1/run"]


def test_torn_last_line_is_ignored_and_a_bad_line_is_an_error(tmp_path, caplog):
    run = _write_run(tmp_path / "run", [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')
    assert [row["step"] for row in plot.read_metrics(run)] == [1, 2]
    assert "metrics.jsonl:3: skipping a torn last line" in caplog.text
    with (run / "metrics.jsonl").open("a") as f:
        f.write('\n{"step": 4, "loss": 0.2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:3: not a JSON line"):
        plot.read_metrics(run)


def test_errors_name_the_path_or_the_available_metrics(tmp_path, capsys):
    sft = _sft(tmp_path)
    out = tmp_path / "out.png"
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing'}: no such workdir"):
        plot.plot_runs([sft, tmp_path / "missing"], out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty'} holds no metrics.jsonl"):
        plot.plot_runs([tmp_path / "empty"], out)
    with pytest.raises(NotADirectoryError, match="not a directory"):
        plot.plot_runs([sft / "metrics.jsonl"], out)
    with pytest.raises(ValueError, match=r"unknown metric\(s\) rewrd: .*available: loss, accuracy, grad"):
        plot.plot_runs([sft], out, metrics=["loss", "rewrd"])
    with pytest.raises(ValueError, match="--x 'epoch' is in no run's metrics.jsonl; available: step, loss"):
        plot.plot_runs([sft], out, x="epoch")
    _write_run(tmp_path / "bookkeeping", [{"step": 1, "step_s": 0.2}])
    with pytest.raises(ValueError, match="nothing to plot.*available: step, step_s"):
        plot.plot_runs([tmp_path / "bookkeeping"], out)
    # The output is never an input: not a metrics.jsonl, not a workdir.
    inputs = (sft / "metrics.jsonl").read_bytes()
    with pytest.raises(ValueError, match="name a .png file"):
        plot.plot_runs([sft], sft / "metrics.jsonl")
    with pytest.raises(ValueError, match="name a .png file"):
        plot.plot_runs([sft], sft)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ValueError, match="name a .png file"):
        plot.plot_runs([sft], tmp_path / "dir.png")
    assert (sft / "metrics.jsonl").read_bytes() == inputs
    assert not out.exists()
    # The command line: one line, exit code 2.
    assert cli.main(["plot", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"jaxalign: error: {tmp_path / 'missing'}: no such workdir"
    assert cli.main(["plot", str(sft), "--out", str(out), "--metrics", "nope"]) == 2
    assert "available: loss, accuracy" in capsys.readouterr().err


def test_workdirs_and_output_in_a_bucket(bucket, tmp_path):
    rows = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    (bucket / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    local = _sft(tmp_path)
    out = plot.plot_runs([f"{bucket}/run", local], f"{bucket}/plots/loss.png", metrics=["loss"])
    assert str(out) == f"{bucket}/plots/loss.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
