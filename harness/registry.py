"""Methods and suites plug in by name.

Built-ins register with ``@register_method`` / ``@register_suite`` when their packages
(``radis``, ``baselines``, ``suites``) are imported. Third-party packages add their own
through the entry-point groups ``radis_bench.methods`` and ``radis_bench.suites``: each
entry point names a module (or class) that registers on import, e.g. in pyproject.toml

    [project.entry-points."radis_bench.methods"]
    my_method = "my_package.my_method"
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from harness.errors import UserError

METHOD_GROUP = "radis_bench.methods"
SUITE_GROUP = "radis_bench.suites"
_BUILTIN_PACKAGES = ("baselines", "radis", "suites")

_methods: dict[str, type] = {}
_suites: dict[str, type] = {}
_loaded = False


def register_method(cls):
    _methods[cls.name] = cls
    return cls


def register_suite(cls):
    _suites[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package in _BUILTIN_PACKAGES:
        importlib.import_module(package)
    for group in (METHOD_GROUP, SUITE_GROUP):
        for ep in entry_points(group=group):
            try:
                obj = ep.load()
            except Exception as err:
                raise UserError(f"The plugin entry point '{ep.name}' ({ep.value}) in group {group} failed to load: {err}; fix or uninstall that plugin.") from None
            if isinstance(obj, type):
                (register_method if group == METHOD_GROUP else register_suite)(obj)


def methods() -> dict[str, type]:
    _load()
    return dict(_methods)


def suites() -> dict[str, type]:
    _load()
    return dict(_suites)


def get_method(name: str):
    known = methods()
    if name not in known:
        raise UserError(f"Unknown method '{name}'; known methods: {', '.join(sorted(known))}.")
    return known[name]


def get_suite(name: str):
    known = suites()
    if name not in known:
        raise UserError(f"Unknown suite '{name}'; known suites: {', '.join(sorted(known))}.")
    return known[name]
