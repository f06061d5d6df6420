"""How the report draws claims from its intervals: pre-registered primary contrasts read at
looks the harness counts, an adjusted verdict for every other contrast, and "no difference"
only from an equivalence test at a stated margin.

**The plan.** A config's ``analysis`` section (``harness.config.settings.Analysis``) names the primary
contrasts, the planned seeds or looks, alpha, the spending function, the rule for the
secondary contrasts and the equivalence margins. ``run`` writes it to
``analysis/plan.json`` before its first unit, with the number of units already scored (0 for
a plan fixed in advance). A later run whose config holds another plan appends it, dated, to
``analysis/amendments.json``; the original is never rewritten, the report shows both, and a
contrast an amendment drops is still reported. Without a plan every contrast is exploratory.

**Looks.** A look is a rendering of a primary contrast at a new information state: seed
counts on its two sides not rendered before (``analysis/looks.jsonl``, one line per look).
Rendering the same seeds again is the same look (no new data), so a published report
re-renders to the same bytes. A look at seeds (K_A, K_B) holds information fraction
t = n / N, n = K_A against a fixed original, else 2 / (1/K_A + 1/K_B) (K for paired sides),
N the planned seeds per side; with ``looks`` planned instead, look k is at k / looks. When
the looks outrun the plan (n > N, or more looks than planned), the maximum is re-planned
to the information reached, N = the largest n so far (or the looks taken), and every
boundary is recomputed from it: the latest report's intervals then form a valid sequence
again, but intervals published before the overrun were narrower than the new plan allows.

**Primary contrasts.** A plan's primary contrasts share its alpha equally (Bonferroni: with
two, each spends alpha/2), so that together they err with probability at most alpha.
Lan-DeMets alpha spending over the looks (``harness.report.sequential``,
O'Brien-Fleming or Pocock type, alpha/2 per side) gives the z boundary c_k of the current
look; the adjusted interval is the repeated confidence interval estimate +- c'_k se, c'_k the
t quantile at the interval's df with the tail probability of c_k. All adjusted intervals
of a contrast's looks cover the truth together with probability 1 - alpha. Information
counted in seeds is conservative here: the test items are the same at every look, so the
real correlation between looks is higher than sqrt(t_i/t_j) and less alpha is spent than
planned. A directional contrast ("lower", "higher") is claimed only on its side: a
one-sided test at alpha/2.

**Secondary contrasts** (every other row of differences.csv): a two-sided p value from
each interval's t statistic and df, adjusted over the family of all secondary contrasts of
the report by Holm (family-wise error, the default) or Benjamini-Hochberg (false discovery
rate). The family is the whole table because a report's sentences pick their claims from
anywhere in it; Holm is the default because each sentence then holds on its own, not only
a share of them.

**Verdicts.** "different": the adjusted test rejects 0 (for a primary contrast, its
adjusted interval excludes 0 on the planned side). "equivalent": not different, and both
one-sided tests of the equivalence margin reject (TOST: the larger of the two p values,
adjusted over the family of the contrasts with a margin; for a primary contrast, its
adjusted interval lies inside +- margin). Otherwise "not resolved". A metric without a
margin can only be different or not resolved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as sps

from harness.config.parse import apply_settings
from harness.config.settings import Analysis, check_analysis
from harness.errors import UserError
from harness.report.sequential import NO_BOUNDARY, boundaries, t_quantile
from harness.store import Unreadable, load_json, read_jsonl, write_json

log = logging.getLogger("radis_bench")

FOLDER = "analysis"
DIFFERENT, EQUIVALENT, NOT_RESOLVED = "different", "equivalent", "not resolved"


@dataclass(frozen=True)
class Contrast:
    """A pre-registered difference: row ``a`` minus row ``b`` (or the original) on ``metric``."""

    a: str
    b: str
    metric: str  # "suite/metric", a leaderboard column
    direction: str = "two-sided"  # the side a claim is made on: lower, higher or two-sided

    @classmethod
    def of(cls, entry: dict) -> "Contrast":
        return cls(entry["a"], entry["b"], entry["metric"], entry.get("direction", "two-sided"))

    @property
    def name(self) -> str:
        return f"{self.a} − {self.b}"

    def same(self, other: dict) -> bool:
        return (other.get("a"), other.get("b"), other.get("metric")) == (self.a, self.b, self.metric)


def analysis_of(settings: dict | None, where: str) -> Analysis:
    """An Analysis from its settings as a plan file or a manifest holds them."""
    analysis = Analysis()
    apply_settings(analysis, settings or {}, where)
    check_analysis(analysis, where)
    return analysis


def _settings(analysis: Analysis) -> dict:
    return dataclasses.asdict(analysis)


# The plan in the run directory -----------------------------------------------------------------

@dataclass
class RecordedPlan:
    """analysis/plan.json and its dated amendments."""

    original: dict  # {"recorded", "units_scored", "analysis"}
    amendments: list[dict]

    @property
    def current(self) -> Analysis:
        return analysis_of((self.amendments[-1] if self.amendments else self.original)["analysis"], "analysis/plan.json")

    def contrasts(self) -> list[tuple[dict, str | None]]:
        """Every contrast any version of the plan named, with the date an amendment dropped it."""
        versions = [self.original] + self.amendments
        seen: dict[tuple, tuple[dict, str | None]] = {}
        for version in versions:
            names = [(c["a"], c["b"], c["metric"]) for c in version["analysis"].get("primary", [])]
            for c in version["analysis"].get("primary", []):
                seen[(c["a"], c["b"], c["metric"])] = (c, None)
            for key, (c, dropped) in list(seen.items()):
                if key not in names and dropped is None:
                    seen[key] = (c, version["recorded"])
        return list(seen.values())


def read_plan(run_dir: Path) -> RecordedPlan | None:
    """The plan as first recorded and its amendments. A damaged file is an error, never taken
    for an absent one: a pre-registration is not written again over its own remains."""
    try:
        original = load_json(run_dir / FOLDER / "plan.json")
        amendments = load_json(run_dir / FOLDER / "amendments.json", list) or []
    except Unreadable as err:
        raise UserError(f"{err}; restore it from version control (the analysis record is never rewritten).") from None
    if original is None:
        return None
    if "analysis" not in original:
        raise UserError(f"{run_dir / FOLDER / 'plan.json'} is not an analysis plan; restore it from version control.")
    return RecordedPlan(original, amendments)


def record_plan(run_dir: Path, analysis: Analysis) -> str | None:
    """Write the plan before the first unit, or append an amendment when the config's plan
    differs from the one in force, each with the evaluation units already scored; what was
    done, for the run log (None: nothing)."""
    settings, now = _settings(analysis), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    units_scored = len(list((run_dir / "results").glob("*/*.json")))
    recorded = read_plan(run_dir)
    if recorded is None:
        if not analysis.primary:
            return None
        write_json(run_dir / FOLDER / "plan.json", {"recorded": now, "units_scored": units_scored, "analysis": settings})
        return f"analysis plan recorded ({len(analysis.primary)} primary contrasts, {units_scored} units scored before it)"
    if _settings(recorded.current) == settings:
        return None
    write_json(run_dir / FOLDER / "amendments.json",
               recorded.amendments + [{"recorded": now, "units_scored": units_scored, "analysis": settings}])
    return f"analysis plan amended ({units_scored} units scored before the amendment); the report shows both"


def check_against_plan(analysis: Analysis, plan) -> None:
    """The rows and metrics of the primary contrasts exist in the run (``harness.run.plan.Plan``)."""
    for contrast in analysis.primary:
        for side in ("a", "b"):
            label = contrast[side]
            if label not in plan.entries and not (side == "b" and label == "original"):
                raise UserError(f"analysis.primary names row '{label}', which is not a row of this run; use one of "
                                f"{', '.join(plan.entries)}" + (" (or original as b)." if side == "b" else "."))
        suite, _, metric = contrast["metric"].partition("/")
        if suite not in plan.suites:
            raise UserError(f"analysis.primary names metric '{contrast['metric']}', but '{suite}' is not among this run's "
                            f"suites ({', '.join(plan.suites)}).")
        declared = [m.name for m in plan.suites[suite].metrics()]
        if metric.rsplit("/", 1)[-1] not in declared:
            raise UserError(f"analysis.primary names metric '{contrast['metric']}', which {suite} does not score; "
                            f"its metrics: {', '.join(declared)}.")


# Looks -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Look:
    seeds: tuple[int, int | None]  # (A's seeds, B's; None for the original)
    time: str
    note: str = ""  # e.g. how a look before the harness counted them was reconstructed


def looks_of(run_dir: Path, contrast: Contrast) -> list[Look]:
    try:
        entries = read_jsonl(run_dir / FOLDER / "looks.jsonl")
    except Unreadable as err:  # a look cut off while being recorded: whether it counts is the analyst's call
        raise UserError(f"{err}; restore it from version control, or delete the damaged line if that look never "
                        "reached anyone.") from None
    out = []
    for entry in entries:
        if contrast.same(entry["contrast"]):
            out.append(Look(tuple(entry["seeds"]), entry["time"], entry.get("note", "")))
    return out


def record_look(run_dir: Path, contrast: Contrast, seeds: tuple[int, int | None]) -> Look | None:
    """Append a look; None when the run directory cannot be written (the report still renders)."""
    look = Look(seeds, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    line = json.dumps({"contrast": {"a": contrast.a, "b": contrast.b, "metric": contrast.metric},
                       "seeds": list(seeds), "time": look.time}, ensure_ascii=False)
    try:
        (run_dir / FOLDER).mkdir(parents=True, exist_ok=True)
        with (run_dir / FOLDER / "looks.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError as err:
        log.warning("%s: the look at %s, %s, seeds %s could not be recorded (%s); this report counts it, later ones "
                    "will not know of it.", run_dir, contrast.name, contrast.metric, seeds, err.strerror or err)
        return None
    return look


def information(seeds: tuple[int, int | None]) -> float:
    """Seeds per side as information: K_A against the original, else the harmonic mean."""
    a, b = seeds
    return float(a) if b is None else 2 / (1 / a + 1 / b)


def fractions(looks: list[Look], analysis: Analysis) -> tuple[list[float], bool]:
    """Information fractions of the looks, and whether they outran the plan (then re-planned
    to the information reached)."""
    if analysis.looks is not None:
        top = max(analysis.looks, len(looks))
        return [(k + 1) / top for k in range(len(looks))], top > analysis.looks
    sizes = [information(look.seeds) for look in looks]
    top = max([float(analysis.seeds)] + sizes)
    return [n / top for n in sizes], top > analysis.seeds


# Tests ------------------------------------------------------------------------------------

def p_value(iv) -> float:
    """Two-sided p value of 0 from the interval's t statistic and df."""
    if not iv.se:
        return 1.0 if iv.estimate == 0 else 0.0
    return float(2 * sps.t.sf(abs(iv.estimate) / iv.se, iv.df))


def tost_p(iv, margin: float) -> float:
    """The larger p value of the two one-sided tests that the difference lies inside +- margin."""
    if not iv.se:
        return 0.0 if abs(iv.estimate) < margin else 1.0
    return float(max(sps.t.sf((iv.estimate + margin) / iv.se, iv.df), sps.t.cdf((iv.estimate - margin) / iv.se, iv.df)))


def adjust(p_values, method: str) -> np.ndarray:
    """Holm's step-down or Benjamini-Hochberg's step-up adjusted p values."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked))
    elif method == "bh":
        adjusted = np.minimum.accumulate(np.minimum(1.0, m * ranked / np.arange(1, m + 1))[::-1])[::-1]
    else:
        raise ValueError(f"unknown adjustment {method!r}")
    out = np.empty(m)
    out[order] = adjusted
    return out


def margin_for(key: str, margins: dict, declared: float | None) -> float | None:
    """The equivalence margin of a column ("translation/de-en/chrf++"): the plan's by the
    whole key or the last name, else the one its suite declares (``MetricSpec.margin``);
    None (or 0) for none."""
    last = key.rsplit("/", 1)[-1]
    for name in (key, last):
        if name in margins:
            return float(margins[name]) or None
    return declared


# Primary contrasts ---------------------------------------------------------------------------

@dataclass
class Primary:
    """A primary contrast at this rendering's look."""

    contrast: Contrast
    run: str  # the run directory's name
    interval: object  # harness.intervals.Interval, nominal; None when it cannot be computed
    looks: list[Look] = field(default_factory=list)  # up to and including this one
    boundary: float | None = None  # the z boundary of this look
    low: float | None = None  # the adjusted (repeated confidence) interval
    high: float | None = None
    verdict: str = NOT_RESOLVED
    margin: float | None = None
    notes: list[str] = field(default_factory=list)
    rows: tuple = ()  # (row, reference row, column) of the leaderboard, once scored


def primary_alpha(analysis: Analysis) -> float:
    """What each primary contrast spends over its looks: the plan's alpha shared equally by its
    primary contrasts (Bonferroni), so that all of them together err with probability at most
    alpha."""
    return analysis.alpha / max(len(analysis.primary), 1)


def assess_primary(contrast: Contrast, iv, looks: list[Look], analysis: Analysis, margin: float | None, run: str) -> Primary:
    """The adjusted interval and verdict of a contrast whose looks so far end with this one."""
    found = Primary(contrast, run, iv, looks, margin=margin)
    times, overrun = fractions(looks, analysis)
    found.boundary = boundaries(times, primary_alpha(analysis), analysis.spending)[-1]
    if overrun:
        found.notes.append("the looks outran the plan: its maximum was re-planned to the information reached")
    if iv is None or iv.low is None:
        return found
    width = t_quantile(found.boundary, iv.df) * (iv.se or 0.0) if found.boundary != NO_BOUNDARY else math.inf
    found.low, found.high = iv.estimate - width, iv.estimate + width
    excludes = {"lower": found.high < 0, "higher": found.low > 0, "two-sided": found.low > 0 or found.high < 0}
    if excludes[contrast.direction]:
        found.verdict = DIFFERENT
    elif margin is not None and -margin < found.low and found.high < margin:
        found.verdict = EQUIVALENT
    if contrast.direction != "two-sided" and excludes["two-sided"] and not excludes[contrast.direction]:
        found.notes.append(f"resolved on the side opposite to the planned one ({contrast.direction}): not the claim planned")
    return found


# What the report says ---------------------------------------------------------------------

SPENDING_NAMES = {"obrien_fleming": "O'Brien–Fleming-type", "pocock": "Pocock-type"}
RULES = {"holm": "Holm (family-wise error)", "bh": "Benjamini–Hochberg (false discovery rate)"}


@dataclass
class Claims:
    """What a report claims and under which plan."""

    analysis: Analysis  # the secondary rule, alpha and margins in force
    plans: list[tuple[str, RecordedPlan]] = field(default_factory=list)  # (run directory's name, its plan)
    primary: list[Primary] = field(default_factory=list)
    family: int = 0  # secondary contrasts adjusted together

    @property
    def exploratory(self) -> bool:
        return not self.plans


@dataclass
class Section:
    """The claims section of a report, for markdown and html alike."""

    paragraphs: list[str]
    header: list[str]
    rows: list[list[str]]
    notes: list[str]


def _plan_text(name: str, plan: RecordedPlan) -> list[str]:
    def when(version: dict) -> str:
        units = version["units_scored"]
        return (f"{version['recorded'][:10]}, before any unit was scored" if units == 0 else
                f"{version['recorded'][:10]}, after {units} units had been scored (not a pre-registration)")

    a = analysis_of(plan.original["analysis"], "analysis/plan.json")
    lines = [f"Analysis plan of `{name}`, recorded {when(plan.original)}: {_settings_text(a)}." + (f" {a.note}" if a.note else "")]
    before = plan.original["analysis"]
    for amendment in plan.amendments:
        lines.append(f"Amended {when(amendment)}: {_changes(before, amendment['analysis'])}.")
        before = amendment["analysis"]
    return lines


def _settings_text(a: Analysis) -> str:
    plan = f"{a.seeds} seeds per side" if a.seeds is not None else f"{a.looks} looks"
    shared = f" (alpha {primary_alpha(a):g} for each of the {len(a.primary)} primary contrasts)" if len(a.primary) > 1 else ""
    return (f"alpha {a.alpha:g} over the looks{shared}, {SPENDING_NAMES[a.spending]} spending, planned {plan}; other contrasts "
            f"{RULES[a.secondary]}")


def _changes(old: dict, new: dict) -> str:
    out = []
    for key in new:
        if key == "primary":
            names = lambda v: [f"{c['a']} − {c['b']} {c['metric']} ({c.get('direction', 'two-sided')})" for c in v]
            added = [c for c in names(new[key]) if c not in names(old.get(key, []))]
            dropped = [c for c in names(old.get(key, [])) if c not in names(new[key])]
            out += [f"primary + {c}" for c in added] + [f"primary − {c}" for c in dropped]
        elif old.get(key) != new[key]:
            out.append(f"{key} {old.get(key)!r} → {new[key]!r}")
    return "; ".join(out) or "no change in what is tested"


def describe(found: Claims, number) -> Section:
    """The plan, the primary contrasts at this look and how the other contrasts are judged;
    ``number(value, column key, signed)`` formats a value as its column does."""
    a = found.analysis
    rule = (f"every difference is judged after a {RULES[a.secondary]} adjustment over all {found.family} contrasts of the "
            f"report at level {a.alpha:g}: * different, ≡ equivalent (both one-sided tests at the metric's margin reject, "
            "adjusted alike), no mark: not resolved")
    if found.exploratory:
        return Section([f"**Exploratory**: no analysis plan was recorded for these runs (the config's `analysis`), so no "
                        f"contrast below was planned before its data were seen; {rule}."], [], [], [])
    paragraphs = [line for name, plan in found.plans for line in _plan_text(name, plan)]
    header = ["contrast", "metric", "claim", "seeds", "difference", "95% interval", "looks", "adjusted interval", "verdict"]
    rows, notes = [], []
    for p in found.primary:
        c, iv = p.contrast, p.interval
        seeds = "—" if not p.looks else " vs ".join("fixed" if k is None else str(k) for k in p.looks[-1].seeds)
        cells = [c.name, c.metric, c.direction, seeds]
        if iv is None:
            cells += ["—", "—", "0", "—", "not scored"]
        else:
            interval = lambda low, high: (f"[{number(low, c.metric, True)}, {number(high, c.metric, True)}]"
                                          if low is not None and math.isfinite(low) else "unbounded")
            cells += [number(iv.estimate, c.metric, True), interval(iv.low, iv.high), str(len(p.looks)),
                      interval(p.low, p.high), p.verdict + (f" (margin ±{p.margin:g})" if p.verdict == EQUIVALENT else "")]
            taken = ", ".join(" vs ".join("fixed" if k is None else str(k) for k in look.seeds)
                              + (f" ({look.time[:10]}{'; ' + look.note if look.note else ''})" if look.time or look.note else "")
                              for look in p.looks)
            notes.append(f"{c.name}, {c.metric}: looks at {taken}; z boundary of this look {p.boundary:.3f}.")
        rows.append(cells)
        notes += [f"{c.name}, {c.metric}: {note}." for note in p.notes]
    paragraphs.append(f"Primary contrasts: the adjusted interval is the repeated confidence interval of this look (Lan–DeMets "
                      "spending over the looks the harness counted); together with those of the earlier looks it covers "
                      f"the truth with probability {1 - a.alpha:g}. Every other contrast is secondary: {rule}.")
    return Section(paragraphs, header, rows, notes)
