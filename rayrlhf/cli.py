"""``rayrlhf <stage> [hydra overrides...]``: one Hydra app per pipeline stage.

The stages (``rayrlhf.stages.STAGES``) name their primary config in ``conf/`` and the
function that runs it. Stage modules are imported only when their stage runs, so
``rayrlhf --help`` stays instant.
"""

from __future__ import annotations

import importlib
import logging
import sys

from rayrlhf import paths
from rayrlhf.stages import STAGES


def usage() -> str:
    width = max(len(name) for name in STAGES)
    lines = [
        "usage: rayrlhf <stage> [key=value ...] [hydra flags: --cfg job, --multirun, --help]",
        "",
        "Stages (each a Hydra app; `rayrlhf <stage> --help` shows its config):",
    ]
    lines += [f"  {name.ljust(width)}  {stage.summary}" for name, stage in STAGES.items()]
    lines += ["", "Ray jobs: rayrlhf submit [--address URL] [--working-dir DIR] [--no-wait] [--pip-lock] "
              "-- <stage> key=value ...",
              "  runs a stage on a running Ray cluster (`rayrlhf submit --help`)"]
    lines += ["", f"Configs: {paths.conf_dir()}"]
    return "\n".join(lines)


def resolve_target(target: str):
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_stage(name: str, argv: list[str]) -> None:
    """Run stage ``name`` as a Hydra app over the overrides in ``argv``."""
    import hydra

    from rayrlhf.config import register_configs, to_object

    stage = STAGES[name]
    register_configs()
    run = resolve_target(stage.target)

    @hydra.main(config_path=str(paths.conf_dir()), config_name=stage.config_name, version_base="1.3")
    def app(cfg) -> None:
        from rayrlhf.cluster import release_ray
        from rayrlhf.config.validate import validate_config
        from rayrlhf.eval.sweep import failure_line

        validate_config(cfg)  # impossible values fail here, before any Ray worker starts
        try:
            run(to_object(cfg))  # the stage's typed dataclass
        except Exception as exc:
            # Hydra keeps a failed job's exception to itself; the job's own log must say why it
            # stopped (sweep-report reads this line to mark the trial as failed).
            logging.getLogger("rayrlhf.cli").error(failure_line(name, exc), exc_info=True)
            raise
        finally:
            # A multirun runs its trials in this process: each starts its own local cluster.
            release_ray()

    # Hydra reads sys.argv. Each stage's YAML sets hydra.job.name, which names its run folder.
    sys.argv = [f"rayrlhf {name}", *argv]
    app()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name == "submit":  # not a Hydra app: it ships a stage's overrides to a Ray cluster
        from rayrlhf.submit import main as submit_main

        raise SystemExit(submit_main(rest))
    if name not in STAGES:
        print(f"rayrlhf: unknown stage {name!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(level=logging.INFO)
    run_stage(name, rest)


if __name__ == "__main__":
    main()
