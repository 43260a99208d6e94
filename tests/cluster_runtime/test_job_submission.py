"""``rayrlhf submit`` against a real Ray cluster started with ``ray start --head``.

The cluster runs without token auth (``RAY_AUTH_MODE=disabled``, set explicitly for every
process these tests start, whatever CI exports): it listens on 127.0.0.1 only and lives for
this module. The pytest process never calls ``ray.init`` here; it talks to the cluster over
the job HTTP API only, so it cannot clash with the in-process Ray other tests share.

Teardown stops exactly this cluster: ``ray start --block`` runs in its own process group and
is sent SIGTERM (it then stops the processes it started), and whatever is left of that group
is killed. ``ray stop --force`` is not used: it kills every Ray process on the machine,
including the session-wide cluster of ``conftest.py`` and other users' clusters.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_env(**extra: str) -> dict[str, str]:
    """This environment minus anything that would point Ray at another cluster, plus no auth,
    and this venv first on PATH: the job's ``python`` is the one the cluster was started with."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ID")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"no Ray dashboard at {url} after {timeout} s:\n{log.read_text()[-3000:]}")


def stop_cluster(proc: subprocess.Popen) -> None:
    """SIGTERM to ``ray start --block`` (it stops its own processes), then SIGKILL to whatever
    is left in its process group: only processes this fixture started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def job_api():
    """The dashboard (job API) URL of a private 6-CPU head node on 127.0.0.1."""
    # Short path: Ray's unix sockets live under the temp dir (107-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rjs", dir="/tmp"))
    dashboard_port = free_port()
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=6", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--port={free_port()}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    log = temp_dir / "ray_start.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=cluster_env(),
                                start_new_session=True)
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for_http(f"{url}/api/version", timeout=120, proc=proc, log=log)
        yield url
    finally:
        stop_cluster(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def rayrlhf_submit(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayrlhf.cli", "submit", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def job_api_get(url: str) -> dict:
    """GET from the job REST API with plain urllib: nothing Ray-side in the pytest process."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_submit_runs_ppo_lag_as_a_ray_job(job_api, tmp_path):
    runs = tmp_path / "runs"
    proc = rayrlhf_submit("--address", job_api, "--metadata", "purpose=test",
                          "--", "ppo-lag", "+experiment=synthetic", "steps=2", "rollout.engine=hf",
                          env=cluster_env(RAYRLHF_RUNS_DIR=str(runs)), timeout=240)
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
    logs = job_api_get(f"{job_api}/api/jobs/{job_id}/logs")["logs"]
    assert "ppo-lag" in logs and "reward" in logs

    # RAYRLHF_RUNS_DIR travelled with the job: the run wrote its metrics where we asked.
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
    proc = rayrlhf_submit("--address", job_api, "--", "data-check", f"dataset.source={missing}",
                          env=cluster_env(RAYRLHF_RUNS_DIR=str(tmp_path / "runs")), timeout=120)
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
