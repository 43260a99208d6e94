"""Faults in real PPO-Lag runs (tiny model, synthetic task, real Ray actors and DeepSpeed):
worker processes SIGKILLed between and inside phases, a worker hung inside ``train``, a save
that finds the disk full, a driver SIGKILLed and resumed with its one command, NaN scores and
NaN-loss streaks. Each faulted run that recovery is promised for is compared with the same run
left alone: metrics step by step, and the final policy weights tensor by tensor.

Faults inside a phase are fired by the workers' labelled fault-injection points
(``faults.inject``, rayrlhf.fault_injection): a real SIGKILL of the worker's own process, a
real endless sleep, a real OSError(ENOSPC) raised in the checkpoint writer."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rayrlhf import fault_injection
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


def assert_same_weights(run_dir: Path, reference_dir: Path) -> None:
    """The final policies (policy/model.safetensors) are equal, tensor by tensor."""
    from safetensors.torch import load_file

    got, want = (load_file(d / "policy" / "model.safetensors") for d in (run_dir, reference_dir))
    assert sorted(got) == sorted(want)
    different = [name for name in want if not torch.equal(got[name], want[name])]
    assert not different, f"{len(different)} of {len(want)} tensors differ, e.g. {different[:3]}"


@dataclass
class Undisturbed:
    rows: list[dict]  # metrics per step
    folder: Path  # its run folder (the final policy is in policy/)


@pytest.fixture(scope="module")
def undisturbed(ray_cluster, tmp_path_factory) -> Undisturbed:
    out = tmp_path_factory.mktemp("undisturbed")
    history = ppo_lag.run(config(out, "keep_last_checkpoints=2"))
    assert [m["step"] for m in history] == [1, 2, 3, 4, 5]
    # Saved at steps 2, 4 and 5 (the end); the oldest was deleted once two newer ones existed.
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000004", "step_000005"]
    assert not fault_rows(out)
    return Undisturbed(history, out)


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
    assert_same_trajectory(rows, undisturbed.rows)  # λ and metrics continue from the checkpoint
    assert_same_weights(tmp_path, undisturbed.folder)
    died = [f for f in fault_rows(tmp_path) if f["kind"] == "worker_died"]
    assert [(f["actor"], f["restart"]) for f in died] == [(name, i + 1) for i, (_, name) in enumerate(kills)]
    assert died[0]["resume_from"] == "the start"  # no checkpoint before step 2
    # The critic may die while step 2's checkpoint is being written: then the run restarts from
    # the start, since an interrupted save never counts as a checkpoint.
    assert died[1]["resume_from"] in ("the start", str(tmp_path / "checkpoints" / "step_000002"))
    assert died[2]["resume_from"] == str(tmp_path / "checkpoints" / "step_000004")
    for fault in died:
        assert "ActorDiedError" in fault["error"]


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
    assert_same_trajectory(rows, undisturbed.rows)
    assert_same_weights(second, undisturbed.folder)
    assert not stale.exists()  # cleaned when the run was resumed


def test_a_run_that_cannot_fit_on_the_local_cluster_fails_at_once(ray_cluster, tmp_path):
    """5 engines need 7 CPUs (policy 1 + shared critic 1 + 5 engines; the frozen models live in
    the trainers); the test cluster has 6: refused before any actor starts, instead of waiting
    forever for a CPU that never comes."""
    actors_before = len(ray_cluster.util.list_named_actors())
    with pytest.raises(RuntimeError, match=r"too small for this run's actors \(CPU: needs 7, has 6; CPU = "):
        ppo_lag.PPOLagDriver(config(tmp_path, "rollout.num_engines=5"))
    assert len(ray_cluster.util.list_named_actors()) == actors_before


# ------------------------------------------------------------------ faults inside a phase
# SMALL trains 16 rows in mini-batches of 16 for 2 epochs: each step is 2 optimiser steps
# (train_step calls) of every trainable rank, so train_step call 5 is inside step 3. Each
# mini-batch is 4 micro-batches of 4 rows (ppo.micro_batch_size): 8 loss calls per trained step.
def test_a_worker_hung_inside_train_is_killed_and_the_run_restarts_from_its_checkpoint(
        ray_cluster, tmp_path, undisturbed):
    """policy-0 sleeps forever after its first optimiser step of step 3. The train phase's
    deadline, derived from steps 1 and 2 (10x the slowest, at least 20 s here), expires: the
    hung process is killed, the line in faults.jsonl names the phase and the worker that had not
    answered, and the run continues from step 2's checkpoint to the undisturbed run's end."""
    import psutil

    history = ppo_lag.run(config(tmp_path, "faults.phase_timeout_min_s=20",
                                 "faults.inject=[policy-0.train_step:hang:5]"))
    assert [m["step"] for m in history] == [1, 2, 3, 4, 5]
    (hung,) = [f for f in fault_rows(tmp_path) if f["kind"] != "recomputed_steps"]
    assert hung["kind"] == "worker_hung" and hung["action"] == "restart" and hung["restart"] == 1
    assert (hung["phase"], hung["step"], hung["not_answered"]) == ("train", 3, ["policy-0"])
    assert 20 <= hung["timeout_s"] < 1800  # derived from the measured steps, not the first-run allowance
    assert hung["resume_from"] == str(tmp_path / "checkpoints" / "step_000002")
    (pid,) = fault_injection.fired(tmp_path).values()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    rows = metrics_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert_same_trajectory(rows, undisturbed.rows)
    assert_same_weights(tmp_path, undisturbed.folder)


@pytest.mark.parametrize("sync_path", ["object_store", "collective"])
def test_workers_killed_inside_train_and_inside_the_weight_sync_are_replaced(ray_cluster, tmp_path, undisturbed,
                                                                            sync_path):
    """policy-0 is SIGKILLed between the two optimiser steps of step 3 (its weights half
    updated); then rollout-0 is SIGKILLed inside the weight sync of step 4 (the policy trained
    and λ moved, the engine not yet updated). Each time every worker is rebuilt from the newest
    checkpoint, and the run ends as the undisturbed one does. With rollout.sync_path=collective
    the engine dies while policy-0 broadcasts to it: policy-0's broadcast fails instead of
    hanging, and the rebuilt roles set up a new weight-sync group."""
    # Calls are counted per process from 1, and each fault fires once per run. policy-0's
    # train_step 5 is in step 3 of the first set of workers; rollout-0's update_weights 3 is
    # reached only by the second set (1 loads step 2's checkpoint, 2 is step 3's sync, 3 step 4's).
    faults = ["policy-0.train_step:kill:5", "rollout-0.update_weights:kill:3"]
    history = ppo_lag.run(config(tmp_path, f"faults.inject=[{','.join(faults)}]", f"rollout.sync_path={sync_path}"))
    assert [m["step"] for m in history] == [1, 2, 3, 4, 5]
    assert len(fault_injection.fired(tmp_path)) == 2
    failures = [f for f in fault_rows(tmp_path) if f["kind"] != "recomputed_steps"]
    assert [(f["kind"], f["actor"], f["phase"], f["step"], f["restart"]) for f in failures] == [
        ("worker_died", "policy-0", "train", 3, 1), ("worker_died", "rollout-0", "sync", 4, 2)]
    step_2 = str(tmp_path / "checkpoints" / "step_000002")
    assert [f["resume_from"] for f in failures] == [step_2, step_2]
    rows = metrics_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert_same_trajectory(rows, undisturbed.rows)
    assert_same_weights(tmp_path, undisturbed.folder)


def test_a_save_that_finds_the_disk_full_is_retried_at_the_next_save(ray_cluster, tmp_path, undisturbed):
    """critic-0's checkpoint writer raises OSError(ENOSPC) in the save after step 2: the save is
    dropped with its partial folder, training goes on, the save after step 4 succeeds, and the
    run ends as the undisturbed one does. (A disk that stays full stops the run: a unit test in
    test_ppo_lag_fault_parts.py.)"""
    history = ppo_lag.run(config(tmp_path, "faults.inject=[critic-0.save_checkpoint:enospc:1]"))
    assert [m["step"] for m in history] == [1, 2, 3, 4, 5]
    (failed,) = fault_rows(tmp_path)
    assert (failed["kind"], failed["step"], failed["actor"], failed["failed_in_a_row"]) == (
        "save_failed", 2, "critic-0", 1)
    assert "No space left on device" in failed["error"] and failed["latest_checkpoint"] is None
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_000004", "step_000005"]
    assert_same_trajectory(metrics_rows(tmp_path), undisturbed.rows)
    assert_same_weights(tmp_path, undisturbed.folder)


def test_nan_scores_and_nan_losses_skip_steps_until_a_streak_or_stop_ends_the_run(ray_cluster, tmp_path):
    """One driver, NaN from two sources: the reward rule has NaN in rows 0 and 2 of every second
    call, and every policy-0 loss is NaN in step 5.

    faults.nonfinite=skip: a step with NaN scores is skipped (no update, λ unchanged) and named
    in faults.jsonl with the tensor, its source and the rows; a step whose policy mini-batches
    were all NaN trains the critic but leaves the policy's weights as they were. Steps lost to
    NaN/Inf in a row, whether skipped or trained with mini-batches not applied, stop the run
    past faults.max_consecutive_skips=2; a clean step in between resets the count.
    faults.nonfinite=stop: the next NaN score ends the run at once, naming tensor, source and
    rows, with nothing changed. (Two tests before, each with its own set of workers.)"""
    from rayrlhf.workers.group import get_fail_fast
    from rayrlhf.workers.policy import PolicyWorker

    rule = "rule:rayrlhf.rewards.faulty:nan_on_even_calls"
    # policy-0's loss calls (8 per trained step): 1-8 in step 1, 9-16 in step 3 (2 and 4 are
    # skipped before training), 17-24 in step 5.
    cfg = config(tmp_path, f"reward={rule}", "faults.max_consecutive_skips=2",
                 "faults.inject=[policy-0.loss:nan:17-24]")
    driver = ppo_lag.PPOLagDriver(cfg, FaultLog(tmp_path / "faults.jsonl"))
    try:
        rows = [driver.step() for _ in range(4)]
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        assert [r.get("faults/skipped_nonfinite", 0.0) for r in rows] == [0.0, 1.0, 0.0, 1.0]
        skipped = rows[1]
        assert "reward/mean" not in skipped
        assert skipped["lagrange/lambda"] == rows[0]["lagrange/lambda"]
        assert rows[2]["lagrange/lambda"] != skipped["lagrange/lambda"]  # the run goes on
        first = fault_rows(tmp_path)[0]
        assert first["kind"] == "nonfinite" and first["step"] == 2 and first["action"] == "skip"
        assert first["findings"] == [{"tensor": "rewards", "source": f"reward model ({rule})", "rows": [0, 2],
                                      "of_rows": 16}]

        def policy_weights():
            return get_fail_fast([driver.roles.policy.call_rank0(PolicyWorker.weights)])[0]

        before = policy_weights()
        fifth = driver.step()
        assert fifth["faults/nonfinite_minibatches"] == 2.0 and math.isnan(fifth["actor/loss"])
        assert math.isfinite(fifth["critic/reward_loss"])  # the critic trained
        after = policy_weights()
        assert all(torch.equal(before[name], after[name]) for name in before)
        with pytest.raises(NonFiniteError, match=r"step 6: NaN/Inf in rewards .*: 3 steps in a row lost to NaN/Inf "
                                                 r"\(faults.max_consecutive_skips=2\)"):
            driver.step()

        # The reward rule's next call is clean: step 6 trains. Then stop mode meets step 7's NaN.
        driver.cfg.faults.nonfinite = "stop"
        sixth = driver.step()
        assert sixth["step"] == 6 and "faults/skipped_nonfinite" not in sixth
        lam = driver.lagrange.value
        with pytest.raises(NonFiniteError, match=r"step 7: NaN/Inf in rewards from reward model \(rule:rayrlhf"
                                                 r".rewards.faulty:nan_on_even_calls\): rows \[0, 2\] \(2 of 16\)"):
            driver.step()
        assert driver.lagrange.value == lam and driver.step_index == 6
    finally:
        driver.shutdown()
    logged = [(f["kind"], f["step"], f["action"], f["consecutive"]) for f in fault_rows(tmp_path)]
    assert logged == [("nonfinite", 2, "skip", 1), ("nonfinite", 4, "skip", 1), ("nonfinite_loss", 5, "skip", 2),
                      ("nonfinite", 6, "stop", 3), ("nonfinite", 7, "stop", 0)]
