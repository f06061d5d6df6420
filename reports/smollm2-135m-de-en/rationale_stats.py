"""What the 135M model's rationales look like: `python reports/smollm2-135m-de-en/rationale_stats.py`.

Reads the RaDis training examples the run wrote (run/models/radis/seed0/examples.jsonl,
not committed: it embeds the training pairs) and prints how long the rationales are, how
often they merely repeat the reference or the task, and how repetitive they are.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def repeated_4gram_share(tokens: list[str]) -> float:
    grams = [tuple(tokens[i:i + 4]) for i in range(len(tokens) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def main(path: Path) -> None:
    if not path.exists():
        sys.exit(f"{path} does not exist: run the report's config first (see README.md).")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    stats = []
    for row in rows:
        target = "".join(s["text"] for s in row["response"] if s["kind"] == "target")
        rationale = "".join(s["text"] for s in row["response"] if s["kind"] == "rationale").strip()
        tokens = words(rationale)
        stats.append({
            "words": len(tokens),
            "empty": not tokens,
            "repeats_reference": bool(target.strip()) and target.strip().lower() in rationale.lower(),
            "restates_task": "translate" in rationale.lower()[:80],
            "repetition": repeated_4gram_share(tokens),
        })
    n = len(stats)
    print(f"{path}: {n} rationales")
    print(f"  words: mean {statistics.fmean(s['words'] for s in stats):.1f}, median {statistics.median(s['words'] for s in stats):.0f}")
    for key in ("empty", "repeats_reference", "restates_task"):
        print(f"  {key}: {sum(s[key] for s in stats) / n:.1%}")
    print(f"  repeated word 4-grams: mean share {statistics.fmean(s['repetition'] for s in stats):.1%}; "
          f"over 20% in {sum(s['repetition'] > 0.2 for s in stats) / n:.1%} of rationales")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "run" / "models" / "radis" / "seed0" / "examples.jsonl")
