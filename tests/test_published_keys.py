"""The unit keys of every published configuration are pinned: a change to how keys are
computed (a refactor, a new setting) must leave them as they are, or the published units
would be recomputed or, worse, re-keyed silently. A key that changes on purpose (a code
version bumped, an option added whose default computes something new) is recorded again:

    .venv/bin/python tests/test_published_keys.py --record
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = Path(__file__).resolve().parent / "golden" / "published_keys.json"


def configs() -> list[Path]:
    return sorted(p for p in (ROOT / "reports").glob("*/config*.yaml"))


def keys_of(config: Path, data_dir: Path) -> dict:
    """Every training and evaluation key of a published configuration's plan."""
    from harness.config.settings import RunConfig
    from harness.config.parse import apply_settings, read_config_file
    from harness.run.plan import Plan, configure

    cfg = RunConfig()
    configure(cfg, read_config_file(config), str(config))
    apply_settings(cfg, {"data_dir": str(data_dir)}, "the test")
    plan = Plan(cfg, config_file=config)
    out = {"train": {}, "eval": {}}
    for cell, label, seed in plan.trained_units():
        out["train"][cell] = plan.keys.train_key(label, seed)
    for cell in plan.cells():
        for suite in plan.suites:
            out["eval"][f"{cell}/{suite}"] = plan.keys.eval_key(plan.keys.model_key(cell), suite)
    return out


@pytest.mark.slow
def test_the_published_configurations_keep_their_unit_keys(data_dir):
    recorded = json.loads(KEYS.read_text())
    names = {str(c.relative_to(ROOT)) for c in configs()}
    assert names == set(recorded), "a published configuration was added or removed: record the keys again"
    for config in configs():
        assert keys_of(config, data_dir) == recorded[str(config.relative_to(ROOT))], config


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        raise SystemExit("usage: python tests/test_published_keys.py --record")
    sys.path.insert(0, str(ROOT))
    from harness.paths import default_data_dir

    KEYS.write_text(json.dumps({str(c.relative_to(ROOT)): keys_of(c, default_data_dir()) for c in configs()},
                               indent=1, sort_keys=True) + "\n")
    print(f"recorded {KEYS}")
