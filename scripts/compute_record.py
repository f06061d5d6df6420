"""The compute a run cost, per method and per stage, from its manifest.json alone.

    python scripts/compute_record.py reports/smollm2-135m-de-en-v2/run

Prints a markdown table: per row of the leaderboard, the training seeds found, training
wall time and tokens (from ``training``), evaluation wall time (``timings``: scoring,
and retention's forward passes) and what its models generated anew (``generated``:
answers, tokens, seconds; the original's row holds all it generated: its answers,
retention's reference answers and the methods' training data such as rationales). Units
computed before the manifest had ``generated`` are not in it: the column "cells recorded"
says how many of a row's cells are. Wall times are those of the machine and load
each unit ran under (``cells``/``computed`` say where and when)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def record(manifest: dict) -> list[dict]:
    """One dict per row: original first, then the trained rows in manifest order."""
    timings, generated = manifest.get("timings", {}), manifest.get("generated", {})
    rows = []
    labels = ["original"] + [label for label in manifest.get("methods", {}) if label != "original"]
    for label in labels:
        trained = manifest.get("training", {}).get(label, {})
        if label != "original" and not trained:
            continue
        cells = ["original"] if label == "original" else [f"{label}-seed{s}" for s in trained]
        evals = [v for k, v in timings.items() if (m := re.fullmatch(r"eval (\S+) \S+", k)) and m.group(1) in cells]
        gen_keys = [k for k in generated if k in cells or (label == "original" and k.startswith("original for "))]
        own = [t for t in trained.values() if not t.get("shared_with")]  # a shared training counts once, at its donor
        donors = sorted({t["shared_with"].split(" seed ")[0] for t in trained.values() if t.get("shared_with")})
        rows.append({
            "row": label + (f" (training of {', '.join(donors)})" if donors else ""),
            "seeds": len(trained) if label != "original" else None,
            "train_s": sum(t.get("wall_s", 0.0) for t in own),
            "tokens_trained": sum(t.get("total_tokens", 0) for t in own),
            "target_tokens": sum(t.get("target_tokens", 0) for t in own),
            "eval_s": sum(evals),
            "generated_cells": min(len(gen_keys), 1) if label == "original" else len(gen_keys), "cells": len(cells),
            "answers": sum(generated[k]["answers"] for k in gen_keys),
            "new_tokens": sum(generated[k]["new_tokens"] for k in gen_keys),
            "generate_s": sum(generated[k]["seconds"] for k in gen_keys),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| row | seeds | training h | tokens trained (targets) | evaluation h | generated anew: cells recorded | "
            "answers | tokens | h |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['seeds'] if r['seeds'] is not None else '—'} | {r['train_s'] / 3600:.2f} | "
            f"{r['tokens_trained']:,} ({r['target_tokens']:,}) | {r['eval_s'] / 3600:.2f} | "
            f"{r['generated_cells']}/{r['cells']} | {r['answers']:,} | {r['new_tokens']:,} | {r['generate_s'] / 3600:.2f} |")
    total = {k: sum(r[k] for r in rows) for k in ("train_s", "tokens_trained", "target_tokens", "eval_s", "answers",
                                                   "new_tokens", "generate_s")}
    lines.append(f"| all | | {total['train_s'] / 3600:.2f} | {total['tokens_trained']:,} ({total['target_tokens']:,}) | "
                 f"{total['eval_s'] / 3600:.2f} | | {total['answers']:,} | {total['new_tokens']:,} | "
                 f"{total['generate_s'] / 3600:.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not (Path(argv[0]) / "manifest.json").is_file():
        print("usage: python scripts/compute_record.py RUN_DIR (a folder with manifest.json)", file=sys.stderr)
        return 2
    print(markdown(record(json.loads((Path(argv[0]) / "manifest.json").read_text(encoding="utf-8")))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
