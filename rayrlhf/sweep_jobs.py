"""``rayrlhf sweep``: a multirun's trials in parallel on a running Ray cluster, then its report.

    rayrlhf sweep [--max-parallel N] -- ppo-lag cluster=existing +experiment=synthetic lagrange.threshold=-0.1,0,0.1

Hydra's own ``--multirun`` trains one trial after another in one process. Here every trial is
its own ``python -m rayrlhf.cli <stage> ...`` process, so its own Ray driver (its own Ray job),
joining the cluster this command runs in; as many run at once as the cluster's CPUs hold
(``--max-parallel`` overrides), and the rest wait their turn, so no trial waits half-placed
for CPUs another holds. Trials write where a Hydra multirun would
(``<runs dir>/<stage>-sweep/<time>/<n>/`` with ``.hydra/overrides.yaml``, ``metrics.jsonl`` and
the trial's console output in ``console.log``), ``trials.json`` records each trial's overrides,
start, end and exit code, and ``sweep-report`` runs over the folder at the end, failed trials
included. ``rayrlhf submit -- <stage> --multirun ...`` runs this command as the cluster job.

The runs directory must be one every node sees (``RAYRLHF_RUNS_DIR`` or ``--runs-dir``): a
relative one would be each job's temporary working directory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

from rayrlhf import paths
from rayrlhf.stages import STAGES

LAUNCHER = [sys.executable, "-m", "rayrlhf.cli"]
SWEEP_FLAGS = ("--multirun", "-m")
POLL_S = 1.0


class SweepError(ValueError):
    """A sweep that cannot run, found before any trial starts."""


def expand_trials(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra's sweep syntax (``a=1,2 b=range(0,3)``, ``glob``, ``choice``) expanded into the
    override list of every trial, in the order a Hydra multirun numbers them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([o for o in overrides if o not in SWEEP_FLAGS])
    (trials,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return trials


def check_trials(stage: str, trials: list[list[str]]) -> list:
    """Compose and validate every trial (typos, types, impossible or missing values): the
    composed configs, or SweepError naming the trial and its problem."""
    from rayrlhf.config import compose_config
    from rayrlhf.config.mistakes import explain, is_user_mistake
    from rayrlhf.config.validate import validate_config

    configs = []
    for number, trial in enumerate(trials):
        try:
            cfg = compose_config(STAGES[stage].config_name, trial, output_dir="/tmp/rayrlhf-sweep-check")
            validate_config(cfg)
        except Exception as exc:
            if not is_user_mistake(exc):
                raise
            raise SweepError(f"trial {number} ({' '.join(trial)}): " + "; ".join(explain(exc, STAGES[stage].config_name))) \
                from exc
        configs.append(cfg)
    return configs


def job_name(stage: str) -> str:
    """The name a stage's runs are filed under (its YAML's ``hydra.job.name``)."""
    import yaml

    loaded = yaml.safe_load((paths.conf_dir() / f"{STAGES[stage].config_name}.yaml").read_text(encoding="utf-8"))
    return ((loaded or {}).get("hydra") or {}).get("job", {}).get("name", stage)


def new_sweep_dir(runs_dir: Path, stage: str) -> Path:
    """``<runs>/<stage>-sweep/<time>``, a new folder (``_1``, ``_2`` ... when taken)."""
    base = runs_dir / f"{job_name(stage)}-sweep" / time.strftime("%Y-%m-%d_%H-%M-%S")
    for suffix in range(1000):
        candidate = base if suffix == 0 else base.with_name(f"{base.name}_{suffix}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise SweepError(f"no free sweep folder next to {base}")


def runs_dir_from(given: str | None) -> Path:
    """The shared runs directory: ``--runs-dir``, else ``RAYRLHF_RUNS_DIR``; absolute either way."""
    value = given or os.environ.get("RAYRLHF_RUNS_DIR")
    if not value:
        raise SweepError("no runs directory: pass --runs-dir (rayrlhf submit --runs-dir) or set RAYRLHF_RUNS_DIR "
                         "to a folder every node of the cluster sees; the trials and their report go there")
    path = Path(value)
    if not path.is_absolute():
        raise SweepError(f"runs directory {value!r} is relative: on a cluster it would be each job's temporary "
                         "working directory; give an absolute path on a shared volume")
    return path


def trial_cpus(cfg) -> float:
    """Logical CPUs one trial holds at once (its stage's actors or Ray Train workers)."""
    from rayrlhf.cluster import stage_cpu_need

    return stage_cpu_need(cfg)[0]


def parallel_trials(need: float, cluster_cpus: float, trials: int) -> int:
    """How many trials fit on the cluster at once (at least one: a trial bigger than the
    cluster waits for the autoscaler, as a single run would)."""
    if need <= 0:
        return trials
    return max(1, min(trials, math.floor(cluster_cpus / need + 1e-9)))


def cluster_cpus() -> float:
    """CPUs of the Ray cluster this process runs in (a submitted job: the job's cluster)."""
    import ray

    ray.init(address="auto", log_to_driver=False, logging_level="WARNING")
    try:
        return float(ray.cluster_resources().get("CPU", 0.0))
    finally:
        ray.shutdown()


@dataclass
class Trial:
    number: int
    overrides: list[str]
    folder: str
    started: float | None = None
    ended: float | None = None
    returncode: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def record(self) -> dict:
        # Not asdict: it deep-copies every field first, and the process holds a lock.
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "process"}


def start_trial(stage: str, trial: Trial, env: dict[str, str]) -> None:
    folder = Path(trial.folder)
    folder.mkdir(parents=True, exist_ok=True)
    command = [*LAUNCHER, stage, *trial.overrides, f"hydra.run.dir={folder}"]
    with open(folder / "console.log", "w", encoding="utf-8") as console:
        trial.process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
    trial.started = time.time()


def run_trials(stage: str, trials: list[Trial], max_parallel: int, *, out=None) -> list[Trial]:
    """Run the trials, ``max_parallel`` at a time, in order; wait for all."""
    out = out or sys.stdout
    env = dict(os.environ)
    waiting, running = list(trials), []
    while waiting or running:
        while waiting and len(running) < max_parallel:
            trial = waiting.pop(0)
            start_trial(stage, trial, env)
            running.append(trial)
            print(f"sweep: trial {trial.number} started: {' '.join(trial.overrides)}", file=out, flush=True)
        time.sleep(POLL_S)
        for trial in list(running):
            code = trial.process.poll()
            if code is None:
                continue
            trial.returncode, trial.ended = code, time.time()
            running.remove(trial)
            verdict = "finished" if code == 0 else f"FAILED (exit {code}; see {trial.folder}/console.log)"
            print(f"sweep: trial {trial.number} {verdict} after {trial.ended - trial.started:.0f} s",
                  file=out, flush=True)
    return trials


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="rayrlhf sweep", description="Run a multirun's trials in parallel on this Ray cluster, then "
                                          "sweep-report. Overrides take Hydra's sweep syntax (a=1,2).")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="trials at once (default: as many as the cluster's CPUs hold)")
    parser.add_argument("--runs-dir", default=None,
                        help="shared runs folder for the sweep (default: $RAYRLHF_RUNS_DIR)")
    parser.add_argument("--last-k", type=int, default=5, help="sweep-report: steps each trial is averaged over")
    args = parser.parse_args(argv[:split])
    job = argv[split + 1:]
    if not job:
        raise SweepError("usage: rayrlhf sweep [options] -- <stage> key=a,b ... (no stage after `--`)")
    args.stage, args.overrides = job[0], [o for o in job[1:] if o not in SWEEP_FLAGS]
    if args.stage not in STAGES:
        raise SweepError(f"unknown stage {args.stage!r}; choose one of {', '.join(STAGES)}")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise SweepError(f"--max-parallel must be >= 1, got {args.max_parallel}")
    return args


def main(argv: Sequence[str]) -> int:
    """``rayrlhf sweep ...``; 0 when every trial succeeded and the report was written."""
    try:
        args = parse_args(argv)
        trials_overrides = expand_trials(args.overrides)
        configs = check_trials(args.stage, trials_overrides)
        if any(getattr(cfg, "cluster", None) is not None and cfg.cluster.address is None for cfg in configs):
            raise SweepError("parallel trials share one running cluster: add cluster=existing (or an address); "
                             "each trial on its own local cluster is `rayrlhf <stage> --multirun`")
        runs_dir = runs_dir_from(args.runs_dir)
        need = max(trial_cpus(cfg) for cfg in configs)
        max_parallel = args.max_parallel or parallel_trials(need, cluster_cpus(), len(configs))
    except SweepError as exc:
        print(f"rayrlhf sweep: {exc}", file=sys.stderr)
        return 2
    os.environ["RAYRLHF_RUNS_DIR"] = str(runs_dir)  # the trials and sweep-report file their runs there too
    sweep_dir = new_sweep_dir(runs_dir, args.stage)
    print(f"sweep: {len(trials_overrides)} trials of `rayrlhf {args.stage}` into {sweep_dir}, "
          f"{max_parallel} at a time ({need:g} CPUs each)", flush=True)
    trials = [Trial(n, overrides, str(sweep_dir / str(n))) for n, overrides in enumerate(trials_overrides)]
    try:
        run_trials(args.stage, trials, max_parallel)
    finally:
        (sweep_dir / "trials.json").write_text(json.dumps([t.record() for t in trials], indent=2) + "\n")
    report = subprocess.run([*LAUNCHER, "sweep-report", f"sweep_dir={sweep_dir}", f"last_k={args.last_k}"])
    failed = [t.number for t in trials if t.returncode != 0]
    if failed:
        print(f"sweep: trials {failed} failed; the report lists them", file=sys.stderr)
    return 0 if not failed and report.returncode == 0 else 1
