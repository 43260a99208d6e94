"""``rayrlhf sweep`` without a cluster: expanding Hydra's sweep syntax, checking every trial,
how many fit at once, the runs folder, and the scheduler running real ``rayrlhf data-check``
trials two at a time."""

from __future__ import annotations

import json

import pytest

from rayrlhf.sweep_jobs import (
    SweepError, Trial, check_trials, expand_trials, main, new_sweep_dir, parallel_trials, run_trials, runs_dir_from,
)


def test_sweep_syntax_expands_like_a_hydra_multirun():
    assert expand_trials(["--multirun", "+experiment=synthetic", "lagrange.threshold=-0.1,0.1", "steps=range(2,4)"]) == [
        ["+experiment=synthetic", "lagrange.threshold=-0.1", "steps=2"],
        ["+experiment=synthetic", "lagrange.threshold=-0.1", "steps=3"],
        ["+experiment=synthetic", "lagrange.threshold=0.1", "steps=2"],
        ["+experiment=synthetic", "lagrange.threshold=0.1", "steps=3"],
    ]
    assert expand_trials(["logger=[jsonl,wandb]"]) == [["logger=[jsonl,wandb]"]]  # a list is no sweep


def test_every_trial_is_checked_and_the_bad_one_named():
    configs = check_trials("ppo-lag", [["+experiment=synthetic", "steps=2"], ["+experiment=synthetic", "steps=3"]])
    assert [c.steps for c in configs] == [2, 3]
    with pytest.raises(SweepError, match=r"trial 1 \(\+experiment=synthetic steps=0\): steps=0: must be >= 1"):
        check_trials("ppo-lag", [["+experiment=synthetic", "steps=2"], ["+experiment=synthetic", "steps=0"]])


@pytest.mark.parametrize("need, cpus, trials, expected", [
    (4.5, 10, 2, 2), (4.5, 10, 5, 2), (4.5, 8, 3, 1), (4.5, 2, 3, 1), (0, 4, 3, 3), (2, 6, 3, 3)])
def test_as_many_trials_at_once_as_the_cpus_hold(need, cpus, trials, expected):
    assert parallel_trials(need, cpus, trials) == expected


def test_the_runs_folder_is_absolute_and_shared(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYRLHF_RUNS_DIR", raising=False)
    with pytest.raises(SweepError, match="no runs directory"):
        runs_dir_from(None)
    with pytest.raises(SweepError, match="is relative"):
        runs_dir_from("runs")
    monkeypatch.setenv("RAYRLHF_RUNS_DIR", str(tmp_path))
    assert runs_dir_from(None) == tmp_path
    first, second = new_sweep_dir(tmp_path, "ppo-lag"), new_sweep_dir(tmp_path, "ppo-lag")
    assert first.parent == tmp_path / "ppo-lag-sweep" and first != second and second.is_dir()


def test_trials_on_private_local_clusters_are_refused(tmp_path, capsys):
    code = main(["--runs-dir", str(tmp_path), "--", "ppo-lag", "+experiment=synthetic", "steps=2,3"])
    assert code == 2 and "add cluster=existing" in capsys.readouterr().err


def test_scheduler_runs_two_trials_at_a_time_and_records_them(tmp_path, monkeypatch):
    """Real trials (data-check: seconds each), two at a time: the third starts only after one of
    the first two ended, and each trial's folder holds its run and console output."""
    monkeypatch.setenv("RAYRLHF_RUNS_DIR", str(tmp_path))
    trials = [Trial(n, [f"dataset={name}"], str(tmp_path / "sweep" / str(n)))
              for n, name in enumerate(["demo_prompts", "demo_sft", "demo_preferences"])]
    run_trials("data-check", trials, max_parallel=2, out=open(tmp_path / "out.txt", "w"))
    assert [t.returncode for t in trials] == [0, 0, 0]
    first_end = min(trials[0].ended, trials[1].ended)
    assert trials[2].started >= first_end  # never more than two at once
    assert trials[1].started < trials[0].ended  # the first two overlapped
    for trial, schema in zip(trials, ["prompt", "sft", "preference"]):
        folder = tmp_path / "sweep" / str(trial.number)
        assert json.loads((folder / "data_check.json").read_text())["schema"] == schema
        assert (folder / ".hydra" / "overrides.yaml").is_file() and (folder / "console.log").is_file()
