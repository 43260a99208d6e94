"""A private Ray head node for the tests that need the job API (``ray start --head``).

The cluster runs without token auth (``RAY_AUTH_MODE=disabled``, set explicitly for every
process these tests start, whatever CI exports), listens on 127.0.0.1 only, with its own temp
dir and free ports. Teardown stops exactly this cluster: ``ray start --block`` runs in its own
process group and is sent SIGTERM (it then stops the processes it started), and whatever is
left of that group is killed. ``ray stop --force`` is never used: it kills every Ray process on
the machine, including the session-wide cluster of ``conftest.py`` and other users' clusters.
"""

from __future__ import annotations

import contextlib
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
from typing import Iterator

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
    is left in its process group: only processes this helper started."""
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


@contextlib.contextmanager
def ray_head(num_cpus: int, **env: str) -> Iterator[str]:
    """The dashboard (job API) URL of a private head node with ``num_cpus`` logical CPUs
    (``env``: extra variables of the cluster's processes, so of its jobs)."""
    # Short path: Ray's unix sockets live under the temp dir (107-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rjs", dir="/tmp"))
    dashboard_port = free_port()
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}", "--include-dashboard=true",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--port={free_port()}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    log = temp_dir / "ray_start.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=cluster_env(**env),
                                start_new_session=True)
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for_http(f"{url}/api/version", timeout=120, proc=proc, log=log)
        yield url
    finally:
        stop_cluster(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
