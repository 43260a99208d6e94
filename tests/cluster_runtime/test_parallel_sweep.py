"""``rayrlhf submit -- ppo-lag --multirun ...`` on a real ``ray start --head`` cluster: one job
that runs both trials at once as their own Ray drivers, files them under one sweep folder in
the runs directory given on the command line, and ends with sweep-report over both."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import urllib.request

import pytest
from ray_head import cluster_env, ray_head

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_a_submitted_sweep_runs_its_trials_in_parallel(tmp_path):
    runs = tmp_path / "runs"
    # 10 logical CPUs hold two synthetic trials (4.5 each: policy, 2 critics, frozen, 1 engine).
    with ray_head(num_cpus=10) as job_api:
        proc = subprocess.run(
            [sys.executable, "-m", "rayrlhf.cli", "submit", "--address", job_api, "--runs-dir", str(runs),
             "--", "ppo-lag", "--multirun", "+experiment=synthetic", "lagrange.threshold=-0.1,0.1", "steps=2",
             "rollout.prompts_per_step=8", "rollout.max_new_tokens=8", "ppo.minibatch_size=8", "ppo.epochs=1",
             "logger=[jsonl]"],
            capture_output=True, text=True, env=cluster_env(), timeout=540)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
        job_id = proc.stdout.splitlines()[0].strip()
        with urllib.request.urlopen(f"{job_api}/api/jobs/{job_id}", timeout=10) as response:
            info = json.loads(response.read())
    assert info["entrypoint"].startswith("python -m rayrlhf.cli sweep -- ppo-lag cluster=existing")
    assert "2 trials of `rayrlhf ppo-lag`" in proc.stdout and "2 at a time" in proc.stdout

    (sweep,) = (runs / "ppo-lag-sweep").iterdir()
    trials = json.loads((sweep / "trials.json").read_text())
    assert [t["returncode"] for t in trials] == [0, 0]
    # Both trials ran at the same time, by their own records: each run folder's claim file holds
    # when that run started, and its metrics.jsonl was last written when it logged its last step.
    spans = []
    for number in ("0", "1"):
        folder = sweep / number
        started = json.loads((folder / ".rayrlhf-run").read_text().splitlines()[0])["started"]
        ended = (folder / "metrics.jsonl").stat().st_mtime
        spans.append((started, ended))
        steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2]
    (start_0, end_0), (start_1, end_1) = spans
    assert start_0 < end_1 and start_1 < end_0, f"trials did not overlap: {spans}"

    # sweep-report ran at the end of the job, over both trials.
    with open(sweep / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(float(r["threshold"]) for r in rows) == [-0.1, 0.1]
    assert all(r["status"] == "completed" and r["steps"] == "2/2" for r in rows)
    assert (sweep / "frontier.png").stat().st_size > 10_000
