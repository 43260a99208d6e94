"""The ``rayrlhf`` console entry point, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rayrlhf.cli import STAGES


def rayrlhf(*args: str, runs_dir: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if runs_dir is not None:
        env["RAYRLHF_RUNS_DIR"] = str(runs_dir)
    return subprocess.run([sys.executable, "-m", "rayrlhf.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_help_lists_every_stage():
    proc = rayrlhf("--help")
    assert proc.returncode == 0
    for name in STAGES:
        assert f"  {name} " in proc.stdout


def test_unknown_stage_fails_with_usage():
    proc = rayrlhf("train-everything")
    assert proc.returncode == 2
    assert "unknown stage 'train-everything'" in proc.stderr and "data-check" in proc.stderr


def test_data_check_writes_a_report(tmp_path):
    proc = rayrlhf("data-check", "dataset=demo_preferences", runs_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (report_path,) = tmp_path.glob("data-check/*/data_check.json")
    report = json.loads(report_path.read_text())
    assert report["schema"] == "preference" and report["skipped"] == 0
    assert report["rows"] >= 150


def test_bad_row_fails_the_stage_naming_file_row_and_field(tmp_path):
    bad = tmp_path / "prefs.jsonl"
    good = {"prompt": "p", "response_0": "a", "response_1": "b", "is_response_0_safe": True,
            "is_response_1_safe": False, "better_response_id": 0, "safer_response_id": 0}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "safer_response_id": 7}) + "\n")
    proc = rayrlhf("data-check", f"dataset.source={bad}", runs_dir=tmp_path)
    assert proc.returncode != 0
    assert "prefs.jsonl" in proc.stderr and "row 1" in proc.stderr and "safer_response_id" in proc.stderr
    # Asked to skip, the same file passes and reports what it skipped.
    proc = rayrlhf("data-check", f"dataset.source={bad}", "dataset.skip_bad_rows=true", runs_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (report_path,) = tmp_path.glob("data-check/*/data_check.json")
    report = json.loads(report_path.read_text())
    assert (report["rows"], report["skipped"]) == (1, 1)


def test_multirun_sweeps_over_datasets(tmp_path):
    proc = rayrlhf("data-check", "--multirun", "dataset=demo_prompts,demo_sft", runs_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = sorted(tmp_path.glob("data-check-sweep/*/*/data_check.json"))
    assert [json.loads(p.read_text())["schema"] for p in reports] == ["prompt", "sft"]


def test_sample_stage_on_the_tiny_model(tmp_path, tiny_model_dir):
    proc = rayrlhf("sample", "model=tiny-llama", "num_prompts=3", "generation.max_new_tokens=4",
                   runs_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (samples,) = tmp_path.glob("sample/*/samples.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["response"], str) for r in rows)
