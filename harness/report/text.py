"""The report as text: the leaderboard and differences as CSV, and the markdown people read
(claims, main metrics, other metrics, differences, methods, training); also the number
formats both the markdown and the HTML use."""

from __future__ import annotations

import io
import statistics
from dataclasses import dataclass

import pandas as pd

from harness.report.board import Column, Leaderboard, Row, training_runs
from harness.report.claims import describe
from harness.report.compute import compute_markdown
from harness.report.trajectory import summary_markdown
from harness.report.differences import COLUMNS
from harness.store import ORIGINAL

NOT_RUN = "no score in these runs (the suite was not run for this model and row)"


ADAPTERS = ("A row's adapter after its name: [rsLoRA], [DoRA], [PiSSA] (peft's variants of LoRA at the same rank) or "
            "[full FT] (every weight trained); no mark: plain LoRA (lora.kind; the adapter column of the CSV files).")


ONE_SEED = "one training seed: the interval covers item noise only, seed variance not estimated"


INTERVALS = ("95% intervals: a bootstrap over test items (2000 draws, the same draw for every seed and for both sides "
             "of a difference) combined with the spread over training seeds (t, with Satterthwaite degrees of freedom in which "
             "the seed part enters with its share to the first power; paired by seed where two rows have the same seeds; a share "
             "of 0/1 items gets a score interval inside [0, 1], a difference of two at least one discordant item's variance; "
             "harness/intervals.py).")


def decimals(board: Leaderboard, column: Column) -> int:
    """One precision per column, from the size of its numbers (chrF++ 45.2, accuracy 0.412)."""
    means = [abs(c.mean) for r in board.rows if (c := board.cell(r, column)).mean is not None]
    typical = statistics.median(means) if means else 0.0
    return 1 if typical >= 10 else 2 if typical >= 1 else 3 if typical >= 0.01 or typical == 0 else 4


def fmt(value: float, digits: int, signed: bool = False) -> str:
    value = round(value, digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def interval_text(low, high, digits: int, signed: bool = False) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return ""
    return f"[{fmt(low, digits, signed)}, {fmt(high, digits, signed)}]"


class Notes:
    def __init__(self):
        self.texts: list[str] = []

    def number(self, text: str) -> int:
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text) + 1


@dataclass
class CellText:
    value: str  # "19.0" or "—"
    ci: str
    delta: str  # "+5.0 [+3.6, +6.5]*" or ""
    delta_sign: int  # +1 better, -1 worse, 0 neutral or none
    mark: str  # "best", "tied" or ""
    notes: list[int]
    hover: str  # per-seed values


def cell_text(board: Leaderboard, row: Row, column: Column, notes: Notes) -> CellText:
    if (row, column.key) not in board.cells:
        return CellText("—", "", "", 0, "", [notes.number(f"{column.key}: {NOT_RUN}")], "")
    cell = board.cell(row, column)
    marks = [notes.number(f"{column.key}: {text}") for text in cell.notes] + [notes.number(text) for text in cell.damage]
    if cell.mean is None:
        return CellText("—", "", "", 0, "", marks, "")
    d = decimals(board, column)
    ci = interval_text(cell.ci_low, cell.ci_high, d) + (" ‡" if cell.one_seed else "")
    if cell.one_seed:
        marks.append(notes.number(f"‡ {ONE_SEED}"))
    delta, sign = "", 0
    if cell.delta is not None:
        iv = cell.delta_interval
        delta = fmt(cell.delta, d, signed=True)
        if iv is not None:
            delta += f" {interval_text(iv.low, iv.high, d, signed=True)}{MARKS.get(board.verdict(row, ORIGINAL, column), '')}"
        if column.higher_is_better is not None and round(cell.delta, d) != 0:
            sign = 1 if (cell.delta > 0) == column.higher_is_better else -1
    hover = "seeds: " + ", ".join(f"{s}: {fmt(v, d)}" for s, v in cell.seeds.items()) if len(cell.seeds) > 1 else ""
    return CellText(fmt(cell.mean, d), ci, delta, sign, "best" if cell.best else "tied" if cell.tied else "", marks, hover)


def row_name(row: Row, notes: Notes) -> str:
    name = row.name
    if row.budget_differs:
        name += f" †{notes.number('† budget differs from the shared one (the equal-budget comparison does not hold for this row): ' + '; '.join(row.budget_differs))}"
    return name


def seeds_text(board: Leaderboard, row: Row) -> str:
    found = {s for (r, _), c in board.cells.items() if r == row for s in c.seeds}
    return "—" if row.original else str(len(found))


def legend(board: Leaderboard) -> list[str]:
    mains = ", ".join(f"{c.key}{c.arrow}" for c in board.main)
    return [
        "Each cell: the mean over training seeds and its 95% interval; Δ: the row minus the same model's original, "
        "with its interval (* different, ≡ equivalent, after adjustment: see Differences).",
        INTERVALS,
        f"Main metric of each suite: {mains}. ↑ higher is better, ↓ lower is better, no arrow: neither.",
        "Bold: the best fine-tuned row of a column, significantly ahead of every other one (adjusted together); ≈: tied "
        "for best (the top row does not beat these significantly).",
    ] + ([ADAPTERS] if board.marks_adapters else [])


def marked_value(text: CellText, markdown: bool = True) -> str:
    if text.mark == "best":
        return f"**{text.value}**" if markdown else text.value
    return f"≈{text.value}" if text.mark == "tied" else text.value


def _md_table(board: Leaderboard, columns: list[Column], notes: Notes, with_delta: bool) -> list[str]:
    header = (["model"] if board.several_models else []) + ["method", "seeds"]
    for c in columns:
        header.append(f"{c.suite} {c.metric}{c.arrow}")
        if with_delta:
            header.append(f"Δ {c.metric.rsplit('/', 1)[-1]}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * (len(header) - len(columns) * (2 if with_delta else 1))
             + "---:|" * (len(columns) * (2 if with_delta else 1))]
    for row in board.rows:
        cells = ([row.model] if board.several_models else []) + [row_name(row, notes), seeds_text(board, row)]
        for c in columns:
            t = cell_text(board, row, c, notes)
            cells.append(" ".join(p for p in [marked_value(t), t.ci] + [f"[{n}]" for n in t.notes] if p))
            if with_delta:
                cells.append(t.delta)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def leaderboard_markdown(board: Leaderboard, plots: list[str]) -> str:
    notes = Notes()
    lines = [f"# {board.title}", "", *[f"- {line}" for line in legend(board)], "", *claims_markdown(board), "## Main metrics", ""]
    lines += _md_table(board, board.main, notes, with_delta=True)
    if board.others:
        lines += ["", "## Other metrics", ""] + _md_table(board, board.others, notes, with_delta=False)
    if notes.texts:
        lines += ["", "Notes:", ""] + [f"- [{i}] {text}" for i, text in enumerate(notes.texts, 1)]
    lines += ["", *differences_markdown(board), *methods_markdown(board), *training_markdown(board), *compute_markdown(board),
              *summary_markdown(board)]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)


def leaderboard_csv(board: Leaderboard) -> str:
    records = []
    for row in board.rows:
        for column in board.columns:
            if (row, column.key) not in board.cells:
                continue
            cell = board.cell(row, column)
            iv, div = cell.interval, cell.delta_interval
            records.append({
                "model": row.model, "method": row.label, "label": row.name, "base_method": row.method,
                "extension": row.extension, "varies": row.varies or "", "budget_differs": "; ".join(row.budget_differs),
                "suite": column.suite, "metric": column.metric, "main": column.main,
                "higher_is_better": "" if column.higher_is_better is None else column.higher_is_better,
                "mean": cell.mean, "n_seeds": len(cell.seeds),
                "seed_values": ";".join(f"{s}={v:.6g}" for s, v in cell.seeds.items()),
                "std": statistics.stdev(cell.seeds.values()) if len(cell.seeds) > 1 else None,
                "ci_low": cell.ci_low, "ci_high": cell.ci_high, "interval": iv.method if iv is not None else "",
                "seed_variance_estimated": "" if iv is None else iv.seed_variance, "n_items": cell.n_items,
                "delta": cell.delta, "delta_low": div.low if div is not None else None,
                "delta_high": div.high if div is not None else None, "best": cell.best, "tied": cell.tied,
                "note": "; ".join(cell.notes + cell.damage), "adapter": "" if row.original else row.adapter,
            })
    columns = ["model", "method", "label", "base_method", "extension", "varies", "budget_differs", "suite", "metric",
               "main", "higher_is_better", "mean", "n_seeds", "seed_values", "std", "ci_low", "ci_high", "interval",
               "seed_variance_estimated", "n_items", "delta", "delta_low", "delta_high", "best", "tied", "note"]
    if board.marks_adapters:  # reports of LoRA rows only keep the columns they always had
        columns.insert(columns.index("budget_differs") + 1, "adapter")
    return pd.DataFrame(records, columns=columns).to_csv(index=False, lineterminator="\n", float_format="%.6g")


def differences_csv(board: Leaderboard) -> str:
    buf = io.StringIO()
    frame = board.differences.reindex(columns=COLUMNS)
    if board.marks_adapters:  # which adapter each side trained (reports of LoRA rows only keep their columns)
        for column, side in (("adapter", "method"), ("versus_adapter", "versus")):
            frame.insert(frame.columns.get_loc("versus") + (1 if side == "method" else 2), column,
                         [board.adapter_of(m, label) for m, label in zip(frame["model"], frame[side])])
    frame.to_csv(buf, index=False, float_format="%.6g", lineterminator="\n")
    return buf.getvalue()


def difference_cells(board: Leaderboard, columns: list[Column]) -> list[tuple[str, str, str, list[str]]]:
    diffs = board.differences
    if diffs.empty:
        return []
    keyed = {(r.model, r.method, r.versus, r.suite, r.metric): r for r in diffs.itertuples(index=False)}
    marked = {(r.model, r.label): r.marked for r in board.rows}
    out = []
    for model, method, versus in dict.fromkeys(zip(diffs["model"], diffs["method"], diffs["versus"])):
        texts = []
        for c in columns:
            r = keyed.get((model, method, versus, c.suite, c.metric))
            if r is None:
                texts.append("—")
                continue
            d = decimals(board, c)
            text = fmt(r.difference, d, signed=True) + f" {interval_text(r.ci_low, r.ci_high, d, signed=True)}"
            text += MARKS.get(r.verdict, "")
            text += "" if r.seed_variance else " ‡"
            if not pd.isna(r.seeds_for_80_power):
                text += f" ({int(r.seeds_for_80_power)})"
            elif r.power_note:
                text += " (—)"
            texts.append(text.strip())
        out.append((model, marked.get((model, method), method), marked.get((model, versus), versus), texts))
    return out


MARKS = {"different": "*", "equivalent": "≡"}  # the verdicts after adjustment; "not resolved" has none


DIFFERENCES_NOTE = ("Each cell: the row minus the reference (its original, the baseline, or the row it varies), mean over "
                    "training seeds, [95% interval], then the verdict after adjustment (see Claims): * different, "
                    "≡ equivalent within the metric's margin, no mark: not resolved; ‡ one training seed on a side "
                    "(seed variance not estimated); (N): seeds per row that would give 80% power to detect this difference "
                    "at the observed variances (—: not reachable by more seeds, the item noise alone is too large).")


def claims_section(board: Leaderboard):
    """The claims section (``harness.report.claims.describe``) with numbers as their columns print them."""
    digits = {c.key: decimals(board, c) for c in board.columns}
    return describe(board.claims, lambda value, key, signed: fmt(value, digits.get(key, 3), signed))


def claims_markdown(board: Leaderboard) -> list[str]:
    if board.claims.exploratory and board.differences.empty:
        return []  # nothing is compared: nothing is claimed
    section = claims_section(board)
    lines = ["## Claims", ""] + [line for p in section.paragraphs for line in (p, "")]
    if section.rows:
        lines += ["| " + " | ".join(section.header) + " |", "|" + "---|" * 3 + "---:|" * 5 + "---|"]
        lines += ["| " + " | ".join(row) + " |" for row in section.rows] + [""]
    return lines + [f"- {note}" for note in section.notes] + ([""] if section.notes else [])


def differences_markdown(board: Leaderboard) -> list[str]:
    columns = board.main
    rows = difference_cells(board, columns)
    if not rows:
        return []
    header = (["model"] if board.several_models else []) + ["difference"] + [f"{c.key}{c.arrow}" for c in columns]
    exploratory = ["**Exploratory** (no analysis plan): every contrast below.", ""] if board.claims.exploratory else []
    lines = ["## Differences", "", *exploratory, DIFFERENCES_NOTE, "", INTERVALS, "", "| " + " | ".join(header) + " |",
             "|" + "---|" * (len(header) - len(columns)) + "---:|" * len(columns)]
    for model, method, versus, texts in rows:
        lines.append("| " + " | ".join(([model] if board.several_models else []) + [f"{method} − {versus}"] + texts) + " |")
    return lines + ["", "Every shown metric's differences are in differences.csv.", ""]


def methods_markdown(board: Leaderboard) -> list[str]:
    if not board.descriptions:
        return []
    lines = ["## Methods", ""]
    for label, (description, citation) in board.descriptions.items():
        lines.append(f"- **{label}**: {description}" + (f" ({citation})" if citation else ""))
    return lines + [""]


def training_table(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    header = ["model", "method", "seeds", "steps", "trainable params", "target tokens", "total tokens", "wall s", "final loss"]
    rows = []
    names = {r.label: r.name for r in board.rows}
    trained = training_runs(board)
    sampled = any("generated_tokens" in r for _, _, runs in trained for r in runs)
    if sampled:  # on-policy rows generate while they train (reports without one keep their columns)
        header.insert(header.index("wall s"), "generated tokens")
    for model, label, runs in trained:
        def mean_of(key):
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            return statistics.fmean(values) if values else None
        final = [r["losses"][-1] for r in runs if r.get("losses")]
        cells = [f"{v:,.0f}" if v is not None else "—" for v in
                 (mean_of("steps"), mean_of("trainable_params"), mean_of("target_tokens"), mean_of("total_tokens"))]
        if sampled:
            generated = mean_of("generated_tokens")
            cells.append(f"{generated:,.0f}" if generated is not None else "—")
        wall = mean_of("wall_s")
        cells.append(f"{wall:,.1f}" if wall is not None else "—")
        cells.append(f"{statistics.fmean(final):.3f}" if final else "—")
        rows.append([model, names.get(label, label), str(len(runs))] + cells)
    return header, rows


def training_markdown(board: Leaderboard) -> list[str]:
    header, rows = training_table(board)
    if not rows:
        return []
    return ["## Training (mean over seeds)", "", "| " + " | ".join(header) + " |",
            "|---|---|" + "---:|" * (len(header) - 2)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
