"""Rollout engines spread over the nodes of a (simulated) multi-node Ray cluster.

The cluster lives in a subprocess (``multinode_rollout_script.py``) so that it never meets
the in-process Ray session other tests share. What is checked:

- ``rollout.placement=spread`` puts the two engines on two different worker nodes (the head
  has no CPUs; each worker node has 8 and could hold both engines, so resources alone do not
  decide: Ray's default scheduler packs both onto one node there);
- ``generate_across`` returns the completions in the prompts' order, split 4 + 4;
- each shard is exactly what its own engine returns for that shard when asked directly, and
  not what the other engine returns (engine 1 got other weights through a cross-node sync),
  so both engines served the batch;
- shard 0 equals an HF engine in the test's own subprocess on the same seed (no Ray).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rayrlhf.cluster import rollout_placement_options

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SCRIPT = Path(__file__).with_name("multinode_rollout_script.py")


def test_rollout_placement_options_name_ray_strategies():
    assert rollout_placement_options("default") == {}
    assert rollout_placement_options("spread") == {"scheduling_strategy": "SPREAD"}
    with pytest.raises(ValueError, match="rollout.placement"):
        rollout_placement_options("scatter")


def run_script(work_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    """The script in its own session; on timeout its whole process group is killed (by id)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(work_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"multi-node script timed out after {timeout} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def test_spread_engines_land_on_different_nodes_and_both_serve():
    # A short path: Ray's unix sockets live under the temp dir (107-byte limit).
    with tempfile.TemporaryDirectory(prefix="rmn", dir="/tmp") as tmp:
        proc = run_script(Path(tmp), timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))

    assert result["num_nodes"] == 3
    first, second = result["engine_nodes"]
    assert first != second
    assert result["head_node"] not in (first, second)

    assert result["prompt_order_ok"]
    assert result["shard_sizes"] == [4, 4]
    shards, direct = result["shard_responses"], result["direct_responses"]
    assert all(response for shard in shards for response in shard)
    assert shards[0] == direct[0] and shards[1] == direct[1]
    assert shards[1] != result["engine0_on_shard1"]
    assert shards[0] == result["local_shard0"]
