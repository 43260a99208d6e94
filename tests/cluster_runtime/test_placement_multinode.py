"""The run's placement group on a simulated two-node cluster with 4 (logical) GPUs per node
(``placement_multinode_script.py``, its own process and Ray cluster): each layout puts the
roles on the GPUs it says, a strict strategy is kept, and an engine larger than any node is
refused by name. STAND-IN: logical GPUs, no hardware (none here); see the script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

SCRIPT = Path(__file__).with_name("placement_multinode_script.py")


@pytest.fixture(scope="module")
def result() -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    # A short path: Ray's unix sockets live under the temp dir (107-byte limit).
    with tempfile.TemporaryDirectory(prefix="rpl", dir="/tmp") as tmp:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), tmp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"placement script timed out:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    (line,) = [line for line in out.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def test_separate_layout_gives_each_trainer_its_own_gpu_and_each_engine_two_on_one_node(result):
    case = result["separate"]
    where = case["where"]
    trainers = [where[name] for name in ("policy-0", "policy-1", "critic-0")]
    assert all(len(gpus) == 1 for _, gpus in trainers)
    assert len({(node, gpus[0]) for node, gpus in trainers}) == 3  # no two trainers on one GPU
    for engine in ("rollout-0", "rollout-1"):
        node, gpus = where[engine]
        assert len(gpus) == 2  # its tensor-parallel GPUs, on one node
        assert not {(node, gpu) for gpu in gpus} & {(n, g[0]) for n, g in trainers}
    for name, bundle in case["bundle"].items():  # every actor on the node Ray reserved its bundle on
        assert where[name][0] == case["bundle_nodes"][str(bundle)]
    assert case["gpus"] == 2 + 1 + 3 * 0.25 + 2 * 2


def test_colocate_layout_shares_one_gpu_per_rank_between_policy_critic_and_engine(result):
    case = result["colocate"]
    where = case["where"]
    for rank in (0, 1):  # [node, GPU ids]: the same node and the same one GPU
        assert where[f"policy-{rank}"] == where[f"critic-{rank}"] == where[f"rollout-{rank}"]
        assert len(where[f"policy-{rank}"][1]) == 1
    assert where["policy-0"] != where["policy-1"]
    for frozen in ("reference-0", "reward-model-0", "cost-model-0"):
        assert where[frozen] in (where["policy-0"], where["policy-1"])  # on a trainer's GPU
    assert case["gpus"] == 2.0


def test_strict_spread_puts_each_shared_bundle_on_its_own_node(result):
    case = result["colocate_strict_spread"]
    assert len(set(case["bundle_nodes"].values())) == 2
    assert case["where"]["policy-0"][0] != case["where"]["policy-1"][0]


def test_an_engine_larger_than_any_node_is_refused_by_name(result):
    message = result["too_big"]
    assert "resources.placement_timeout_s=3s" in message
    assert "GPU: needs 10, has 8" in message  # policy 1 + critic 1 + the engine's 8
    assert "no node can hold bundle {'CPU': 1.0, 'GPU': 8.0}" in message and "'GPU': 4.0" in message
    assert set(result["groups_left"]) == {"REMOVED"}
