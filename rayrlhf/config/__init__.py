"""Typed configuration: dataclass schemas (``schema.py``) and Hydra composition helpers."""

from rayrlhf.config.compose import compose_config, config_error_message, to_object
from rayrlhf.config.schema import SCHEMAS, register_configs

__all__ = ["SCHEMAS", "compose_config", "config_error_message", "register_configs", "to_object"]
