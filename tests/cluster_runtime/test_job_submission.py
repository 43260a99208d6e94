"""``rayrlhf submit`` against a real Ray cluster started with ``ray start --head``
(``ray_head``: no auth, 127.0.0.1 only, stopped by its own process group, never ``ray stop``).
The pytest process never calls ``ray.init`` here; it talks to the cluster over the job HTTP API
only, so it cannot clash with the in-process Ray other tests share.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.request

import pytest
from ray_head import cluster_env, ray_head

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def job_api():
    """The dashboard (job API) URL of a private 6-CPU head node on 127.0.0.1."""
    with ray_head(num_cpus=6) as url:
        yield url


def rayrlhf_submit(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayrlhf.cli", "submit", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def job_api_get(url: str) -> dict:
    """GET from the job REST API with plain urllib: nothing Ray-side in the pytest process."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_submit_runs_ppo_lag_as_a_ray_job(job_api, tmp_path):
    runs = tmp_path / "runs"
    proc = rayrlhf_submit("--address", job_api, "--metadata", "purpose=test", "--runs-dir", str(runs),
                          "--", "ppo-lag", "+experiment=synthetic", "steps=2", "rollout.engine=hf",
                          env=cluster_env(RAYRLHF_CACHE_DIR="/nonexistent/laptop/cache"), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert f"job {job_id} SUCCEEDED" in proc.stderr
    # The followed logs carry the run's progress bar: 2 of 2 steps with reward and cost.
    assert "ppo-lag: 100%" in proc.stdout and "2/2" in proc.stdout and "reward=" in proc.stdout

    info = job_api_get(f"{job_api}/api/jobs/{job_id}")
    assert info["status"] == "SUCCEEDED"
    assert info["entrypoint"].startswith("python -m rayrlhf.cli ppo-lag cluster=existing +experiment=synthetic")
    assert info["metadata"] == {"rayrlhf_stage": "ppo-lag", "purpose": "test"}
    env_vars = info["runtime_env"]["env_vars"]
    assert env_vars["RAY_AUTH_MODE"] == "disabled" and env_vars["RAYRLHF_RUNS_DIR"] == str(runs)
    # A path of the submitting machine stays there (said so on stderr).
    assert "RAYRLHF_CACHE_DIR" not in env_vars and "not passed to the cluster" in proc.stderr
    logs = job_api_get(f"{job_api}/api/jobs/{job_id}/logs")["logs"]
    assert "ppo-lag" in logs and "reward" in logs

    # --runs-dir set RAYRLHF_RUNS_DIR for the job: the run wrote its metrics where we asked.
    (metrics_file,) = runs.glob("ppo-lag/*/metrics.jsonl")
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    # λ followed Safe RLHF's update ln λ += lr·λ·(J_c − d) with the synthetic preset's
    # lr = 5, d = 0, λ_0 = 0.5 (recomputed here from the logged episode costs). The logged
    # cost/mean is a float32 mean while λ averages the episodes in float64: they agree to ~1e-7.
    lam = 0.5
    for m in metrics:
        assert m["lagrange/lambda_used"] == pytest.approx(lam, rel=1e-6)
        lam = math.exp(math.log(lam) + 5.0 * lam * (m["cost/mean"] - 0.0))
        assert m["lagrange/lambda"] == pytest.approx(lam, rel=1e-6)


def test_failing_job_makes_submit_exit_nonzero(job_api, tmp_path):
    missing = tmp_path / "no_such_prompts.jsonl"
    proc = rayrlhf_submit("--address", job_api, "--runs-dir", str(tmp_path / "runs"), "--", "data-check",
                          f"dataset.source={missing}", env=cluster_env(), timeout=120)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0].strip()
    assert f"job {job_id} FAILED" in proc.stderr
    assert "no_such_prompts.jsonl" in proc.stdout  # the job's own error, followed from its logs


def test_bad_override_fails_locally_before_contacting_a_cluster():
    # Port 9 (discard) has no job API: a composition error must come first, with Hydra's words.
    proc = rayrlhf_submit("--address", "http://127.0.0.1:9", "--", "ppo-lag", "+experiment=synthetic",
                          "steps=two", env=cluster_env(), timeout=60)
    assert proc.returncode == 2
    assert "steps" in proc.stderr and "Integer" in proc.stderr
    assert "no Ray job API" not in proc.stderr
