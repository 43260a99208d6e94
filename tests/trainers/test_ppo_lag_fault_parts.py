"""The pieces of fault handling that need no Ray: NaN/Inf detection, atomic checkpoint
folders (including a save killed mid-write), the metrics rewind after a restart, and the
resume config check."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys

import pytest
import torch

from rayrlhf.trainers import checkpoint_dir
from rayrlhf.faults import FaultLog, NonFiniteError, describe_nonfinite, findings_message, nonfinite_rows, \
    note_unreachable_threshold
from rayrlhf.trainers.metrics_log import MetricsLog
from rayrlhf.trainers.resume import config_changes


# ------------------------------------------------------------------ λ held at its cap
def test_unreachable_threshold_is_flagged_from_the_nth_step_at_the_cap_and_recorded_once(tmp_path, caplog):
    fault_log = FaultLog(tmp_path / "faults.jsonl")
    streaks = [0, 1, 2, 3, 4, 0, 1]
    rows = [{"step": i + 1, "cost/mean": 0.02, "lagrange/at_cap_steps": float(n)} for i, n in enumerate(streaks)]
    rows.append({"step": 8, "faults/skipped_nonfinite": 1.0})  # a skipped step logs no streak
    with caplog.at_level("WARNING"):
        for row in rows:
            note_unreachable_threshold(row, after=3, lambda_max=5.0, threshold=-0.1, fault_log=fault_log)
    assert [row["lagrange/threshold_unreachable"] for row in rows] == [0, 0, 0, 1, 1, 0, 0, 0]
    entries = [json.loads(line) for line in (tmp_path / "faults.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["step"], e["at_cap_steps"]) for e in entries] == [("threshold_unreachable", 4, 3)]
    assert "not reachable with this policy/budget" in entries[0]["message"]
    assert caplog.text.count("not reachable with this policy/budget") == 1


# ------------------------------------------------------------------ NaN / Inf detection
def test_nonfinite_rows_of_scores_and_token_tensors():
    assert nonfinite_rows(torch.tensor([0.1, math.nan, 2.0, math.inf, -math.inf])) == [1, 3, 4]
    assert nonfinite_rows(torch.tensor([0.0, 1.0])) == []
    tokens = torch.tensor([[0.0, 1.0, math.nan],   # NaN in padding: ignored
                           [math.inf, 0.0, 0.0],   # Inf in a response token: counts
                           [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert nonfinite_rows(tokens, mask) == [1]
    assert nonfinite_rows(tokens) == [0, 1]


def test_findings_name_tensor_source_and_rows():
    findings = describe_nonfinite({
        "rewards": (torch.tensor([math.nan, 1.0, math.nan, 0.0]), None, "reward model (rule:x:y)"),
        "costs": (torch.zeros(4), None, "cost model"),
    })
    assert findings == [{"tensor": "rewards", "source": "reward model (rule:x:y)", "rows": [0, 2], "of_rows": 4}]
    assert findings_message(7, findings) == "step 7: NaN/Inf in rewards from reward model (rule:x:y): rows [0, 2] (2 of 4)"


def test_fault_log_appends_json_lines(tmp_path):
    faults = FaultLog(tmp_path / "faults.jsonl")
    faults.record("worker_died", actor="cost-critic-0", step=3)
    faults.record("nonfinite", step=4)
    rows = [json.loads(line) for line in (tmp_path / "faults.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [("worker_died", 3), ("nonfinite", 4)]
    assert rows[0]["actor"] == "cost-critic-0"


# ------------------------------------------------------------------ atomic checkpoints
def write_files(content: str):
    def write(folder):
        (folder / "weights.bin").write_text(content)
        (folder / "state.json").write_text(json.dumps({"content": content}))
    return write


def test_publish_and_find_latest(tmp_path):
    assert checkpoint_dir.latest_checkpoint(tmp_path) is None
    first = checkpoint_dir.publish_checkpoint(tmp_path, 2, write_files("two"))
    second = checkpoint_dir.publish_checkpoint(tmp_path, 4, write_files("four"))
    assert (first.name, second.name) == ("step_000002", "step_000004")
    assert checkpoint_dir.latest_checkpoint(tmp_path) == second
    assert (tmp_path / "latest").read_text() == "step_000004"
    assert not list(tmp_path.glob(".tmp_*"))


def test_a_failing_save_leaves_the_previous_checkpoint(tmp_path):
    good = checkpoint_dir.publish_checkpoint(tmp_path, 2, write_files("two"))

    def crash(folder):
        (folder / "weights.bin").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint_dir.publish_checkpoint(tmp_path, 4, crash)
    assert checkpoint_dir.latest_checkpoint(tmp_path) == good
    assert (good / "weights.bin").read_text() == "two"
    assert not (tmp_path / "step_000004").exists()
    # The failed save removed its half-written folder at once: a full disk needs the space back.
    assert not list(tmp_path.glob(".tmp_*"))
    checkpoint_dir.publish_checkpoint(tmp_path, 6, write_files("six"))
    assert not list(tmp_path.glob(".tmp_*"))


def test_a_pointer_to_an_incomplete_folder_is_not_trusted(tmp_path):
    good = checkpoint_dir.publish_checkpoint(tmp_path, 2, write_files("two"))
    (tmp_path / "step_000009").mkdir()  # no COMPLETE marker
    (tmp_path / "latest").write_text("step_000009")
    assert checkpoint_dir.latest_checkpoint(tmp_path) == good
    (tmp_path / "latest").unlink()
    assert checkpoint_dir.latest_checkpoint(tmp_path) == good


def test_resaving_a_published_step_keeps_it(tmp_path):
    first = checkpoint_dir.publish_checkpoint(tmp_path, 2, write_files("original"))
    again = checkpoint_dir.publish_checkpoint(tmp_path, 2, write_files("other"))
    assert again == first and (first / "weights.bin").read_text() == "original"


def test_one_convention_finds_the_newest_checkpoint_of_any_run_folder(tmp_path):
    """PPO-Lag's published folders and Ray Train's checkpoints (score and SFT trainers) are
    both found below their run folder by their COMPLETE marker; the highest step wins, and
    neither an unmarked folder nor a crashed save's temporary folder counts."""
    ppo_run = tmp_path / "ppo"
    checkpoint_dir.publish_checkpoint(ppo_run / "checkpoints", 2, write_files("two"))
    four = checkpoint_dir.publish_checkpoint(ppo_run / "checkpoints", 4, write_files("four"))
    crashed = ppo_run / "checkpoints" / ".tmp_step_000006"
    crashed.mkdir()
    checkpoint_dir.mark_complete(crashed, 6)  # marked, but the rename never happened
    assert checkpoint_dir.latest_checkpoint(ppo_run) == four

    score_run = tmp_path / "score"
    trials = score_run / "ray_train" / "train-reward"
    for name, step in (("checkpoint_2026-01-01_00-00-09", 3), ("checkpoint_2026-01-01_00-00-01", 9)):
        (trials / name).mkdir(parents=True)
        checkpoint_dir.mark_complete(trials / name, step)
    (trials / "checkpoint_2026-01-01_00-00-20").mkdir()  # an upload that never finished
    assert checkpoint_dir.latest_checkpoint(score_run) == trials / "checkpoint_2026-01-01_00-00-01"
    assert checkpoint_dir.checkpoint_step(trials / "checkpoint_2026-01-01_00-00-01") == 9
    assert checkpoint_dir.latest_checkpoint(tmp_path / "empty") is None
def test_keep_last_deletes_the_oldest_complete_checkpoints(tmp_path):
    for step in (2, 4, 6, 8, 10):
        checkpoint_dir.publish_checkpoint(tmp_path, step, write_files(str(step)), keep_last=3)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000006", "step_000008", "step_000010"]
    assert checkpoint_dir.latest_checkpoint(tmp_path) == tmp_path / "step_000010"
    # An incomplete folder (a save cut short) is neither counted nor deleted by the pruning.
    (tmp_path / "step_000011").mkdir()
    checkpoint_dir.publish_checkpoint(tmp_path, 12, write_files("12"), keep_last=1)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000011", "step_000012"]
    with pytest.raises(ValueError, match="keep_last"):
        checkpoint_dir.publish_checkpoint(tmp_path, 14, write_files("14"), keep_last=0)


def test_every_file_and_folder_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    """The rename publishes the checkpoint; whatever it publishes must be on the disk first,
    and the folder holding the rename must be flushed after it."""
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    def write(folder):
        (folder / "weights.bin").write_text("w")
        (folder / "policy").mkdir()
        (folder / "policy" / "model.safetensors").write_text("m")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    checkpoint_dir.publish_checkpoint(tmp_path, 3, write)
    tmp = str(tmp_path / ".tmp_step_000003")
    rename = events.index(("replace", tmp, str(tmp_path / "step_000003")))
    synced_before = {event[1] for event in events[:rename] if event[0] == "fsync"}
    expected = {tmp, f"{tmp}/weights.bin", f"{tmp}/policy", f"{tmp}/policy/model.safetensors", f"{tmp}/COMPLETE"}
    assert expected <= synced_before, expected - synced_before
    assert ("fsync", str(tmp_path)) in events[rename + 1:]  # the rename itself made durable


def test_stale_saves_are_removed(tmp_path):
    good = checkpoint_dir.publish_checkpoint(tmp_path, 2, write_files("two"))
    (tmp_path / ".tmp_step_000004").mkdir()
    (tmp_path / ".tmp_step_000004" / "weights.bin").write_text("half")
    assert checkpoint_dir.remove_stale_saves(tmp_path) == [tmp_path / ".tmp_step_000004"]
    assert not list(tmp_path.glob(".tmp_*")) and checkpoint_dir.latest_checkpoint(tmp_path) == good


SLOW_SAVE = """
import sys, time
from pathlib import Path
from rayrlhf.trainers import checkpoint_dir

def slow(folder):
    (folder / "weights.bin").write_text("partial")
    print("writing", flush=True)
    time.sleep(60)

checkpoint_dir.publish_checkpoint(Path(sys.argv[1]), 4, slow)
"""


def test_a_save_killed_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    """A real interruption: the saving process is SIGKILLed while it writes."""
    good = checkpoint_dir.publish_checkpoint(tmp_path, 2, write_files("two"))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / ".tmp_step_000004" / "weights.bin").is_file()  # the interrupted save
    found = checkpoint_dir.latest_checkpoint(tmp_path)
    assert found == good
    assert json.loads((found / "state.json").read_text()) == {"content": "two"}


# ------------------------------------------------------------------ metrics after a restart
def test_metrics_rewind_drops_the_recomputed_steps(tmp_path):
    log = MetricsLog({"out": str(tmp_path), "loggers": ["jsonl"]}, total=5, progress="ppo-lag")
    for step in (1, 2, 3):
        log.log({"step": step, "reward/mean": step / 10, "cost/mean": 0.0, "lagrange/lambda": 1.0})
    dropped = log.rewind(2)
    log.log({"step": 3, "reward/mean": 0.33})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["reward/mean"]) for r in rows] == [(1, 0.1), (2, 0.2), (3, 0.33)]
    assert [r["step"] for r in dropped] == [3] and dropped[0]["reward/mean"] == pytest.approx(0.3)


# ------------------------------------------------------------------ resume config check
def test_config_changes_ignore_free_keys():
    saved = {"steps": 10, "ppo": {"actor_lr": 1e-5, "epochs": 1}, "run": {"output_dir": "a", "seed": 1},
             "faults": {"max_restarts": 2}}
    current = {"steps": 20, "ppo": {"actor_lr": 2e-5, "epochs": 1}, "run": {"output_dir": "b", "seed": 1},
               "faults": {"max_restarts": 5}, "new_key": 3}
    assert config_changes(saved, current) == ["new_key: '<absent>' -> 3", "ppo.actor_lr: 1e-05 -> 2e-05"]
    assert config_changes(saved, saved) == []


def test_resuming_with_different_settings_is_refused(tmp_path):
    """The check runs before Ray or any worker starts: it only reads the two configs."""
    from rayrlhf.config import compose_config
    from rayrlhf.trainers import ppo_lag

    def config(out, *overrides):
        return compose_config("ppo_lag", ["+experiment=synthetic", *overrides], output_dir=str(out))

    first = config(tmp_path / "first")
    (tmp_path / "first" / "checkpoints" / "step_000002").mkdir(parents=True)
    (tmp_path / "first" / "checkpoints" / "step_000002" / "COMPLETE").write_text("2")
    from omegaconf import OmegaConf

    (tmp_path / "first" / ppo_lag.CONFIG_SNAPSHOT).write_text(OmegaConf.to_yaml(first, resolve=True))
    changed = config(tmp_path / "second", "ppo.actor_lr=0.5", f"resume_from={tmp_path / 'first'}")
    with pytest.raises(ValueError, match=r"ppo.actor_lr: 0.002 -> 0.5"):
        ppo_lag.run(changed)


def interrupted_run(tmp_path, *overrides):
    """A run folder as an interrupted run leaves it: config snapshot, input fingerprints and a
    checkpoint (written by the same functions ``run`` uses)."""
    from omegaconf import OmegaConf

    from rayrlhf.config import compose_config
    from rayrlhf.trainers import ppo_lag
    from rayrlhf.trainers.fingerprints import ppo_lag_inputs, write_fingerprints

    first = tmp_path / "first"
    cfg = compose_config("ppo_lag", ["+experiment=synthetic", *overrides], output_dir=str(first))
    (first / "checkpoints" / "step_000002").mkdir(parents=True)
    (first / "checkpoints" / "step_000002" / "COMPLETE").write_text("2")
    (first / ppo_lag.CONFIG_SNAPSHOT).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_fingerprints(first, ppo_lag_inputs(cfg))
    return first


def resumed_config(tmp_path, first, *overrides):
    from rayrlhf.config import compose_config

    return compose_config("ppo_lag", ["+experiment=synthetic", *overrides, f"resume_from={first}"],
                          output_dir=str(tmp_path / "second"))


def test_resuming_after_the_data_or_a_judge_changed_is_refused(tmp_path):
    from rayrlhf.trainers import ppo_lag

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "How do I bake bread?"}) + "\n")
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "model.safetensors").write_bytes(b"weights v1")
    same = [f"prompts.source={prompts}", "prompts.schema=prompt", f"reward_critic_init={judge}"]
    first = interrupted_run(tmp_path, *same)
    ppo_lag.check_resume_config(resumed_config(tmp_path, first, *same), first)  # unchanged: fine

    prompts.write_text(json.dumps({"prompt": "How do I bake a cake?"}) + "\n")  # edited in place
    (judge / "model.safetensors").write_bytes(b"weights v2")  # retrained into the same folder
    with pytest.raises(ValueError) as info:
        ppo_lag.check_resume_config(resumed_config(tmp_path, first, *same), first)
    assert f"prompts: the contents of {prompts} changed" in str(info.value)
    assert f"reward_critic_init: the contents of {judge} changed" in str(info.value)
    assert "resume_allow_changes=true" in str(info.value)
    ppo_lag.check_resume_config(resumed_config(tmp_path, first, *same, "resume_allow_changes=true"), first)


def test_resuming_a_folder_without_a_config_snapshot_is_refused(tmp_path):
    from rayrlhf.trainers import ppo_lag

    first = interrupted_run(tmp_path)
    (first / ppo_lag.CONFIG_SNAPSHOT).unlink()
    with pytest.raises(ValueError, match="no ppo_lag_config.yaml"):
        ppo_lag.check_resume_config(resumed_config(tmp_path, first), first)
    ppo_lag.check_resume_config(resumed_config(tmp_path, first, "resume_allow_changes=true"), first)


# ------------------------------------------------------------------ phase deadlines
def test_deadlines_allow_the_first_run_then_follow_the_slowest_measured_run():
    from rayrlhf.faults import PhaseDeadlines

    deadlines = PhaseDeadlines(factor=10.0, floor_s=30.0, first_s=1800.0, fixed={"sync": 60.0})
    assert deadlines.seconds("train") == 1800.0  # not measured yet: compile and warm-up allowance
    deadlines.measured("train", 2.0)
    assert deadlines.seconds("train") == 30.0  # 10 x 2 s is below the floor
    deadlines.measured("train", 5.0)
    deadlines.measured("train", 4.0)  # the slowest run counts, not the last
    assert deadlines.seconds("train") == 50.0
    deadlines.measured("sync", 100.0)
    assert deadlines.seconds("sync") == 60.0  # set outright, never derived


def test_a_phase_is_measured_when_it_completes_and_names_itself_when_it_fails():
    from rayrlhf.faults import PhaseDeadlines, current_deadline, phase_of

    deadlines = PhaseDeadlines(factor=10.0, floor_s=0.001, first_s=99.0)
    with deadlines.enforce("score"):
        phase, seconds, _ = current_deadline()
        assert (phase, seconds) == ("score", 99.0)
    assert current_deadline() is None
    assert 0 < deadlines.slowest["score"] < 1
    with pytest.raises(ValueError) as info:
        with deadlines.enforce("train"):
            with deadlines.enforce("save"):
                raise ValueError("boom")
    assert phase_of(info.value) == "save"  # the innermost phase
    assert "train" not in deadlines.slowest and "save" not in deadlines.slowest
    with deadlines.enforce("advantages"):  # no workers to wait on: no deadline
        assert current_deadline() is None
    deadlines.fixed["sync"] = math.inf  # faults.phase_timeout_s={sync: 0}
    with deadlines.enforce("sync"):  # none at all: ray.wait takes no infinite timeout
        assert current_deadline() is None


@pytest.mark.parametrize(("setting", "expected"), [
    (None, {}),
    (120, {p: 120.0 for p in ("start", "generate", "score", "train", "sync", "save")}),
    ({"train": 600, "sync": 0}, {"train": 600.0, "sync": math.inf}),
])
def test_phase_timeout_setting(setting, expected):
    from rayrlhf.faults import fixed_deadlines, phase_timeout_problem

    assert fixed_deadlines(setting) == expected
    assert phase_timeout_problem(setting) is None


def test_phase_timeouts_and_injected_faults_are_checked_in_the_config():
    from rayrlhf.config import compose_config
    from rayrlhf.config.validate import ConfigValueError, validate_config
    from rayrlhf.faults import PhaseDeadlines

    def composed(*overrides):
        return compose_config("ppo_lag", ["+experiment=synthetic", *overrides])

    cfg = composed("faults.phase_timeout_s={train:600,sync:30}", "faults.phase_timeout_min_s=5")
    validate_config(cfg)
    deadlines = PhaseDeadlines.from_config(cfg.faults)
    assert (deadlines.seconds("train"), deadlines.seconds("sync"), deadlines.seconds("score")) == (600, 30, 1800)
    deadlines.measured("score", 0.1)
    assert deadlines.seconds("score") == 5.0
    with pytest.raises(ConfigValueError) as info:
        validate_config(composed("faults.phase_timeout_s={trian:600}", "faults.phase_timeout_factor=0.5",
                                 "faults.inject=[policy-0.train_step:explode:1]"))
    message = str(info.value)
    assert "faults.phase_timeout_s" in message and "names no phase: trian" in message
    assert "faults.phase_timeout_factor=0.5: must be > 1" in message
    assert "unknown action 'explode'" in message
    with pytest.raises(ConfigValueError, match="must be seconds >= 0"):
        validate_config(composed("faults.phase_timeout_s=-1"))


# ------------------------------------------------------------------ failure kinds
def raised_in_worker(error: BaseException) -> BaseException:
    """The exception ``ray.get`` raises for ``error`` raised inside an actor's method (Ray's own
    wrapping, as its worker does it), noted as ``get_fail_fast`` notes it."""
    from ray.exceptions import RayTaskError

    from rayrlhf.faults import blame_actor

    wrapped = RayTaskError("PolicyWorker.train", "Traceback (most recent call last): ...", error).as_instanceof_cause()
    blame_actor(wrapped, "ab" * 16)
    return wrapped


def test_failures_are_classified_by_what_the_worker_raised():
    import errno

    import torch.distributed as dist
    from ray import exceptions as rex

    from rayrlhf.faults import FAILURES, PhaseTimeoutError, classify_failure, failed_actors, name_actors

    cases = {
        "disk_full": [raised_in_worker(OSError(errno.ENOSPC, "No space left on device")),
                      raised_in_worker(OSError(errno.EDQUOT, "Disk quota exceeded")),
                      OSError(errno.ENOSPC, "No space left on device", "metrics.jsonl"),  # the driver's own write
                      rex.OutOfDiskError("spill folder full")],
        "accelerator_oom": [raised_in_worker(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))],
        "collective_failed": [raised_in_worker(dist.DistBackendError("Watchdog caught collective operation timeout")),
                              raised_in_worker(RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by "
                                                            "peer [127.0.0.1]:29500"))],
        "object_store_full": [rex.ObjectStoreFullError("object store full"),
                              raised_in_worker(rex.ObjectStoreFullError("object store full"))],
        "object_lost": [rex.ObjectLostError("ab" * 14, "owner", "call site"),
                        rex.OwnerDiedError("ab" * 14, "owner", "call site")],
        "worker_died": [rex.ActorDiedError(), rex.WorkerCrashedError()],
        "worker_hung": [PhaseTimeoutError("train", 30.0, ["cd" * 16])],
        "task_error": [raised_in_worker(ValueError("shapes do not match")), raised_in_worker(KeyError("x"))],
    }
    assert set(cases) == set(FAILURES)
    for kind, errors in cases.items():
        for error in errors:
            assert classify_failure(error) == kind, (kind, repr(error))
    # The driver's own errors are no worker fault: they propagate unchanged.
    assert classify_failure(NonFiniteError("NaN")) is None
    assert classify_failure(ValueError("bad config")) is None
    assert classify_failure(OSError(errno.EACCES, "Permission denied")) is None
    # Restart only where a rebuild can cure it.
    assert {k for k, f in FAILURES.items() if f.restart} == {
        "worker_died", "worker_hung", "object_store_full", "object_lost", "collective_failed"}
    # Which actors: the one whose call failed, or every one that had not answered.
    names = {"ab" * 16: "policy-0", "cd" * 16: "rollout-0"}
    assert failed_actors(name_actors(raised_in_worker(ValueError("x")), names)) == ["policy-0"]
    assert failed_actors(name_actors(PhaseTimeoutError("sync", 9.0, ["cd" * 16, "ef" * 16]), names)) == [
        "rollout-0", "actor " + "ef" * 6]
    assert failed_actors(rex.ObjectStoreFullError("full")) == ["a worker"]



# ------------------------------------------------------------------ fault injection
def test_injected_faults_are_parsed_and_fire_once_per_run(tmp_path, monkeypatch):
    from rayrlhf import fault_injection

    with pytest.raises(ValueError, match="unknown point 'trian_step'"):
        fault_injection.parse_fault("policy-0.trian_step:hang:1")
    with pytest.raises(ValueError, match="N <= M"):
        fault_injection.parse_fault("policy-0.loss:nan:4-2")
    assert fault_injection.parse_fault("rollout-0.update_weights:kill:3") == fault_injection.Fault(
        "rollout-0", "update_weights", "kill", 3, 3)

    env = fault_injection.injection_env(["policy-0.loss:nan:2-3", "reward-critic-0.loss:nan:1"], tmp_path)
    monkeypatch.setenv(fault_injection.ENV, env[fault_injection.ENV])
    monkeypatch.setattr(fault_injection, "_calls", {})
    monkeypatch.setattr(fault_injection, "_actor_name", lambda: "policy-0")  # as if inside that actor
    assert [fault_injection.inject_fault("loss") for _ in range(4)] == [None, "nan", "nan", None]
    assert set(fault_injection.fired(tmp_path)) == {"policy-0.loss.nan.2", "policy-0.loss.nan.3"}
    monkeypatch.setattr(fault_injection, "_calls", {})  # a rebuilt worker counts from 1 again
    assert [fault_injection.inject_fault("loss") for _ in range(4)] == [None, None, None, None]
    monkeypatch.delenv(fault_injection.ENV)
    assert fault_injection.inject_fault("loss") is None  # off: nothing is read
    with pytest.raises(OSError, match="No space left") as info:
        fault_injection.ACTIONS["enospc"]()
    assert info.value.errno == 28


def test_failures_a_restart_cannot_cure_stop_with_what_to_do(tmp_path):
    """A full disk during a save and CUDA out of memory in train stop the run at once (no
    restart is counted), naming the worker, the step and what to do; a hung worker is recorded
    with the workers that had not answered and restarts, until faults.max_restarts is spent."""
    import errno

    from rayrlhf.config import compose_config
    from rayrlhf.faults import PhaseTimeoutError, WorkerFailedError, name_actors
    from rayrlhf.trainers.ppo_lag import handle_failure

    cfg = compose_config("ppo_lag", ["+experiment=synthetic", "faults.max_restarts=1"], output_dir=str(tmp_path))
    log = FaultLog(tmp_path / "faults.jsonl")
    names = {"ab" * 16: "critic-0", "cd" * 16: "policy-0"}
    checkpoint = tmp_path / "checkpoints" / "step_000004"

    def fail(error, kind, phase, restarts=0):
        error.rayrlhf_phase = phase
        handle_failure(name_actors(error, names), kind, 4, restarts=restarts, resume_point=checkpoint,
                       fault_log=log, cfg=cfg, out=tmp_path)

    with pytest.raises(WorkerFailedError, match=r"critic-0 failed while saving after step 4: a disk is full .*"
                                                r"OSError: \[Errno 28\] No space left.*Free space there.*step_000004"):
        fail(raised_in_worker(OSError(errno.ENOSPC, "No space left on device")), "disk_full", "save")
    oom = raised_in_worker(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    oom.rayrlhf_actor_id = "cd" * 16
    with pytest.raises(WorkerFailedError, match=r"policy-0 failed during step 5 \(train\): CUDA out of memory.*"
                                                r"Lower ppo.minibatch_size"):
        fail(oom, "accelerator_oom", "train")
    fail(PhaseTimeoutError("sync", 30.0, ["cd" * 16]), "worker_hung", "sync", restarts=1)  # returns: restart
    with pytest.raises(WorkerFailedError, match=r"policy-0 did not answer within 30 s during step 5 \(sync\) \(hung\)"
                                                r".*gave up after faults.max_restarts=1"):
        fail(PhaseTimeoutError("sync", 30.0, ["cd" * 16]), "worker_hung", "sync", restarts=2)
    rows = [json.loads(line) for line in (tmp_path / "faults.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["action"], r["step"], r["actor"]) for r in rows] == [
        ("disk_full", "stop", 4, "critic-0"), ("accelerator_oom", "stop", 5, "policy-0"),
        ("worker_hung", "restart", 5, "policy-0"), ("worker_hung", "restart", 5, "policy-0")]
    assert rows[2]["not_answered"] == ["policy-0"] and rows[2]["resume_from"] == str(checkpoint)
