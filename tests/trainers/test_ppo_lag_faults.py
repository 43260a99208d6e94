"""Faults in real PPO-Lag runs (tiny model, synthetic task, real Ray actors and DeepSpeed):
worker processes SIGKILLed mid-run, a driver SIGKILLed and resumed with its one command,
and NaN scores. Each faulted run is compared with the same run left alone."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rayrlhf.config import compose_config
from rayrlhf.trainers import ppo_lag
from rayrlhf.faults import FaultLog, NonFiniteError, WorkerFailedError

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SMALL = ["+experiment=synthetic", "steps=5", "save_every=2", "rollout.prompts_per_step=16"]
COMPARED = ("reward/mean", "cost/mean", "lagrange/lambda", "actor/loss", "critic/cost_loss")


def config(out: Path, *overrides: str):
    return compose_config("ppo_lag", [*SMALL, *overrides], output_dir=str(out))


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def fault_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "faults.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_same_trajectory(rows: list[dict], reference: list[dict]) -> None:
    by_step = {r["step"]: r for r in reference}
    for row in rows:
        for key in COMPARED:
            assert row[key] == pytest.approx(by_step[row["step"]][key], abs=1e-5), (row["step"], key)


@pytest.fixture(scope="module")
def undisturbed(ray_cluster, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("undisturbed")
    history = ppo_lag.run(config(out, "keep_last_checkpoints=2"))
    assert [m["step"] for m in history] == [1, 2, 3, 4, 5]
    # Saved at steps 2, 4 and 5 (the end); the oldest was deleted once two newer ones existed.
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000004", "step_000005"]
    return history


def kill_actor_when(run_dir: Path, kills: list[tuple[int, str]], killed: list[str]) -> threading.Thread:
    """SIGKILL actor ``name``'s process as soon as metrics.jsonl reaches ``step`` (in order).

    The process id comes from Ray's actor table, not from a call to the actor: a busy actor
    would answer only after its current call, too late to die during that step."""
    import ray
    from ray._private import state

    def live_pid(name: str) -> int:
        while True:  # between a death and the rebuild there is no live actor of that name
            alive = [a["Pid"] for a in state.actors().values() if a.get("Name") == name and a["State"] == "ALIVE"]
            if alive:
                return alive[0]
            time.sleep(0.05)

    def reached(step: int) -> bool:
        rows = metrics_rows(run_dir) if (run_dir / "metrics.jsonl").exists() else []
        return bool(rows) and rows[-1]["step"] >= step

    def watch():
        for step, name in kills:
            while not reached(step):
                time.sleep(0.05)
            os.kill(live_pid(name), signal.SIGKILL)
            killed.append(name)

    assert ray.is_initialized()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_killed_worker_processes_are_replaced_and_the_run_continues(ray_cluster, tmp_path, undisturbed):
    """The policy rank, a critic, then a rollout engine die mid-run: the run restarts three
    times (from the start, then from its newest checkpoint) and ends where the undisturbed
    run ends, step for step."""
    killed: list[str] = []
    kills = [(1, "policy-0"), (2, "critic-0"), (4, "rollout-0")]  # critic-0: one backbone, both heads
    watcher = kill_actor_when(tmp_path, kills, killed)
    history = ppo_lag.run(config(tmp_path, "faults.max_restarts=3"))
    watcher.join(timeout=5)
    assert killed == [name for _, name in kills]
    # The run finished; metrics.jsonl holds every step once, recomputed steps replaced.
    rows = metrics_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] == [m["step"] for m in history]
    assert_same_trajectory(rows, undisturbed)  # λ and metrics continue from the checkpoint
    died = [f for f in fault_rows(tmp_path) if f["kind"] == "worker_died"]
    assert [(f["actor"], f["restart"]) for f in died] == [(name, i + 1) for i, (_, name) in enumerate(kills)]
    assert died[0]["resume_from"] == "the start"  # no checkpoint before step 2
    # The critic may die while step 2's checkpoint is being written: then the run restarts from
    # the start, since an interrupted save never counts as a checkpoint.
    assert died[1]["resume_from"] in ("the start", str(tmp_path / "checkpoints" / "step_000002"))
    assert died[2]["resume_from"] == str(tmp_path / "checkpoints" / "step_000004")
    for fault in died:
        assert "ActorDiedError" in fault["error"]
    assert (tmp_path / "policy" / "model.safetensors").is_file()


def test_a_worker_dying_past_max_restarts_stops_with_a_clear_message(ray_cluster, tmp_path):
    killed: list[str] = []
    watcher = kill_actor_when(tmp_path, [(1, "reward-model-0")], killed)
    with pytest.raises(WorkerFailedError, match=r"reward-model-0 died during step \d .*faults.max_restarts=0"):
        # One actor per frozen model here (the other tests host them in the trainers).
        ppo_lag.run(config(tmp_path, "faults.max_restarts=0", "steps=4", "save_every=0",
                           "resources.frozen_placement=own_actors"))
    watcher.join(timeout=5)
    assert killed == ["reward-model-0"]
    assert [f["actor"] for f in fault_rows(tmp_path) if f["kind"] == "worker_died"] == ["reward-model-0"]


def test_nan_scores_skip_the_step_or_stop_the_run(ray_cluster, tmp_path):
    """Every second call of the reward rule has NaN in rows 0 and 2. With faults.nonfinite=skip
    step 2 is skipped (no update, λ unchanged) and named in faults.jsonl; with stop, step 4
    ends the run with the tensor, its source and the rows."""
    rule = "rule:rayrlhf.rewards.faulty:nan_on_even_calls"
    faults = FaultLog(tmp_path / "faults.jsonl")
    driver = ppo_lag.PPOLagDriver(config(tmp_path, f"reward={rule}"), faults)
    try:
        history = [driver.step() for _ in range(3)]
        assert [m["step"] for m in history] == [1, 2, 3]
        skipped = history[1]
        assert skipped["faults/skipped_nonfinite"] == 1.0 and "reward/mean" not in skipped
        assert skipped["lagrange/lambda"] == history[0]["lagrange/lambda"]
        assert history[2]["lagrange/lambda"] != skipped["lagrange/lambda"]  # the run goes on
        (fault,) = fault_rows(tmp_path)
        assert fault["kind"] == "nonfinite" and fault["step"] == 2 and fault["action"] == "skip"
        assert fault["findings"] == [{"tensor": "rewards", "source": f"reward model ({rule})", "rows": [0, 2],
                                      "of_rows": 16}]

        driver.cfg.faults.nonfinite = "stop"
        lam = driver.lagrange.value
        with pytest.raises(NonFiniteError, match=r"step 4: NaN/Inf in rewards from reward model \(rule:rayrlhf"
                                                 r".rewards.faulty:nan_on_even_calls\): rows \[0, 2\] \(2 of 16\)"):
            driver.step()
        assert driver.lagrange.value == lam and driver.step_index == 3
        assert [f["action"] for f in fault_rows(tmp_path)] == ["skip", "stop"]
    finally:
        driver.shutdown()


def test_a_killed_driver_resumes_with_one_command(ray_cluster, tmp_path, undisturbed):
    """`rayrlhf ppo-lag ...` is SIGKILLed after its first checkpoint; the command it left in
    resume_command.txt continues the run, and the continued steps equal the undisturbed run."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAYRLHF_RUNS_DIR": str(tmp_path / "runs"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    first = tmp_path / "first"
    cmd = ["rayrlhf", "ppo-lag", *SMALL, f"hydra.run.dir={first}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (first / "checkpoints" / "latest").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a preempted node would
        proc.wait(timeout=30)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's helper processes the driver left behind
    done = [r["step"] for r in metrics_rows(first)]
    assert done and done[-1] < 5, "the driver should die mid-run"

    command = (first / "resume_command.txt").read_text().strip()
    assert command.endswith(f"resume_from={first}")
    stale = first / "checkpoints" / ".tmp_step_000003"  # a save the kill cut short
    stale.mkdir(exist_ok=True)
    (stale / "policy_partial.bin").write_bytes(b"half")
    result = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    (second,) = [p.parent for p in (tmp_path / "runs" / "ppo-lag").glob("*/metrics.jsonl")]
    rows = metrics_rows(second)
    checkpoint_step = int((first / "checkpoints" / "latest").read_text().removeprefix("step_"))
    assert rows[0]["step"] > checkpoint_step and rows[-1]["step"] == 5
    assert_same_trajectory(rows, undisturbed)
    assert not stale.exists()  # cleaned when the run was resumed


def test_a_run_that_cannot_fit_on_the_local_cluster_fails_at_once(ray_cluster, tmp_path):
    """3 engines need 6.5 CPUs; the test cluster has 6: refused before any actor starts,
    instead of waiting forever for a CPU that never comes."""
    actors_before = len(ray_cluster.util.list_named_actors())
    with pytest.raises(RuntimeError, match=r"has 6 CPUs, but this run's actors reserve 6.5"):
        ppo_lag.PPOLagDriver(config(tmp_path, "rollout.num_engines=3"))
    assert len(ray_cluster.util.list_named_actors()) == actors_before
