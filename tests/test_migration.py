"""Units of the published first-version run (key scheme 1): every unit whose computation is
unchanged is re-keyed and reused, RaDis's are recomputed (its rationales' token ids and its
cut-off rule changed on purpose). The old keys are those committed in
reports/smollm2-135m-de-en/run until 2026-12-02, when they were migrated and its RaDis units
recomputed (git history holds them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.config.settings import RunConfig
from harness.config.parse import apply_settings, read_config_file
from harness.run.plan import Plan, configure
from harness.run.units import Units

CONFIG = Path(__file__).resolve().parents[1] / "reports" / "smollm2-135m-de-en" / "config.yaml"
# (label, seed) -> the scheme-1 training key, and (cell, suite) -> the scheme-1 evaluation key
V1_TRAIN = {("vanilla", 0): "d12935fcc62d2b67", ("radis", 0): "bb27762c8d145ffd", ("radis", 1): "50955be63c5210cf"}
V1_EVAL = {("vanilla-seed0", "translation"): "7e6633e43481f32f", ("radis-seed0", "translation"): "71a03dd8b1bbf365"}


def write_units(units: Units, trainings: dict, evaluations: dict) -> None:
    """Finished training and evaluation units holding the given keys."""
    for (label, seed), key in trainings.items():
        workdir = units.workdir(label, seed)
        workdir.mkdir(parents=True)
        (workdir / "unit_key.txt").write_text(key)
        (workdir / "train_stats.json").write_text("{}")
    for (cell, suite), key in evaluations.items():
        path = units.result_path(cell, suite)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "metrics": [], "not_scored": []}))


@pytest.fixture
def first_trainer(monkeypatch):
    """The trainer as it was when these units were made (version 1): since trainer version 2
    (issue 36) no unit made before code versions existed is reused for a training, nor for the
    evaluation of a trained model (``test_a_trainer_past_version_1_recomputes_the_trainings``)."""
    import harness.versions as versions

    monkeypatch.setattr(versions, "TRAINER", 1)


def published_plan(run_dir: Path, data_dir: Path) -> Plan:
    cfg = RunConfig()
    configure(cfg, read_config_file(CONFIG), str(CONFIG))
    apply_settings(cfg, {"out": str(run_dir), "data_dir": str(data_dir)}, "the test")
    return Plan(cfg, config_file=CONFIG)


@pytest.mark.parametrize("where", ["shared", "elsewhere"])
def test_first_version_units_are_rekeyed_except_radis(tmp_path, data_dir, where, first_trainer):
    """Scheme 1 hashed the data dir's absolute path: a clone whose data lies elsewhere (CI's)
    must still reuse the published units, by the data label they were made with."""
    if where == "elsewhere":
        data_dir = Path(shutil.copytree(data_dir, tmp_path / "data", symlinks=False))
    run_dir = tmp_path / "run"
    plan = published_plan(run_dir, data_dir)
    units = Units(plan)
    write_units(units, V1_TRAIN, V1_EVAL)

    assert units.training_done("vanilla", 0)
    assert (units.workdir("vanilla", 0) / "unit_key.txt").read_text() == plan.keys.train_key("vanilla", 0)
    done = units.evaluation("vanilla-seed0", "translation")
    assert done["key_before_versions"] == V1_EVAL[("vanilla-seed0", "translation")] and done["unversioned"]
    assert json.loads((units.workdir("vanilla", 0) / "train_stats.json").read_text())["unversioned"]
    assert units.unversioned == {"training vanilla seed 0", "evaluation vanilla-seed0 on translation"}
    assert "2 units in use were computed before radis-bench recorded code versions" in units.unversioned_warning()
    # RaDis computes something else now: recomputed, never silently reused
    assert not units.training_done("radis", 0) and not units.training_done("radis", 1)
    assert units.evaluation("radis-seed0", "translation") is None
    assert (units.workdir("radis", 0) / "unit_key.txt").read_text() == V1_TRAIN[("radis", 0)]
    assert units.rekeyed == 2


def test_a_trainer_past_version_1_recomputes_the_trainings(tmp_path, data_dir):
    """With the trainer at its current version (2), the first-version training and the
    evaluation of its model are not reused."""
    from harness import versions

    assert versions.TRAINER > 1
    plan = published_plan(tmp_path / "run", data_dir)
    units = Units(plan)
    write_units(units, {("vanilla", 0): V1_TRAIN[("vanilla", 0)]},
                {("vanilla-seed0", "translation"): V1_EVAL[("vanilla-seed0", "translation")]})
    assert not units.training_done("vanilla", 0) and units.evaluation("vanilla-seed0", "translation") is None
    assert units.rekeyed == 0 and not units.unversioned


def test_a_copy_with_other_files_does_not_claim_the_published_units(tmp_path, data_dir):
    """The published data path is tried only for a data dir holding the very same files."""
    copy = Path(shutil.copytree(data_dir, tmp_path / "data"))
    with (copy / "advbench" / "harmful_behaviors.csv").open("a") as fh:
        fh.write('"one more harmful request","Sure, here is"\n')
    plan = published_plan(tmp_path / "run", copy)
    units = Units(plan)
    write_units(units, {("vanilla", 0): V1_TRAIN[("vanilla", 0)]}, {})
    assert not units.training_done("vanilla", 0)
    assert units.rekeyed == 0


V2 = Path(__file__).resolve().parents[1] / "reports" / "smollm2-135m-de-en-v2"


def test_units_made_before_code_versions_are_reused_with_a_warning_unless_their_code_moved(tmp_path, data_dir,
                                                                                            first_trainer):
    """The v2 report's units hold scheme-2 keys (no code versions): those of unchanged code
    are taken for version 1 and reused, marked; retention (version 2 since it scores the
    generated ids) and the λ rows (the end of turn has its own weight now) are recomputed."""
    cfg = RunConfig()
    configure(cfg, read_config_file(V2 / "config.yaml"), "v2")
    apply_settings(cfg, {"out": str(tmp_path / "run"), "data_dir": str(data_dir)}, "the test")
    plan = Plan(cfg)
    shutil.copytree(V2 / "run" / "results", plan.run_dir / "results")
    shutil.copytree(V2 / "run" / "models", plan.run_dir / "models")
    units = Units(plan, readonly=True)
    for cell, label in (("original", None), ("vanilla-seed3", "vanilla"), ("radis-seed5", "radis"),
                        ("radis@rationale_weight=0.5-seed1", "radis@rationale_weight=0.5")):
        if label:
            assert units.training_done(label, int(cell.rsplit("seed", 1)[1])) is (label in ("vanilla", "radis"))
        assert (units.evaluation(cell, "translation") is not None) is (label in (None, "vanilla", "radis"))
        assert units.evaluation(cell, "retention") is None  # retention's code moved: recomputed
    assert "training vanilla seed 3" in units.unversioned and "evaluation original on translation" in units.unversioned
    rows = plan.describe_rows()
    assert next(r for r in rows if r["label"] == "radis@rationale_weight=0.5")["options"]["end_of_turn_weight"] == 1.0
