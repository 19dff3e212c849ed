"""The diagnostics by hand, and the report command end to end on a small overlay."""

import json

import numpy as np
import pytest
from helpers import appliance

from appliance.overlay.files import Overlay, save_overlay
from appliance.overlay.params import OverlayParams
from appliance.training.evaluate import Trajectory, compare_loops, loop_rate, participation_ratio


def test_loop_rate_by_hand():
    assert loop_rate([1, 2, 3, 4, 5, 6, 7, 8]) == 0.0
    # 1 2 3 4 1 2 3 4: 5 four-grams, the last one repeats the first
    assert loop_rate([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 / 5)
    assert loop_rate([9] * 10) == pytest.approx(6 / 7)  # every 4-gram after the first is a repeat
    assert loop_rate([1, 2]) == 0.0


def test_compare_loops_pairs_replies_by_prompt():
    looping, plain = [1, 2, 3, 4] * 3, list(range(12))  # loop rates 5/9 (every 4-gram after the fourth) and 0
    off = [Trajectory([0], plain), Trajectory([0], looping), Trajectory([0], plain)]
    on = [Trajectory([0], looping), Trajectory([0], plain), Trajectory([0], plain)]
    assert compare_loops(off, on) == {"off": pytest.approx(5 / 27), "on": pytest.approx(5 / 27), "more": 1, "less": 1, "same": 1}


def test_participation_ratio_by_hand():
    rng = np.random.default_rng(0)
    isotropic = rng.standard_normal((20000, 8))
    assert participation_ratio(isotropic) == pytest.approx(8.0, rel=0.02)
    one_direction = np.outer(rng.standard_normal(5000), rng.standard_normal(8))
    assert participation_ratio(one_direction) == pytest.approx(1.0, abs=1e-6)
    # variances 1 and 1/4 in two axes: (1.25)^2 / (1 + 1/16)
    two = rng.standard_normal((200000, 2)) * np.array([1.0, 0.5])
    assert participation_ratio(two) == pytest.approx(1.5625 / 1.0625, rel=0.02)


def test_report_command_writes_numbers_plots_and_a_page(tmp_path, model):
    overlay_dir = tmp_path / "ov"
    overlay = Overlay(OverlayParams.random(576, seed=2, b_scale=0.1), model.sha256, {"config": {"tau": 0.5}})
    save_overlay(overlay, overlay_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write a haiku about rain.\nWhat is a prime number?\n")
    out = tmp_path / "report"
    r = appliance(
        "overlay", "report", "--overlay", str(overlay_dir), "--prompts", str(prompts), "--out", str(out), "--max-tokens", "16"
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "report.json").read_text())
    assert metrics["prompts"] == 2
    assert metrics["kl"]["max"] >= metrics["kl"]["p95"] >= 0 and metrics["kl"]["rmse"] >= metrics["kl"]["mean"] > 0
    assert set(metrics["participation_ratio"]) == {"off", "on"} and set(metrics["loop_rate"]) == {"greedy", "sampled"}
    for loops in metrics["loop_rate"].values():  # every prompt's replies compared once per reply
        assert loops["more"] + loops["less"] + loops["same"] == (2 if loops is metrics["loop_rate"]["greedy"] else 4)
    for png in ("kl.png", "loop_rate.png", "participation.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.md").read_text()
    assert "KL(overlay || base)" in page and "Write a haiku about rain." in page
