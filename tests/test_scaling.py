"""The arithmetic of experiments/scaling.py (the scaling-on-paper model): collective times, remat
FLOPs and the MaxText calibration."""

import importlib.util
import pathlib
import sys

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "scaling.py"
_spec = importlib.util.spec_from_file_location("scaling", _PATH)
scaling = sys.modules["scaling"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(scaling)


def test_tpu_ring_time_depends_on_bytes_and_torus_dimensions_not_on_chip_count():
    chip, nbytes = scaling.HARDWARE["v4"], 13.5e9
    t64, t512 = (scaling.gather_seconds(chip, nbytes, n, torus_dims=3) for n in (64, 512))
    assert t512 == pytest.approx(t64, rel=0.02)  # bandwidth-bound rings: (n-1)/n only
    one_dim = scaling.gather_seconds(chip, nbytes, 64, torus_dims=1)
    assert one_dim == pytest.approx(3 * t64)
    assert scaling.gather_seconds(chip, nbytes, 1) == 0.0


def test_gpu_collectives_slow_down_when_they_leave_the_node():
    chip, nbytes = scaling.HARDWARE["h100"], 1e9
    in_node = scaling.gather_seconds(chip, nbytes, 8, per_node=8)
    across = scaling.gather_seconds(chip, nbytes, 16, per_node=8)
    one_per_node = scaling.gather_seconds(chip, nbytes, 16, per_node=1)
    # A whole node in the group: its 8 NICs carry 400 GB/s, about NVLink's 450 GB/s per GPU.
    assert in_node <= across < one_per_node
    # A3 VMs have a quarter of the network: only cross-node collectives feel it.
    a3 = scaling.HARDWARE["a3"]
    assert scaling.gather_seconds(a3, nbytes, 8, per_node=8) == in_node
    assert scaling.gather_seconds(a3, nbytes, 16, per_node=1) == pytest.approx(4 * one_per_node)


def test_full_remat_costs_a_third_more_flops_save_dots_little():
    model = scaling.flops_per_token(scaling.config("7b", "full"), 2048)
    full = scaling.hardware_flops_per_token(scaling.config("7b", "full"), 2048)
    dots = scaling.hardware_flops_per_token(scaling.config("7b", "save_dots"), 2048)
    # MFU <= efficiency * model / hardware: just above 75% for full remat (the LM head is not redone).
    assert 0.75 < model / full < 0.76
    assert 0.98 < model / dots < 1.0
    # The plain XLA attention computes the masked half of the scores as well.
    xla = scaling.hardware_flops_per_token(scaling.config("7b", "none", attention_impl="xla"), 2048)
    assert xla > model


@pytest.mark.parametrize("chip", sorted(scaling.CALIBRATION))
def test_calibration_runs_reproduce_the_mfu_they_were_taken_from(chip):
    run = scaling.CALIBRATION[chip]
    prediction = run.predict()
    assert prediction is not None, f"{run.label} does not fit by jaxalign.plan"
    # Compute-bound (the weight collectives hide), so the efficiency round-trips to the same MFU.
    assert prediction.mfu() == pytest.approx(run.mfu_our_convention(), rel=1e-6)
    assert prediction.mfu(overlap=False) < prediction.mfu()
    if run.unhalved_attention:
        assert run.mfu_our_convention() < run.mfu
