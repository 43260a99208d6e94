"""Compose a stage's config outside a Hydra app (tests, notebooks, the pipeline stage)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from rayrlhf import paths
from rayrlhf.config.schema import register_configs


def compose_config(stage_config: str, overrides: list[str] | None = None, *,
                   output_dir: str | None = None) -> DictConfig:
    """The same config ``rayrlhf <stage> overrides...`` would see.

    ``run.output_dir`` normally points at Hydra's run folder, which exists only inside a Hydra
    app; pass ``output_dir`` to set it when composing by hand.
    """
    from hydra import compose, initialize_config_dir

    register_configs()
    overrides = list(overrides or [])
    if output_dir is not None:
        overrides.append(f"run.output_dir={output_dir}")
    with initialize_config_dir(config_dir=str(paths.conf_dir()), version_base="1.3"):
        return compose(config_name=stage_config, overrides=overrides)


def to_object(cfg: Any) -> Any:
    """The config as its typed dataclass (every interpolation resolved, types checked); a
    config that already is one passes through, so entry points accept either."""
    return OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg


def config_error_message(exc: BaseException) -> str:
    """Hydra wraps OmegaConf's precise message (key, type, file) in layers; unwrap it."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(str(e) for e in seen if str(e))
