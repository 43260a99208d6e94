"""Run folders are unique and locked (issue #15, item 4): runs started in the same second used
to share Hydra's folder, appending to each other's metrics and taking over each other's
checkpoints. Real processes race here for one folder name, through ``output_dir``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from rayrlhf.run_folder import CLAIM_FILE, claim_run_folder, run_in_progress
from rayrlhf.runs import output_dir

# One "run": wait for the common start time, take the output folder, write metrics into it
# the way MetricsLog does (append), then report where it wrote.
RUN = """
import json, os, sys, time
from pathlib import Path
from omegaconf import OmegaConf
from rayrlhf.runs import output_dir

start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
cfg = OmegaConf.create({"run": {"output_dir": sys.argv[1]}})
out = output_dir(cfg)
with open(out / "metrics.jsonl", "a") as handle:
    for step in range(1, 4):
        handle.write(json.dumps({"step": step, "pid": os.getpid()}) + "\\n")
        handle.flush()
        time.sleep(0.05)
print(json.dumps({"pid": os.getpid(), "out": str(out), "config_says": cfg.run.output_dir}), flush=True)
time.sleep(float(sys.argv[3]))
"""


def start_runs(folder: Path, count: int, linger_s: float = 0.0) -> list[subprocess.Popen]:
    start = time.time() + 3.0  # every process has imported rayrlhf by then
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return [subprocess.Popen([sys.executable, "-c", RUN, str(folder), str(start), str(linger_s)],
                             stdout=subprocess.PIPE, text=True, env=env) for _ in range(count)]


def test_runs_started_together_never_share_a_folder(tmp_path):
    folder = tmp_path / "runs" / "ppo-lag" / "2025-01-01_00-00-00"
    folder.mkdir(parents=True)  # Hydra creates the folder (and .hydra/) before the run starts
    procs = start_runs(folder, 4)
    reports = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    outs = sorted(report["out"] for report in reports)
    assert outs == sorted([str(folder)] + [f"{folder}_{n}" for n in (1, 2, 3)])  # one each
    for report in reports:
        rows = [json.loads(line) for line in (Path(report["out"]) / "metrics.jsonl").read_text().splitlines()]
        assert [(row["step"], row["pid"]) for row in rows] == [(s, report["pid"]) for s in (1, 2, 3)]
        assert report["config_says"] == report["out"]  # the config snapshot will name the real folder
        owner = json.loads((Path(report["out"]) / CLAIM_FILE).read_text())
        assert owner["pid"] == report["pid"]


def test_a_finished_runs_folder_is_not_reused(tmp_path):
    cfg = OmegaConf.create({"run": {"output_dir": str(tmp_path / "run")}})
    (proc,) = start_runs(tmp_path / "run", 1)
    first = json.loads(proc.communicate(timeout=120)[0])["out"]
    assert first == str(tmp_path / "run")
    assert output_dir(cfg) == tmp_path / "run_1" and cfg.run.output_dir == str(tmp_path / "run_1")
    assert output_dir(cfg) == tmp_path / "run_1"  # the same process asking again keeps its folder


def test_a_live_run_holds_its_folder_and_releases_it_when_killed(tmp_path):
    (proc,) = start_runs(tmp_path / "live", 1, linger_s=60)
    try:
        report = json.loads(proc.stdout.readline())
        assert run_in_progress(report["out"])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not run_in_progress(report["out"])  # the kernel dropped the dead process's lock
    assert claim_run_folder(tmp_path / "live") == tmp_path / "live_1"  # but the folder stays its
