"""``radis-bench rescore``: score a finished run's saved outputs again under other settings of
one suite (e.g. ``translation.extraction=first_line,first_paragraph,full``), generating
nothing, and compare the settings row by row with paired intervals.

Every evaluated model's ``outputs/<cell>/<suite>.jsonl`` is read back and handed to the
suite's ``score_outputs`` once per value; the run's own setting is one of the columns.
Written into ``<run>/rescore/`` (or ``--out``): ``<suite>-<option>.csv`` (every cell, value
and metric) and ``<suite>-<option>.md`` (each row's main metric and output length per value,
with the difference to the run's setting and its 95% interval).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from harness.errors import UserError
from harness.intervals import difference_interval, mean_interval
from harness.plugins import registry
from harness.report.text import fmt, interval_text
from harness.progress import warn
from harness.store import ORIGINAL, Unreadable, load_json, read_jsonl, write_atomic


def rescore(run_dir: Path, suite_name: str, option: str, values: list[str], out: Path | None = None) -> dict[str, Path]:
    run_dir, out = Path(run_dir), Path(out) if out else Path(run_dir) / "rescore"
    manifest = _manifest(run_dir)
    suites = manifest.get("suites") or {}
    if suite_name not in suites:
        raise UserError(f"{run_dir} has no {suite_name} units (its suites: {', '.join(suites) or 'none'}); choose one of them.")
    base = dict((suites[suite_name] or {}).get("options") or {})
    cls = registry.get_suite(suite_name)
    if option not in base:
        raise UserError(f"'{option}' is not an option of the {suite_name} suite; its options: {', '.join(sorted(base))}.")
    own, suites_by_value = _suites_by_value(cls, suite_name, base, option, values)
    values = list(suites_by_value)
    cells = sorted(p.parent.name for p in (run_dir / "outputs").glob(f"*/{suite_name}.jsonl"))
    if not cells:
        raise UserError(f"{run_dir} holds no saved outputs of {suite_name} (outputs/<model>/{suite_name}.jsonl); "
                        "re-scoring needs the outputs, which published reports do not commit.")
    records, stats, left_out = [], {}, []
    for cell in cells:
        try:
            outputs = read_jsonl(run_dir / "outputs" / cell / f"{suite_name}.jsonl")
        except Unreadable as err:  # one damaged file costs its model only, said twice: here and in the table's notes
            warn(f"{err}; {cell} is left out of the comparison.")
            left_out.append(f"{cell}: outputs/{cell}/{suite_name}.jsonl cannot be read ({err.why})")
            continue
        label, seed = (ORIGINAL, "") if cell == ORIGINAL else cell.rsplit("-seed", 1)
        for value, suite in suites_by_value.items():
            result = suite.score_outputs(outputs)
            if result is None:
                raise UserError(f"The {suite_name} suite cannot score saved outputs again; rescore works with suites that "
                                "implement Suite.score_outputs (e.g. translation).")
            for m in result.metrics:
                records.append({"cell": cell, "method": label, "seed": seed, option: value, "metric": m.name, "value": m.value,
                                "n": m.n, "main": m.main})
            for metric, st in suite.item_stats(result.outputs).items():
                stats.setdefault((label, metric, value), {})[seed or "0"] = st.to_dict()
    if not records:
        raise UserError(f"No saved outputs of {suite_name} in {run_dir} can be read ({'; '.join(left_out)}); re-run "
                        "`radis-bench run` to write them again.")
    frame = pd.DataFrame(records)
    stem = f"{suite_name}-{option}"
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    write_atomic(csv_path, frame.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    mains = list(dict.fromkeys(frame.loc[frame["main"], "metric"]))
    lengths = [m for m in dict.fromkeys(frame["metric"]) if m.rsplit("/", 1)[-1] == "words"]
    lines = [f"# {suite_name}: {option} compared on saved outputs ({run_dir.name})", "",
             f"The run scored with {option}={own}. Each cell: the row's mean over its training seeds [95% interval]; "
             f"Δ: minus {option}={own} on the same outputs, paired by seed and item (* excludes 0). Nothing was generated.", ""]
    for metric in mains + lengths:
        header = ["method"] + [f"{option}={v}" for v in values] + [f"Δ {v}" for v in values if v != own]
        lines += [f"## {metric}", "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        digits = 1 if metric.endswith(("chrf++", "bleu", "comet", "words")) else 3
        for label in dict.fromkeys(frame["method"]):
            row, mine = [label], {}
            for value in values:
                found = stats.get((label, metric, value))
                iv = mean_interval(found, fixed=label == ORIGINAL) if found else None
                mine[value] = found
                row.append(f"{fmt(iv.estimate, digits)} {interval_text(iv.low, iv.high, digits)}".strip() if iv else "—")
            for value in values:
                if value == own:
                    continue
                iv = difference_interval(mine[value], mine[own], b_fixed=False) if mine.get(value) and mine.get(own) else None
                row.append(f"{fmt(iv.estimate, digits, True)} {interval_text(iv.low, iv.high, digits, True)}{'*' if iv.significant else ''}"
                           if iv else "—")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if left_out:
        lines += ["Left out (their saved outputs cannot be read):", ""] + [f"- {text}" for text in left_out] + [""]
    write_atomic(md_path, "\n".join(lines) + "\n")
    return {csv_path.name: csv_path, md_path.name: md_path}


def _suites_by_value(cls, suite_name: str, base: dict, option: str, values: list[str]) -> tuple[str, dict]:
    """(the run's own setting as text, {setting: the suite configured with it}), the run's own
    first; the values checked: given once, and only of options that score, not generate."""
    if not values:
        raise UserError("--values is empty; give the settings to compare, e.g. --values first_line,first_paragraph,full.")
    twice = next((v for v in values if values.count(v) > 1), None)
    if twice is not None:
        raise UserError(f"--values lists {twice} twice; give each setting once.")
    declared = {f.name: f for f in dataclasses.fields(cls.Options)}.get(option)
    if declared is not None and declared.metadata.get("generation"):
        raise UserError(f"{suite_name}.{option} changes what the model generates, and rescore only scores the saved outputs "
                        f"again; vary it with a second `radis-bench run` (--set {suite_name}.{option}=...) instead.")
    own = "none" if base[option] is None else str(base[option])  # the run's own setting, as it was (None stays None)
    suites_by_value = {own: cls.from_settings(base)}
    for value in values:
        if value != own:
            suites_by_value[value] = cls.from_settings({**base, option: value})
    for suite in suites_by_value.values():
        suite.check()
    return own, suites_by_value


def _manifest(run_dir: Path) -> dict:
    try:
        manifest = load_json(run_dir / "manifest.json")
    except Unreadable as err:
        raise UserError(f"{err}; restore it, or run `radis-bench run` with the run's settings to rewrite it.") from None
    if manifest is None:
        raise UserError(f"{run_dir} is not a run directory (no manifest.json); give the --out folder of `radis-bench run`.")
    return manifest
