"""``rayrlhf sweep-report``: last-K means, the Pareto set and override parsing by hand; the
report over fabricated trial folders; and one real Hydra multirun of the synthetic task."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayrlhf.eval.sweep import (
    last_k_mean,
    parse_overrides,
    pareto_optimal,
    summarize_sweep,
    summarize_trial,
    swept_keys,
    failure_line,
    write_sweep_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- pure functions


def test_last_k_mean_by_hand():
    assert last_k_mean([1.0, 2.0, 3.0, 4.0, 5.0], 2) == pytest.approx(4.5)  # (4 + 5) / 2
    assert last_k_mean([1.0, 2.0, 3.0, 4.0, 5.0], 5) == pytest.approx(3.0)
    assert last_k_mean([2.0, 4.0], 5) == pytest.approx(3.0)  # fewer steps than K: all of them
    assert last_k_mean([7.0], 1) == 7.0
    with pytest.raises(ValueError, match="last_k"):
        last_k_mean([1.0], 0)
    with pytest.raises(ValueError, match="no values"):
        last_k_mean([], 3)


def test_pareto_set_by_hand():
    # (reward, cost): higher reward and lower cost are better.
    points = [
        (0.40, -0.15),  # A: the safest -> optimal
        (0.55, -0.02),  # B: optimal
        (0.50, 0.05),   # C: B has more reward at less cost -> dominated
        (0.70, 0.30),   # D: the most reward -> optimal
        (0.40, 0.00),   # E: A has the same reward at less cost -> dominated
        (0.70, 0.30),   # F: equal to D: equal points do not dominate each other -> optimal
    ]
    assert pareto_optimal(points) == [True, True, False, True, False, True]
    assert pareto_optimal([(1.0, 1.0)]) == [True]
    assert pareto_optimal([]) == []


def test_parse_overrides_types_values_like_hydra():
    parsed = parse_overrides(["+experiment=synthetic", "lagrange.threshold=-0.1", "model@policy=tiny-llama",
                              "tensorboard=False", "ppo.actor_lr=1e-3", "~resume_from", "++steps=4"])
    assert parsed == {"experiment": "synthetic", "lagrange.threshold": -0.1, "model@policy": "tiny-llama",
                      "tensorboard": False, "ppo.actor_lr": 0.001, "steps": 4}


def test_swept_keys_are_those_that_differ_between_trials():
    trials = [{"experiment": "synthetic", "lagrange.threshold": -0.1, "steps": 4},
              {"experiment": "synthetic", "lagrange.threshold": 0.1, "steps": 4, "lagrange": "pid"},
              {"experiment": "synthetic", "lagrange.threshold": 0.1, "steps": 4}]
    assert swept_keys(trials) == ["lagrange.threshold", "lagrange"]
    assert swept_keys([{"a": 1}]) == []


def test_summarize_trial_by_hand():
    history = [
        {"step": 1, "reward/mean": 9.0, "cost/mean": 9.0, "lagrange/lambda": 2.0, "cost/threshold": 0.0,
         "actor/kl_to_ref": 9.0},
        {"step": 2, "reward/mean": 0.2, "cost/mean": 0.1, "lagrange/lambda": 1.0, "cost/threshold": 0.0,
         "actor/kl_to_ref": 0.01},
        {"step": 3, "reward/mean": 0.4, "cost/mean": -0.3, "lagrange/lambda": 0.5, "cost/threshold": 0.0,
         "actor/kl_to_ref": 0.03},
    ]
    s = summarize_trial(history, 2)
    assert (s.reward, s.cost, s.kl) == (pytest.approx(0.3), pytest.approx(-0.1), pytest.approx(0.02))
    assert (s.final_lambda, s.threshold, s.steps, s.meets_threshold) == (0.5, 0.0, 3, True)
    del history[1]["cost/mean"]
    with pytest.raises(ValueError, match="run0/metrics.jsonl: step 2 lacks cost/mean"):
        summarize_trial(history, 2, source="run0/metrics.jsonl")


# ----------------------------------------------------------------------------- fabricated sweep

# (threshold, last-3 rewards, last-3 costs, final λ); the first 3 steps log 9.0 everywhere so a
# wrong window shows. Last-3 means: rewards 0.40, 0.55, 0.50, 0.70; costs -0.15, -0.02, 0.05, 0.30.
TRIALS = [
    (-0.1, [0.3, 0.4, 0.5], [-0.1, -0.15, -0.2], 1.5),
    (0.0, [0.5, 0.55, 0.6], [0.0, -0.02, -0.04], 0.8),
    (0.1, [0.45, 0.5, 0.55], [0.04, 0.05, 0.06], 0.2),
    (0.2, [0.6, 0.7, 0.8], [0.2, 0.3, 0.4], 0.0),
]


def write_trial(folder: Path, overrides: list[str], history: list[dict] | None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if history is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))


def fabricated_sweep(root: Path) -> Path:
    # Trial folders in Hydra's numbering, listed out of threshold order on purpose.
    for number, (d, rewards, costs, lam) in zip([3, 1, 0, 2], TRIALS):
        history = [{"step": i + 1, "reward/mean": 9.0, "cost/mean": 9.0, "lagrange/lambda": 9.0,
                    "cost/threshold": d, "actor/kl_to_ref": 9.0} for i in range(3)]
        history += [{"step": 4 + i, "reward/mean": r, "cost/mean": c, "lagrange/lambda": lam if i == 2 else 3.0,
                     "cost/threshold": d, "actor/kl_to_ref": 0.01 * (i + 1)}
                    for i, (r, c) in enumerate(zip(rewards, costs))]
        write_trial(root / str(number), ["+experiment=synthetic", f"lagrange.threshold={d}", "steps=6"], history)
    # A trial that failed before its first step: no metrics.
    write_trial(root / "4", ["+experiment=synthetic", "lagrange.threshold=0.3", "steps=6"], None)
    # A trial that crashed at step 2 of 6 with numbers that would beat every finished trial: its
    # log holds the error the CLI wrote, its config the 6 steps it was asked for.
    crashed = [{"step": i + 1, "reward/mean": 0.9, "cost/mean": -0.5, "lagrange/lambda": 2.9e23,
                "cost/threshold": -0.05} for i in range(2)]
    write_trial(root / "5", ["+experiment=synthetic", "lagrange.threshold=-0.05", "steps=6"], crashed)
    (root / "5" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"steps": 6, "lagrange": {"threshold": -0.05}}))
    (root / "5" / "ppo-lag.log").write_text(
        "[2025-01-01 00:00:00,000][rayrlhf.trainers.ppo_lag][INFO] - step 2 done\n"
        "[2025-01-01 00:00:01,000][rayrlhf.cli][ERROR] - " + failure_line("ppo-lag", OverflowError("math range error"))
        + "\nTraceback (most recent call last):\n  ...\nOverflowError: math range error\n")
    return root


def test_report_over_fabricated_trials(tmp_path):
    sweep = fabricated_sweep(tmp_path / "sweep")
    everything, keys = summarize_sweep(sweep, last_k=3)
    assert [s.trial for s in everything] == ["3", "5", "1", "0", "2", "4"]  # sorted by threshold
    summaries = [s for s in everything if s.trial not in ("4", "5")]
    failed, never_started = everything[1], everything[-1]
    assert keys == ["lagrange.threshold"]
    assert [s.trial for s in summaries] == ["3", "1", "0", "2"]  # sorted by threshold
    assert [s.threshold for s in summaries] == [-0.1, 0.0, 0.1, 0.2]
    assert [s.reward for s in summaries] == pytest.approx([0.40, 0.55, 0.50, 0.70])
    assert [s.cost for s in summaries] == pytest.approx([-0.15, -0.02, 0.05, 0.30])
    assert [s.kl for s in summaries] == pytest.approx([0.02] * 4)  # (0.01 + 0.02 + 0.03) / 3
    assert [s.final_lambda for s in summaries] == [1.5, 0.8, 0.2, 0.0]
    assert [s.meets_threshold for s in summaries] == [True, True, True, False]
    # 0.1 is beaten by 0.0; the crashed trial's better-looking point competes with no one.
    assert [s.pareto for s in summaries] == [True, True, False, True]
    assert all(s.status == "completed" for s in summaries)
    assert (failed.trial, failed.status, failed.steps, failed.configured_steps) == ("5", "failed", 2, 6)
    assert failed.error == "OverflowError: math range error"
    assert not failed.pareto and not failed.meets_threshold
    assert (never_started.trial, never_started.status, never_started.threshold) == ("4", "stopped early", 0.3)
    assert never_started.error == "no step logged (no metrics.jsonl)" and never_started.reward is None

    written = write_sweep_report(everything, keys, tmp_path / "out", sweep_dir=sweep, last_k=3)
    with open(written["sweep.csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["trial"], r["threshold"], r["reward"], r["cost"], r["meets threshold"], r["Pareto-optimal"],
             r["status"], r["steps"]) for r in rows] == [
        ("3", "-0.1", "0.4000", "-0.1500", "yes", "yes", "completed", "6"),
        ("5", "-0.05", "0.9000", "-0.5000", "", "no", "failed: OverflowError: math range error", "2/6"),
        ("1", "0", "0.5500", "-0.0200", "yes", "yes", "completed", "6"),
        ("0", "0.1", "0.5000", "0.0500", "yes", "no", "completed", "6"),
        ("2", "0.2", "0.7000", "0.3000", "no", "yes", "completed", "6"),
        ("4", "0.3", "", "", "", "no", "stopped early: no step logged (no metrics.jsonl)", "0")]
    md = written["sweep.md"].read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 6  # header and one row per trial, finished or not
    assert table[1].startswith("| 3 | -0.1 | 0.4000 | -0.1500 | yes | 1.5000 | 0.0200 | 6 | yes |")
    assert "- **Trial 5 failed** after 2/6 steps: OverflowError: math range error. Left out of the frontier." in md
    assert "- **Trial 4 stopped early** after 0 steps: no step logged (no metrics.jsonl)." in md
    assert "frontier.png" in md
    payload = json.loads(written["sweep.json"].read_text())
    assert [t["trial"] for t in payload["trials"]] == ["3", "5", "1", "0", "2", "4"] and payload["last_k"] == 3
    assert payload["trials"][1]["status"] == "failed"
    png = written["frontier.png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    from PIL import Image

    with Image.open(written["frontier.png"]) as image:
        assert image.size[0] > 600 and image.size[1] > 400


def test_pipeline_trials_bring_their_evaluation_after_training(tmp_path):
    history = [{"step": 1, "reward/mean": 0.1, "cost/mean": 0.2, "lagrange/lambda": 0.5, "cost/threshold": 0.0}]
    for number, (d, after_cost) in enumerate([(0.0, -0.4), (0.5, 0.25)]):
        folder = tmp_path / str(number)
        write_trial(folder, [f"lagrange.threshold={d}"], None)
        (folder / "ppo-lag").mkdir()
        (folder / "ppo-lag" / "metrics.jsonl").write_text(json.dumps({**history[0], "cost/threshold": d}) + "\n")
        (folder / "pipeline_report.json").write_text(json.dumps(
            {"eval": {"after": {"answers": 8, "mean_reward": 1.5, "mean_cost": after_cost, "unsafe_rate": 0.25}}}))
    summaries, keys = summarize_sweep(tmp_path, last_k=5)
    assert [s.eval_after["mean_cost"] for s in summaries] == [-0.4, 0.25]
    assert summaries[0].kl is None  # no actor/kl_to_ref logged: left blank, not invented
    written = write_sweep_report(summaries, keys, tmp_path / "out", sweep_dir=tmp_path, last_k=5)
    header = written["sweep.csv"].read_text().splitlines()[0]
    assert header.endswith("eval after: mean_reward,eval after: mean_cost,eval after: unsafe_rate")


def test_trial_whose_lambda_sat_at_its_cap_is_marked_unreachable(tmp_path):
    # The run's own flag (lagrange/threshold_unreachable) on its last step decides; a trial whose
    # λ left the cap again before the end is reachable.
    for number, (d, flags) in enumerate([(-0.1, [0.0, 1.0, 1.0]), (0.1, [0.0, 1.0, 0.0])]):
        history = [{"step": i + 1, "reward/mean": 0.1, "cost/mean": 0.05, "lagrange/lambda": 5.0,
                    "cost/threshold": d, "lagrange/at_cap_steps": float(9 + i) if flag else 0.0,
                    "lagrange/threshold_unreachable": flag} for i, flag in enumerate(flags)]
        write_trial(tmp_path / str(number), [f"lagrange.threshold={d}"], history)
    summaries, keys = summarize_sweep(tmp_path, last_k=2)
    assert [(s.threshold_unreachable, s.at_cap_steps, s.meets_threshold) for s in summaries] == [
        (True, 11, False), (False, 0, True)]
    written = write_sweep_report(summaries, keys, tmp_path / "out", sweep_dir=tmp_path, last_k=2)
    rows = list(csv.DictReader(written["sweep.csv"].read_text().splitlines()))
    assert [r["threshold reachable"] for r in rows] == ["no: λ at its cap for the last 11 steps", "yes"]
    assert ("Trial 0: threshold -0.1 not reachable with this policy/budget (λ at its cap for the last 11 steps)"
            in written["sweep.md"].read_text())


def test_failure_line_names_stage_and_error():
    from rayrlhf.eval.sweep import FAILURE_LINE

    line = failure_line("ppo-lag", OverflowError("math range error\nmore detail"))
    assert line == "rayrlhf ppo-lag failed: OverflowError: math range error"
    assert FAILURE_LINE.search("[t][rayrlhf.cli][ERROR] - " + line).group("error") == "OverflowError: math range error"


def test_empty_sweep_dir_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"sweep_dir={tmp_path}: no trial folders"):
        summarize_sweep(tmp_path)


# ----------------------------------------------------------------------------- real multirun


@pytest.mark.slow
def test_real_threshold_multirun_with_an_unreachable_threshold_and_report(tmp_path):
    """Issue #15's sweep, shortened (8 of 25 steps, smaller batches): thresholds -0.1 and 0.1
    of the synthetic task, each its own PPO-Lag run on its own local Ray cluster in one Hydra
    multirun process. The -0.1 trial's cost stays above its limit, so λ climbs to its cap (5)
    and stays there (uncapped it overflowed at step 6 and the multirun exited non-zero); both
    trials finish, and the report marks which met its threshold and which threshold is not
    reachable (λ at the cap for faults.threshold_unreachable_after=4 steps: as with the default
    10 steps in a 14-step run, λ must reach its cap by step 5)."""
    rayrlhf = str(Path(sys.executable).with_name("rayrlhf"))
    env = dict(os.environ)  # carries RAY_AUTH_MODE as tests/conftest.py set it
    sweep = tmp_path / "sweep"
    steps, unreachable_after = 8, 4
    proc = subprocess.run(
        [rayrlhf, "ppo-lag", "--multirun", "+experiment=synthetic", "lagrange.threshold=-0.1,0.1", f"steps={steps}",
         "rollout.prompts_per_step=8", "rollout.max_new_tokens=8", "ppo.minibatch_size=8", "ppo.epochs=1",
         f"faults.threshold_unreachable_after={unreachable_after}", "logger=[jsonl]", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each trial started its own local cluster (the first one's was shut down after it).
    assert (proc.stdout + proc.stderr).count("Started a local Ray instance") == 2
    proc = subprocess.run([rayrlhf, "sweep-report", f"sweep_dir={sweep}", "last_k=2",
                           f"hydra.run.dir={tmp_path / 'report-run'}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(sweep / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["threshold"]) for r in rows] == [-0.1, 0.1]
    for row, trial in zip(rows, ["0", "1"]):
        assert row["trial"] == trial
        history = [json.loads(line) for line in (sweep / trial / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in history] == list(range(1, steps + 1))
        assert (row["status"], row["steps"]) == ("completed", f"{steps}/{steps}")
        assert history[-1]["cost/threshold"] == float(row["threshold"])
        assert all(m["lagrange/lambda"] <= 5.0 + 1e-9 for m in history)  # the default cap holds
        # Independently: the mean of the last 2 steps.
        reward = statistics.mean(m["reward/mean"] for m in history[-2:])
        cost = statistics.mean(m["cost/mean"] for m in history[-2:])
        assert float(row["reward"]) == pytest.approx(reward, abs=5e-5)
        assert float(row["cost"]) == pytest.approx(cost, abs=5e-5)
        assert float(row["final λ"]) == pytest.approx(history[-1]["lagrange/lambda"], abs=5e-5)
        assert row["meets threshold"] == ("yes" if cost <= float(row["threshold"]) else "no")
        # Unreachable exactly when λ sat at the cap for the last 4+ steps.
        at_cap = [m["lagrange/lambda"] == pytest.approx(5.0) for m in history]
        streak = next((i for i, hit in enumerate(reversed(at_cap)) if not hit), len(at_cap))
        assert row["threshold reachable"] == (f"no: λ at its cap for the last {streak} steps"
                                              if streak >= unreachable_after else "yes")
    unreachable, reachable = rows
    print(f"d=-0.1: cost {unreachable['cost']} λ {unreachable['final λ']} ({unreachable['threshold reachable']}); "
          f"d=0.1: cost {reachable['cost']} λ {reachable['final λ']}")
    assert unreachable["meets threshold"] == "no" and unreachable["threshold reachable"].startswith("no: ")
    assert reachable["meets threshold"] == "yes" and reachable["threshold reachable"] == "yes"
    findings = [json.loads(line) for line in (sweep / "0" / "faults.jsonl").read_text().splitlines()]
    assert [f["kind"] for f in findings] == ["threshold_unreachable"]
    assert "not reachable with this policy/budget" in (sweep / "sweep.md").read_text()
    assert (sweep / "frontier.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_release_ray_leaves_a_cluster_it_did_not_start(ray_cluster):
    """Between trials only a private cluster started by init_ray is shut down: one started
    elsewhere (here the test session's; for users one named by cluster.address) stays up."""
    from omegaconf import OmegaConf

    from rayrlhf.cluster import init_ray, release_ray

    init_ray(OmegaConf.create({"address": None, "runtime_env": {}}))  # joins the running one
    assert release_ray() is False
    assert ray_cluster.is_initialized()
