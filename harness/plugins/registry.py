"""Methods and suites plug in by name, through package entry points.

Every method and suite, built-in or not, is an entry point of the group
``radis_bench.methods`` or ``radis_bench.suites``; radis-bench's own are listed in its
``pyproject.toml``, a third-party package lists its own the same way:

    [project.entry-points."radis_bench.methods"]
    my_method = "my_package.my_method:MyMethod"   # the class, or a module that registers on import

Plugins load lazily: asking for one name imports that plugin's module only, so
``radis-bench list`` and ``run --dry-run`` import no model code. ``@register_method`` /
``@register_suite`` also register a class defined in a script or a test. A name taken
twice, or a registered class that is no Method / Suite, is refused with the sources of
both.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points

from harness.errors import UserError
from harness.plugins.method import Method
from harness.plugins.suite import Suite

METHOD_GROUP = "radis_bench.methods"
SUITE_GROUP = "radis_bench.suites"

_registered: dict[str, dict[str, type]] = {METHOD_GROUP: {}, SUITE_GROUP: {}}
_loaded_all: set[str] = set()


def _base(group: str) -> type:
    if group == METHOD_GROUP:
        return Method

    return Suite


def _source(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _register(group: str, cls, where: str | None = None):
    base = _base(group)
    where = where or (_source(cls) if isinstance(cls, type) else repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UserError(f"The plugin {where} registers {cls!r}, which is not a {base.__name__} subclass; "
                        f"subclass harness.{'methods' if base.__name__ == 'Method' else 'evaluation'}.{base.__name__}.")
    if not cls.name:
        raise UserError(f"The plugin {where} ({_source(cls)}) has no name; set the class attribute `name`.")
    table = _registered[group]
    old = table.get(cls.name)
    if old is not None and old is not cls and _source(old) != _source(cls):
        kind = "method" if group == METHOD_GROUP else "suite"
        raise UserError(f"Two {kind}s are named '{cls.name}': {_source(old)} and {_source(cls)}; "
                        "rename one of them or uninstall the package of the other.")
    table[cls.name] = cls
    return cls


def register_method(cls):
    return _register(METHOD_GROUP, cls)


def register_suite(cls):
    return _register(SUITE_GROUP, cls)


def _entry_points(group: str) -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=group):
        same = found.setdefault(ep.name, [])
        if all(ep.value != other.value for other in same):  # one package seen twice on the path is one source
            same.append(ep)
    return found


def _describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{ep.value} (package {dist.name})" if dist is not None else ep.value


def _load(group: str, name: str, eps: list[EntryPoint]) -> None:
    if len(eps) > 1:
        kind = "method" if group == METHOD_GROUP else "suite"
        raise UserError(f"Two {kind}s are named '{name}': {_describe(eps[0])} and {_describe(eps[1])}; "
                        "uninstall one of the two packages.")
    ep = eps[0]
    try:
        obj = ep.load()
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"The plugin entry point '{ep.name}' ({_describe(ep)}) in group {group} failed to load: "
                        f"{type(err).__name__}: {err}; fix or uninstall that plugin.") from None
    if isinstance(obj, type):
        _register(group, obj, _describe(ep))


def _get(group: str, name: str) -> type:
    table = _registered[group]
    if name not in table:
        eps = _entry_points(group).get(name)
        if eps:
            _load(group, name, eps)
        if name not in table:  # a module entry point may register under other names
            _load_all(group)
    if name not in table:
        kind = "method" if group == METHOD_GROUP else "suite"
        raise UserError(f"Unknown {kind} '{name}'; known {kind}s: {', '.join(sorted(table))} (see `radis-bench list`).")
    return table[name]


def _load_all(group: str) -> dict[str, type]:
    if group not in _loaded_all:
        for name, eps in sorted(_entry_points(group).items()):
            if name not in _registered[group]:
                _load(group, name, eps)
        _loaded_all.add(group)
    return dict(_registered[group])


def methods() -> dict[str, type]:
    """Every method, loading all plugins."""
    return _load_all(METHOD_GROUP)


def suites() -> dict[str, type]:
    """Every suite, loading all plugins."""
    return _load_all(SUITE_GROUP)


def get_method(name: str) -> type:
    return _get(METHOD_GROUP, name)


def get_suite(name: str) -> type:
    return _get(SUITE_GROUP, name)


def is_method(name: str) -> bool:
    return name in _entry_points(METHOD_GROUP) or name in _registered[METHOD_GROUP] or name in methods()


def is_suite(name: str) -> bool:
    return name in _entry_points(SUITE_GROUP) or name in _registered[SUITE_GROUP] or name in suites()


def baseline_method() -> type | None:
    """The registered method every other one is compared with (``Method.is_baseline``)."""
    found = [cls for cls in methods().values() if cls.is_baseline]
    return found[0] if len(found) == 1 else None


def data_set(name: str):
    """The general-ability data set that some registered plugin declares under ``name``."""
    known = data_sets()
    if name not in known:
        raise UserError(f"Unknown data set '{name}'; the installed methods and suites declare: {', '.join(sorted(known))}.")
    return known[name]


def data_sets() -> dict:
    """Every data set the registered methods and suites declare, by name."""
    found = {}
    for cls in list(methods().values()) + list(suites().values()):
        for spec in cls.data_sets:
            other = found.setdefault(spec.name, spec)
            if other != spec:
                raise UserError(f"Two plugins declare different data sets named '{spec.name}' "
                                f"({other.path} and {spec.path}); rename one of them.")
    return found


def suite_aliases() -> dict[str, list[tuple[str, str]]]:
    """Run-level setting names (``--comet-model``, ``judge:``) that suites accept as aliases
    of one of their options: alias -> [(suite, option), ...]."""
    import dataclasses

    aliases: dict[str, list[tuple[str, str]]] = {}
    for name, cls in sorted(suites().items()):
        for f in dataclasses.fields(cls.Options):
            alias = f.metadata.get("alias")
            if alias:
                aliases.setdefault(alias, []).append((name, f.name))
    return aliases


def reload_entry_points() -> None:
    """Forget what was loaded (a package installed while the process runs, e.g. in a test)."""
    _loaded_all.clear()
    importlib.invalidate_caches()
