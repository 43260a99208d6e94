"""User mistakes (a misspelled key, a wrong type, an impossible value, a missing mandatory value,
a bad data row, a path that does not exist) told in one line each, with a guess where one helps.

``rayrlhf <stage>`` prints :func:`explain` instead of a traceback for the exceptions
:func:`is_user_mistake` accepts; ``HYDRA_FULL_ERROR=1`` brings the traceback back. Anything
else is a bug or a failure of the machine, and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any, Iterator

from rayrlhf.config.groups import group_options, stage_groups
from rayrlhf.config.validate import ConfigValueError
from rayrlhf.data.errors import DataValidationError


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        yield exc
        exc = exc.__cause__ or exc.__context__


def _hydra_config_errors() -> tuple[type, ...]:
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    return ConfigCompositionException, MissingConfigException, OmegaConfBaseException


def is_user_mistake(exc: BaseException) -> bool:
    """True for errors a user fixes by changing the command line, a config or a data file."""
    mistakes = (ConfigValueError, DataValidationError, FileNotFoundError, *_hydra_config_errors())
    return any(isinstance(e, mistakes) for e in _chain(exc))


# --------------------------------------------------------------------------- key guesses
def _dataclass_of(annotation: Any) -> type | None:
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):  # Optional[DatasetConfig]
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def schema_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of a schema dataclass, nested sections included (``rollout.top_p``)."""
    from rayrlhf.config.schema import LAGRANGE_SCHEMAS

    hints = typing.get_type_hints(schema)
    keys = []
    for f in dataclasses.fields(schema):
        if f.name.startswith("_"):
            continue
        keys.append(prefix + f.name)
        nested = _dataclass_of(hints.get(f.name))
        if nested is not None:
            keys += schema_keys(nested, f"{prefix}{f.name}.")
        elif f.name == "lagrange":  # a group node: the union of its options' keys
            for option in LAGRANGE_SCHEMAS.values():
                keys += [k for k in schema_keys(option, f"{prefix}lagrange.") if k not in keys]
    return keys


def suggest_key(bad_key: str, schema: type | None) -> str | None:
    """The key ``bad_key`` most likely meant: a close spelling in the same section, or the
    same name one section down (``num_engines`` for ``rollout.num_engines``)."""
    if schema is None:
        return None
    parent, _, name = bad_key.rpartition(".")
    siblings = [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        return f"{parent}.{close[0]}" if parent else close[0]
    nested = [k for k in schema_keys(schema) if k.rpartition(".")[2] == name and "." in k]
    if nested:
        return f"{parent}.{nested[0]}" if parent else nested[0]
    return None


# --------------------------------------------------------------------------- one line each
def _first(exc: BaseException, kind: type | tuple[type, ...]) -> Any:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def _omegaconf_line(error, override: str | None, config_name: str | None) -> str:
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

    key = error.full_key or error.key or "?"
    if isinstance(error, (ConfigAttributeError, ConfigKeyError)):
        guess = suggest_key(str(key), error.object_type)
        line = f"unknown key '{key}'" + (f" (did you mean '{guess}'?)" if guess else "")
        if guess is None and str(key).startswith("lagrange."):
            line += f"; {_other_lagrange_option(str(key))}"
        return line
    if isinstance(error, MissingMandatoryValue):
        return f"'{key}' has no value (???): set it, e.g. {key}=..."
    message = (error.msg or str(error)).splitlines()[0]
    if isinstance(error, ValidationError) and config_name:
        hint = _group_hint(str(key), error.value if error.value is not None else override, config_name)
        if hint:
            return hint
    return f"'{key}': {message}"


def _other_lagrange_option(key: str) -> str:
    from rayrlhf.config.schema import LAGRANGE_SCHEMAS

    name = key.rpartition(".")[2]
    owners = [option for option, schema in LAGRANGE_SCHEMAS.items()
              if name in {f.name for f in dataclasses.fields(schema)}]
    if owners:
        return f"it is a key of {' and '.join(f'lagrange={o}' for o in owners)}: choose that controller first"
    return "`--cfg job` lists the keys of the chosen controller"


def _group_hint(key: str, value: Any, config_name: str) -> str | None:
    """``prompts=shared_x`` where ``prompts`` is filled from the dataset group: say the
    override that works (``dataset@prompts=shared_x``)."""
    for choice in stage_groups(config_name):
        if key in (choice.package, choice.group) and choice.package:
            options = group_options(choice.group)
            value = str(value).rpartition("=")[2] if value is not None else "<option>"
            known = value in options
            return (f"'{key}' is chosen from the {choice.group} group: write {choice.override}={value}"
                    + ("" if known else f" (options: {', '.join(options)})")
                    + f", or set single keys as {key}.<key>=...")
    return None


_MISSING_OPTION = re.compile(r"Could not find '(?P<group>[^']+)/(?P<option>[^']+)'")


def _missing_option_line(message: str) -> str:
    found = _MISSING_OPTION.search(message)
    if not found:
        return " ".join(message.split())
    group, option = found["group"], found["option"]
    try:
        options = group_options(group)
    except OSError:
        options = []
    guess = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
    return (f"no option '{option}' in config group '{group}'" + (f" (did you mean '{guess[0]}'?)" if guess else "")
            + (f"; options: {', '.join(options)}" if options else ""))


def explain(exc: BaseException, config_name: str | None = None) -> list[str]:
    """The mistake in as few lines as it has parts: one per bad value, else one."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    values = _first(exc, ConfigValueError)
    if values is not None:
        return [f"{key}={value!r}: {why}" for key, value, why in values.problems]
    data = _first(exc, DataValidationError)
    if data is not None:
        return [str(data)]
    missing = _first(exc, MissingConfigException)
    if missing is not None:
        return [_missing_option_line(str(missing))]
    omegaconf_error = _first(exc, OmegaConfBaseException)
    if omegaconf_error is not None:
        override = re.search(r"override (\S+)", str(exc))
        return [_omegaconf_line(omegaconf_error, override and override.group(1), config_name)]
    return [" ".join(str(exc).split()) or type(exc).__name__]
