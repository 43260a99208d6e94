"""``rayrlhf <stage> [hydra overrides...]``: one Hydra app per pipeline stage.

The stages (``rayrlhf.stages.STAGES``) name their primary config in ``conf/`` and the
function that runs it. A stage's module is imported inside its Hydra app, after the overrides
composed and validated, so ``--help``, ``--cfg job`` and a typo answer in well under a second
instead of after torch, Ray and vLLM load.

A user's mistake (a misspelled key, a wrong type, an impossible or missing value, a bad data
row, a path that does not exist) is printed as one line per problem, with a guess where one
helps; ``HYDRA_FULL_ERROR=1`` prints the traceback instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from rayrlhf import paths
from rayrlhf.stages import STAGES

FULL_ERROR = "HYDRA_FULL_ERROR"
HELP_FLAGS = ("-h", "--help")


def usage() -> str:
    width = max(len(name) for name in STAGES)
    lines = [
        "usage: rayrlhf <stage> [key=value ...] [hydra flags: --cfg job, --multirun, --help]",
        "",
        "Stages (each a Hydra app; `rayrlhf <stage> --help` shows its config):",
    ]
    lines += [f"  {name.ljust(width)}  {stage.summary}" for name, stage in STAGES.items()]
    lines += ["", "Ray jobs: rayrlhf submit [--address URL] [--runs-dir DIR] [--runtime-env FILE] [--no-wait] "
              "-- <stage> key=value ...",
              "  runs a stage on a running Ray cluster; with --multirun, every trial as its own Ray job "
              "(`rayrlhf submit --help`)",
              "Sweeps on a cluster: rayrlhf sweep -- <stage> a=1,2 ...  (trials in parallel, then sweep-report)"]
    lines += ["", f"Configs: {paths.conf_dir()}"]
    return "\n".join(lines)


def stage_help(name: str, argv: list[str]) -> str:
    """``rayrlhf <stage> --help``: what the stage does, how to choose each config group's
    option (the syntax differs by group), the presets, and the composed config."""
    from omegaconf import OmegaConf

    from rayrlhf.config import compose_config
    from rayrlhf.config.groups import group_options, stage_groups

    stage = STAGES[name]
    overrides = [a for a in argv if a not in HELP_FLAGS and not a.startswith("-")]
    cfg = compose_config(stage.config_name, overrides)
    groups = stage_groups(stage.config_name)
    width = max([len(g.override) for g in groups] + [len(f"+{p}") for p in stage.presets] + [8]) + 11
    lines = [f"rayrlhf {name}: {stage.summary}", "",
             f"usage: rayrlhf {name} [key=value ...] [group=option ...] [--cfg job] [--multirun] [--help]", ""]
    if groups or stage.presets:
        lines += ["Config groups: pick an option with the override shown (the default is marked *):"]
        for g in groups:
            options = " ".join(f"{o}*" if o == g.default else o for o in group_options(g.group))
            lines.append(f"  {(g.override + '=<option>').ljust(width)}{options}")
        for preset in stage.presets:
            lines.append(f"  {('+' + preset + '=<name>').ljust(width)}{' '.join(group_options(preset))}  (a preset)")
        lines += ["  Keys inside a chosen option are set as usual, e.g. "
                  + (f"{groups[0].package or groups[0].group}.<key>=value." if groups else "<key>=value."), ""]
    lines += ["Config (set any key with key=value; lists as key=[a,b]):", "",
              OmegaConf.to_yaml(cfg, resolve=False).rstrip(), "",
              f"Hydra's own flags: rayrlhf {name} --hydra-help.  Configs: {paths.conf_dir()}"]
    return "\n".join(lines)


def resolve_target(target: str):
    import importlib

    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


@contextlib.contextmanager
def exceptions_raised():
    """Let Hydra raise what it would print (it prints tracebacks of user mistakes); ours to report."""
    before = os.environ.get(FULL_ERROR)
    os.environ[FULL_ERROR] = "1"
    try:
        yield before == "1"
    finally:
        if before is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = before


def run_stage(name: str, argv: list[str]) -> None:
    """Run stage ``name`` as a Hydra app over the overrides in ``argv``."""
    import hydra

    from rayrlhf.config import register_configs

    stage = STAGES[name]
    register_configs()

    @hydra.main(config_path=str(paths.conf_dir()), config_name=stage.config_name, version_base="1.3")
    def app(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from rayrlhf import logs
        from rayrlhf.cluster import release_ray
        from rayrlhf.config import to_object
        from rayrlhf.config.mistakes import is_user_mistake
        from rayrlhf.config.validate import validate_config
        from rayrlhf.eval.sweep import failure_line

        logs.configure(cfg.run.log_level, cfg.run.verbose)
        try:
            validate_config(cfg)  # impossible or missing values fail here, before any Ray worker starts
            run = resolve_target(stage.target)  # the heavy imports (torch, Ray) happen only now
            run(to_object(cfg))  # the stage's typed dataclass
        except Exception as exc:
            # Hydra keeps a failed job's exception to itself; the job's own log must say why it
            # stopped (sweep-report reads this line to mark the trial as failed).
            if not is_user_mistake(exc):
                logging.getLogger("rayrlhf.cli").error(failure_line(name, exc), exc_info=True)
                raise
            log_to_files(failure_line(name, exc))  # the console gets `explain`'s lines instead
            if HydraConfig.get().mode == RunMode.RUN and not full_error:
                raise UserMistakeExit(exc) from exc  # past Hydra's "Error executing job" banner
            raise  # a multirun goes on with its other trials
        finally:
            # A multirun runs its trials in this process: each starts its own local cluster.
            release_ray()

    # Hydra reads sys.argv. Each stage's YAML sets hydra.job.name, which names its run folder.
    sys.argv = [f"rayrlhf {name}", *argv]
    with exceptions_raised() as full_error:
        try:
            app()
        except (Exception, UserMistakeExit) as exc:
            from rayrlhf.config.mistakes import explain, is_user_mistake

            mistake = exc.mistake if isinstance(exc, UserMistakeExit) else exc
            if full_error or not is_user_mistake(mistake):
                raise
            for line in explain(mistake, stage.config_name):
                print(f"rayrlhf {name}: {line}", file=sys.stderr)
            print(f"rayrlhf {name}: (set {FULL_ERROR}=1 for the traceback; `rayrlhf {name} --help` lists "
                  "the keys and groups)", file=sys.stderr)
            raise SystemExit(2) from None


class UserMistakeExit(SystemExit):
    """Carries a user's mistake out of a Hydra app (Hydra reports only ``Exception``s)."""

    def __init__(self, mistake: BaseException) -> None:
        super().__init__(2)
        self.mistake = mistake


def log_to_files(line: str) -> None:
    """An ERROR line into the log files of the root logger (the run's Hydra log), not the console."""
    root = logging.getLogger()
    record = root.makeRecord("rayrlhf.cli", logging.ERROR, __file__, 0, line, None, None)
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name == "submit":  # not a Hydra app: it ships a stage's overrides to a Ray cluster
        from rayrlhf.submit import main as submit_main

        raise SystemExit(submit_main(rest))
    if name == "sweep":  # runs a multirun's trials as parallel Ray drivers, then sweep-report
        from rayrlhf.sweep_jobs import main as sweep_main

        raise SystemExit(sweep_main(rest))
    if name not in STAGES:
        import difflib

        guess = difflib.get_close_matches(name, [*STAGES, "submit", "sweep"], n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        print(f"rayrlhf: unknown stage {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    if any(flag in rest for flag in HELP_FLAGS):
        try:
            with exceptions_raised():
                print(stage_help(name, rest))
        except Exception as exc:
            from rayrlhf.config.mistakes import explain, is_user_mistake

            if not is_user_mistake(exc):
                raise
            print("\n".join(f"rayrlhf {name}: {line}" for line in explain(exc, STAGES[name].config_name)),
                  file=sys.stderr)
            raise SystemExit(2) from None
        return
    logging.basicConfig(level=logging.INFO)
    run_stage(name, rest)


if __name__ == "__main__":
    main()
