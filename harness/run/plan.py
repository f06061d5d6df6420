"""Planning a run: its rows (methods and their variants), cells and units, from the settings,
with the methods, suites, budgets and adapters configured and checked. What decides reuse is
the units' keys (``harness.run.keys``, reached as ``plan.keys``); the checks before any compute
are ``harness.run.checks``; what a dry run prints is ``harness.run.dryrun``.

Rows. ``methods`` lists names (``radis``), variants (``LABEL:METHOD@option=value@...``
on the command line; ``{label, method, seeds, budget, lora, <option>: value}`` in a
config file) and ``sweep`` axes (``radis.rationale_weight=0,0.5,1``) that expand into
one variant per combination of one row's axes. A row's label names its folders
(``models/<label>/seed<k>``, ``results/<label>-seed<k>``), its ``--only`` cells and its
leaderboard row; a variant takes the run's options of its method, then its own.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.config.parse import apply_settings
from harness.config.ranges import check_ranges
from harness.config.settings import RunConfig, check_budget, check_lora, check_on_policy_budget
from harness.data.records import Direction, parse_directions
from harness.data.sources import DataSource, sample
from harness.errors import UserError
from harness.model.loading import resolve_model, resolve_placement
from harness.plugins import registry
from harness.run.keys import UnitKeys, digest, scheme1_run_settings
from harness.store import ORIGINAL

SAFE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@=-]{0,99}")
ONLY_HELP = "method=LABEL[+LABEL...][,seed=N[+N...]], e.g. method=radis,seed=1 or method=original"
LABEL_HELP = "letters, digits and . _ @ = - (at most 100, starting with a letter or digit)"


def configure(cfg: RunConfig, settings: dict, where: str) -> None:
    """Apply run settings onto ``cfg``, the suites' option aliases (``comet_model``, ``judge``,
    ``extraction`` ...) included: a config file, the command line or ``--set``."""
    apply_settings(cfg, settings, where, aliases=registry.suite_aliases())


# --- rows: methods and variants ---------------------------------------------------------------

@dataclass
class Entry:
    """One leaderboard row: a method, or a variant of one (its own options, budget, adapter, seeds)."""

    label: str
    method: str
    options: dict = field(default_factory=dict)  # over the run's method_options of ``method``
    budget: dict = field(default_factory=dict)  # over the shared budget
    lora: dict = field(default_factory=dict)  # over the shared adapter settings
    seeds: list[int] | None = None  # None: the run's seeds
    sweep: dict = field(default_factory=dict)  # axis -> value text, for a row made by a sweep
    varies: str | None = None  # the row this one is a variant of


def _route(entry: Entry, key: str, value: Any, where: str) -> None:
    """Put one ``key=value`` of a variant where it belongs: budget, adapter, seeds or option."""
    head, dot, rest = key.partition(".")
    if key == "lr" or (head == "budget" and rest == "lr"):
        entry.budget["learning_rate"] = value
    elif dot and head in ("budget", "lora"):
        getattr(entry, head)[rest] = value
    elif key == "seeds":
        seeds = value.split("+") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
        try:
            entry.seeds = [int(str(s).strip()) for s in seeds]
        except ValueError:
            raise UserError(f"{where}: seeds {value!r} must be whole numbers, e.g. seeds=0+1+2 (seeds: [0, 1, 2] in a config file).") from None
    elif key in ("budget", "lora") and isinstance(value, dict):
        getattr(entry, key).update(value)
    elif dot:
        raise UserError(f"{where}: '{key}' is neither an option of the method nor budget.<setting> or lora.<setting>.")
    else:
        entry.options[key] = value


def parse_entry(item: Any) -> Entry:
    """A ``methods`` item: ``NAME``, ``LABEL:NAME@key=value@...`` or a mapping."""
    if isinstance(item, dict):
        item = dict(item)
        method = item.pop("method", None) or item.get("label")
        if not isinstance(method, str) or not method:
            raise UserError(f"The methods entry {item!r} names no method; give method: <name> (see `radis-bench list`).")
        entry = Entry(str(item.pop("label", method)), method)
        for key, value in item.items():
            _route(entry, str(key), value, f"methods entry '{entry.label}'")
        return entry
    text = str(item).strip()
    label, colon, spec = text.partition(":")
    spec = spec if colon else text
    method, *settings = spec.split("@")
    entry = Entry(label if colon else spec, method.strip())
    for setting in settings:
        key, eq, value = setting.partition("=")
        if not eq or not key.strip():
            raise UserError(f"Method '{text}': '@{setting}' must look like @option=value, e.g. radis@rationale_weight=0.5.")
        _route(entry, key.strip(), value.strip(), f"method '{text}'")
    return entry


def value_text(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def expand_sweeps(entries: list[Entry], sweep: dict[str, list], effective) -> list[Entry]:
    """One variant per combination of a row's swept values (axes ``ROW.key``, ROW a row label
    or a method name); a combination equal to the row itself is that row. ``effective(entry)``
    gives what a row trains with, to compare."""
    axes: dict[str, list[tuple[str, list]]] = {}
    for axis, values in sweep.items():
        row, dot, key = str(axis).partition(".")
        if not dot or not key:
            raise UserError(f"Sweep axis '{axis}' must look like METHOD.option, e.g. radis.rationale_weight=0,0.5,1.")
        if not values:
            raise UserError(f"Sweep axis '{axis}' has no values; give them comma-separated, e.g. {axis}=0,0.5,1.")
        if row in ("budget", "lora") and row not in {e.label for e in entries}:
            raise UserError(f"Sweep axis '{axis}' names no row: a sweep varies one row's settings, so give the row first, "
                            f"e.g. vanilla.{axis}={','.join(map(str, values))}.")
        axes.setdefault(row, []).append((key, list(values)))
    by_label = {e.label: e for e in entries}
    out = list(entries)
    for row, row_axes in axes.items():
        base = by_label.get(row)
        if base is None:
            registry.get_method(row)  # an unknown name fails here with the known ones
            base = Entry(row, row)
        for combo in itertools.product(*[[(key, v) for v in values] for key, values in row_axes]):
            # a swept variant runs at the run's seeds (a row's extra seeds are for its own contrasts)
            variant = Entry(row + "".join(f"@{key}={value_text(v)}" for key, v in combo), base.method,
                            dict(base.options), dict(base.budget), dict(base.lora), None,
                            {key: value_text(v) for key, v in combo}, row if row in by_label else None)
            for key, value in combo:
                _route(variant, key, value, f"sweep {row}.{key}")
            if row in by_label and effective(variant)[:4] == effective(base)[:4]:
                continue  # the row itself
            out.append(variant)
    return out


def parse_only(specs: list[str], labels: list[str], seeds_of) -> list[str]:
    """The cells that ``--only`` selects, as unit labels (``original``, ``radis-seed1``), in
    run order. Each spec selects the product of its rows and seeds (every row or seed of
    the run when left out; ``original`` takes no seed); repeated specs add up."""
    chosen: set[str] = set()
    every_seed = sorted({s for label in labels for s in seeds_of(label)})
    for spec in specs:
        fields_: dict[str, list[str]] = {}
        for part in spec.split(","):
            key, eq, value = part.partition("=")
            key = key.strip()
            values = [v.strip() for v in value.split("+")]
            if not eq or key not in ("method", "seed") or key in fields_ or not all(values):
                raise UserError(f"--only '{spec}' is not valid; use {ONLY_HELP}.")
            fields_[key] = values
        picked = fields_.get("method", list(labels))
        for name in picked:
            if name != ORIGINAL and name not in labels:
                raise UserError(f"--only '{spec}': '{name}' is not one of this run's methods ({', '.join(labels)}) nor 'original'.")
        wanted = fields_.get("seed")
        if wanted is not None:
            for value in wanted:
                if not value.lstrip("-").isdigit() or int(value) not in every_seed:
                    raise UserError(f"--only '{spec}': seed '{value}' is not one of this run's seeds ({', '.join(map(str, every_seed))}).")
            if picked == [ORIGINAL]:
                raise UserError(f"--only '{spec}': the original model has no seed; use method=original alone.")
        for name in picked:
            if name == ORIGINAL:
                chosen.add(ORIGINAL)
            else:
                chosen |= {f"{name}-seed{s}" for s in seeds_of(name) if wanted is None or s in {int(v) for v in wanted}}
    order = [ORIGINAL] + [f"{label}-seed{s}" for s in every_seed for label in labels if s in seeds_of(label)]
    return [label for label in order if label in chosen]


# --- the plan ----------------------------------------------------------------------------------

class Plan:
    """What a run will do, fully checked before any model is loaded."""

    def __init__(self, cfg: RunConfig, config_file: Path | None = None, only: list[str] | None = None):
        self.cfg = cfg
        self.config_file = config_file
        self.directions: list[Direction] = parse_directions(cfg.pairs)
        for name in cfg.method_options:
            if not registry.is_method(name):
                raise UserError(f"Options given for '{name}', which is not a known method; see `radis-bench list`.")
        for name in cfg.suite_options:
            if not registry.is_suite(name):
                raise UserError(f"Options given for '{name}', which is not a known suite; see `radis-bench list`.")
        defaults = {"max_new_tokens": cfg.max_new_tokens}
        self.suites = {n: registry.get_suite(n).from_settings(cfg.suite_options.get(n), defaults) for n in cfg.suites}
        if not self.suites:
            raise UserError("--suites is empty; name at least one suite (see `radis-bench list`).")
        for name in cfg.suite_sizes:
            if name not in self.suites:
                raise UserError(f"suite_sizes names '{name}', which is not among this run's suites ({', '.join(self.suites)}).")
        self.entries: dict[str, Entry] = {}
        self.methods, self.budgets, self.loras = {}, {}, {}
        for entry in expand_sweeps([parse_entry(m) for m in cfg.methods], cfg.sweep, self._effective):
            self._add(entry)
        for entry in self.entries.values():  # a labelled variant varies its method's own row, wherever it is listed
            if entry.varies is None and entry.label != entry.method and entry.method in self.entries:
                entry.varies = entry.method
        self.data = DataSource.open(cfg.data_dir)
        self.run_dir = Path(cfg.out) if cfg.out else Path("runs") / self.default_name()
        self.only = parse_only(only, list(self.entries), self.seeds_of) if only else None  # None: the whole run
        self._spec = None
        self._train_pairs = None
        self.keys = UnitKeys(self)
        self.sizes: dict | None = None  # filled by ``harness.run.checks.check_plan``

    def _configure(self, entry: Entry):
        """(method, budget, adapter) of a row: the run's settings, then the row's own."""
        where = f"method '{entry.label}'"
        cls = registry.get_method(entry.method)
        method = cls.from_settings({**self.cfg.method_options.get(entry.method, {}), **entry.options}, where)
        budget, lora = dataclasses.replace(self.cfg.budget), dataclasses.replace(self.cfg.lora)
        apply_settings(budget, entry.budget, f"{where} [budget]")
        apply_settings(lora, entry.lora, f"{where} [lora]")
        return method, budget, lora

    def _effective(self, entry: Entry):
        method, budget, lora = self._configure(entry)
        return entry.method, method.options_dict(), asdict(budget), asdict(lora), entry.seeds

    def _add(self, entry: Entry) -> None:
        label = entry.label
        if not SAFE_LABEL.fullmatch(label) or label == ORIGINAL or re.search(r"-seed\d+$", label):
            raise UserError(f"Method label '{label}' cannot name a folder and a cell; use {LABEL_HELP}, not 'original', "
                            "not ending in -seed<N>.")
        if label in self.entries:
            raise UserError(f"Method label '{label}' appears twice in --methods; give each variant its own label (LABEL:METHOD@...).")
        method, budget, lora = self._configure(entry)
        where = f"method '{label}'"
        check_budget(budget, self._where(entry, "budget"))
        check_lora(lora, self._where(entry, "lora"))
        method.check_ranges()
        method.check()
        kinds = type(method).adapter_kinds
        if kinds is not None and lora.adapter not in kinds:
            raise UserError(f"{where}: {entry.method} handles the adapter kinds {', '.join(kinds)}, not lora.kind={lora.adapter}; "
                            "set another lora.kind for this row or leave it out.")
        if method.sample_step is not None:
            check_on_policy_budget(budget, method.samples_per_prompt(), where)
        if entry.seeds is not None and (not entry.seeds or len(set(entry.seeds)) != len(entry.seeds) or min(entry.seeds) < 0):
            raise UserError(f"{where}: seeds must be distinct numbers of at least 0, got {entry.seeds}.")
        self.entries[label] = entry
        self.methods[label], self.budgets[label], self.loras[label] = method, budget, lora

    @staticmethod
    def _where(entry: Entry, section: str) -> str:
        """How messages name a row's budget or adapter: 'budget' when it is the shared one."""
        return section if not getattr(entry, section) else f"method '{entry.label}': {section}"

    def check_model_shape(self, shape: dict) -> None:
        """Every range that names the model's shape (layers, vocabulary, context, hidden size)
        and the adapter's target modules, once ``shape`` is read (``harness.model.shape``)."""
        check_ranges(self.cfg, "", shape)
        for label, method in self.methods.items():
            check_budget(self.budgets[label], self._where(self.entries[label], "budget"), shape)
            check_lora(self.loras[label], self._where(self.entries[label], "lora"), shape)
            method.check_ranges(shape)
        for suite in self.suites.values():
            suite.check_ranges(shape)

    def seeds_of(self, label: str) -> list[int]:
        entry = self.entries[label]
        return list(entry.seeds) if entry.seeds is not None else list(self.cfg.seeds)

    def budget_differs(self, label: str) -> list[str]:
        """The shared budget and adapter settings this row does not keep, as 'name value (shared value)'."""
        out = []
        for section, mine, shared in (("budget", self.budgets[label], self.cfg.budget), ("lora", self.loras[label], self.cfg.lora)):
            for f in dataclasses.fields(mine):
                a, b = getattr(mine, f.name), getattr(shared, f.name)
                if a != b:
                    out.append(f"{section}.{f.name} {value_text(a)} (shared {value_text(b)})")
        return out

    def default_name(self) -> str:
        """runs/<model>-<directions>-<hash of the settings>; the hash is taken over the settings
        as the first key scheme named them, so a run directory keeps its name across upgrades."""
        settings = {**self.cfg.to_dict(), **scheme1_run_settings(self)}
        if not settings["sweep"]:
            settings.pop("sweep")
        for targets in registry.suite_aliases().values():  # scheme 1 held these at the run level only
            for suite, option in targets:
                options = settings["suite_options"].get(suite, {})
                options.pop(option, None)
                if suite in settings["suite_options"] and not options:
                    settings["suite_options"].pop(suite)
        for how in ("out", "title", "generation_backend", "device", "gen_batch_size", "analysis",
                    "require_clean_code"):  # how, not what
            settings.pop(how, None)
        short = Path(self.cfg.model).name.replace(".", "_")
        return f"{short}-{'_'.join(d.name for d in self.directions)}-{digest(settings)[:8]}"

    def cells(self) -> list[str]:
        """Every cell of the run in run order: the original, then each row and seed."""
        return parse_only(["method=original", f"method={'+'.join(self.entries)}"], list(self.entries), self.seeds_of)

    def trained_units(self) -> list[tuple[str, str, int]]:
        """(cell, row label, seed) of every trained model, in run order."""
        return [(f"{label}-seed{seed}", label, seed) for seed in sorted({s for l in self.entries for s in self.seeds_of(l)})
                for label in self.entries if seed in self.seeds_of(label)]

    def selected(self, cell: str) -> bool:
        return self.only is None or cell in self.only

    def task_suite(self) -> str | None:
        return next((n for n, s in self.suites.items() if s.uses_directions), None)

    def size(self, suite: str | None) -> int | None:
        return self.cfg.suite_sizes.get(suite, self.cfg.eval_size) if suite else self.cfg.eval_size

    # --- models and data --------------------------------------------------------------------
    @property
    def spec_resolved(self) -> bool:
        return self._spec is not None

    @property
    def spec(self):
        """The base model: where its checkpoint is and its content fingerprint (with the dtype
        when it is not float32: other weights give other outputs, so every key changes)."""
        if self._spec is None:
            self.resolve_spec(offline=False)
        return self._spec

    def resolve_spec(self, offline: bool) -> None:
        spec = resolve_model(self.cfg.model, self.cfg.trust_remote_code, offline=offline)
        _, dtype = resolve_placement(self.cfg.device, self.cfg.dtype)
        if dtype != "float32":
            spec = dataclasses.replace(spec, fingerprint=f"{spec.fingerprint}@{dtype}")
        self._spec = spec

    @property
    def train_pairs(self):
        if self._train_pairs is None:
            pairs = []
            for d in self.directions:
                pairs += sample(self.data.translation(d, "train"), self.cfg.train_size, self.cfg.data_seed)
            self._train_pairs = pairs
        return self._train_pairs

    # --- the printout ----------------------------------------------------------------------
    def describe_rows(self) -> list[dict]:
        """Each row as the manifest and the dry run show it."""
        rows = []
        for label, entry in self.entries.items():
            method = self.methods[label]
            rows.append({"label": label, "method": entry.method, "description": method.description,
                         "citation": method.citation, "extension": method.extension, "baseline": method.is_baseline,
                         "options": method.options_dict(), "own_settings": {**entry.options, **{f"budget.{k}": v for k, v in entry.budget.items()},
                                                                             **{f"lora.{k}": v for k, v in entry.lora.items()}},
                         "seeds": self.seeds_of(label), "sweep": entry.sweep, "varies": entry.varies,
                         "budget_differs": self.budget_differs(label), "adapter": self.loras[label].adapter})
        return rows
