"""The report as one self-contained HTML page (inline CSS, plots as data URIs), rendered from
the template ``leaderboard.html.j2``: the same tables as the markdown."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import jinja2

from harness.report.board import Column, Leaderboard
from harness.report.compute import COMPUTE_NOTE, compute_table
from harness.report.text import (
    DIFFERENCES_NOTE,
    Notes,
    cell_text,
    claims_section,
    difference_cells,
    legend,
    marked_value,
    row_name,
    seeds_text,
    training_table,
)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 24px; color: #1d1d1f; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 18px; margin-top: 28px; }
p.legend { font-size: 13px; color: #444; margin: 2px 0; }
.scroll { overflow-x: auto; margin-top: 12px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; text-align: center; font-weight: 600; }
td.label { white-space: nowrap; }
th.main { background: #dce8f7; }
td.num { text-align: right; white-space: nowrap; }
td.best { background: #e4f4e4; } td.best .v { font-weight: 700; } td.tied { background: #f3f8ec; }
tr.original td { background: #fafafa; } tr.original td.label { font-style: italic; }
.ci { color: #666; font-size: 11px; } .d { font-size: 12px; color: #666; }
.d.up { color: #1a7f37; } .d.down { color: #c62828; }
.missing { color: #999; } sup a { color: #555; text-decoration: none; }
ol.notes { font-size: 13px; color: #333; }
figure { margin: 16px 0; } figure img { max-width: 100%; border: 1px solid #e0e0e0; }
figcaption { font-size: 12px; color: #555; }
"""


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` of a claims paragraph as html."""
    return re.sub(r"`(.+?)`", r"<code>\1</code>", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text)))


_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
                          autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                          undefined=jinja2.StrictUndefined)
_ENV.filters.update(esc=html.escape, inline=_inline)  # html.escape's entities, as the page always had


def _table(board: Leaderboard, columns: list[Column], notes: Notes, with_delta: bool) -> dict:
    """A leaderboard table's values for the template (numbering the notes as the markdown does)."""
    heads = [{"main": c.main, "unit": c.unit, "suite": c.suite, "metric": c.metric, "arrow": c.arrow,
              "short": c.metric.rsplit("/", 1)[-1]} for c in columns]
    rows = []
    for row in board.rows:
        named = {"original": row.original, "model": row.model, "name": row_name(row, notes), "seeds": seeds_text(board, row)}
        cells = []
        for c in columns:
            t = cell_text(board, row, c, notes)
            cells.append({"value": t.value, "notes": t.notes, "mark": t.mark, "hover": t.hover, "ci": t.ci,
                          "shown": marked_value(t, markdown=False), "delta": t.delta,
                          "direction": {1: " up", -1: " down", 0: ""}[t.delta_sign]})
        rows.append({**named, "cells": cells})
    return {"columns": heads, "rows": rows, "with_delta": with_delta}


def leaderboard_html(board: Leaderboard, plots: dict[str, bytes]) -> str:
    """The page: claims, the main and other metrics, notes, differences, methods, training and plots."""
    notes = Notes()
    claims = None if board.claims.exploratory and board.differences.empty else claims_section(board)
    main = _table(board, board.main, notes, with_delta=True)
    others = _table(board, board.others, notes, with_delta=False) if board.others else None
    cells = difference_cells(board, board.main)
    header, training_rows = training_table(board)
    return _ENV.get_template("leaderboard.html.j2").render(
        title=board.title, css=_CSS, legend=legend(board), claims=claims, several_models=board.several_models,
        main=main, others=others, notes=notes.texts, exploratory=board.claims.exploratory,
        differences={"columns": board.main, "rows": cells} if cells else None, differences_note=DIFFERENCES_NOTE,
        methods=[(label, d, c) for label, (d, c) in board.descriptions.items()],
        training={"header": header, "rows": training_rows},
        compute=dict(zip(("header", "rows"), compute_table(board)), note=COMPUTE_NOTE),
        plots=[(name, base64.b64encode(png).decode("ascii")) for name, png in plots.items()],
    )
