"""Reading settings: a config file (YAML, TOML or JSON; ``extends`` another file or a shipped
preset) and a mapping of settings applied onto the settings dataclasses, every value coerced
to its field's declared type (``typing.get_type_hints``), unknown names refused in one
sentence."""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from harness.errors import UserError

PRESETS = Path(__file__).resolve().parent / "presets"
# option aliases: a run-level name (comet_model) -> the (suite, option) pairs it sets
Aliases = Mapping[str, list[tuple[str, str]]]


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp)) if not typing.get_args(tp) else str(tp).replace("typing.", "")


def _scalar(value: Any, tp: Any) -> Any:
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return bool(value)
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if tp is str:
        return str(value)
    return value


def coerce(value: Any, tp: Any, name: str) -> Any:
    """A YAML, TOML or command-line value as the field's type: optional and union types, lists
    and tuples (a comma-separated string too) of int, float, bool or str; anything else as given."""
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            return coerce(value, inner[0], name) if len(inner) == 1 else value
        if origin in (list, tuple):
            items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
            items = [i.strip() if isinstance(i, str) else i for i in items if i != ""]
            items = [_scalar(i, args[0] if args else str) for i in items]
            return tuple(items) if origin is tuple else items
        return _scalar(value, tp)
    except (TypeError, ValueError):
        raise UserError(f"Setting '{name}' got {value!r}, which is not a valid {_type_name(tp)}; fix the value.") from None


def apply_settings(obj: Any, settings: dict[str, Any], where: str, aliases: Aliases | None = None) -> None:
    """Set dataclass fields from a mapping, recursing into nested settings, rejecting unknown keys.

    ``aliases``: at the top of a run's settings, a key that is a suite option's alias
    (``comet_model``, ``judge``, ...) sets that option of every suite that declares it
    (``harness.plugins.registry.suite_aliases``, passed in by the run's caller)."""
    if not isinstance(settings, dict):
        raise UserError(f"The settings in {where} must be a mapping of names to values.")
    known = {f.name: f for f in fields(obj)}
    hints = _hints(type(obj))
    for key, value in settings.items():
        name = str(key).replace("-", "_")
        targets = (aliases or {}).get(name) if name not in known else None
        if targets:
            apply_settings(obj, {"suite_options": {suite: {option: value} for suite, option in targets}}, where)
            continue
        if name not in known:
            raise UserError(f"Unknown setting '{key}' in {where}; "
                            + (f"known settings: {', '.join(sorted(known))}." if known else "it has no settings."))
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"Setting '{key}' in {where} must be a mapping of its sub-settings.")
            apply_settings(current, value, f"{where} [{key}]")
        elif name in ("method_options", "suite_options", "sweep"):
            if not isinstance(value, dict):
                raise UserError(f"Setting '{key}' in {where} must map names to settings.")
            merged = dict(current)
            for sub, opts in value.items():
                if name == "sweep":
                    merged[str(sub)] = opts.split(",") if isinstance(opts, str) else list(opts if isinstance(opts, (list, tuple)) else [opts])
                    continue
                if opts is not None and not isinstance(opts, dict):
                    raise UserError(f"Setting '{key}.{sub}' in {where} must map option names to values.")
                merged[sub] = {**merged.get(sub, {}), **(opts or {})}
            setattr(obj, name, merged)
        elif name == "methods":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise UserError(f"Setting 'methods' in {where} must be a list of method names or entries.")
            setattr(obj, name, [i.strip() if isinstance(i, str) else i for i in items if i != ""])
        else:
            setattr(obj, name, coerce(value, hints[name], key))


def presets() -> list[str]:
    """Names of the config files shipped with radis-bench (``--config paper``)."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def resolve_config_path(name: str | Path) -> Path:
    """``--config`` as given: a file path, or the name of a shipped preset."""
    path = Path(name)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1 and (PRESETS / f"{path}.yaml").exists():
        return PRESETS / f"{path}.yaml"
    return path


def read_config_file(path: str | Path, _seen: tuple = ()) -> dict[str, Any]:
    """A config file's settings; ``extends: <preset or path>`` starts from another file's
    settings (nested sections merged, this file's values win)."""
    path = resolve_config_path(path)
    if not path.exists():
        raise UserError(f"Config file {path} does not exist; check --config (presets: {', '.join(presets())}).")
    if not path.is_file():
        raise UserError(f"Config file {path} is a folder, not a file; give the YAML or TOML file itself.")
    if not os.access(path, os.R_OK):
        raise UserError(f"Config file {path} is not readable; check its permissions.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml", ".json"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UserError(f"Config file {path} must end in .yaml, .yml, .toml or .json.")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"Config file {path} could not be parsed: {str(err).splitlines()[0]}; fix its syntax.") from None
    if not isinstance(data, dict):
        raise UserError(f"Config file {path} must hold a mapping of settings at its top level.")
    base = data.pop("extends", None)
    if base is not None:
        if str(base) in _seen:
            raise UserError(f"Config file {path}: 'extends: {base}' makes a cycle; remove it.")
        data = _merge(read_config_file(base, _seen + (str(base),)), data)
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
