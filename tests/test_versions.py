"""Units tied to the code that computes them: code versions in every key, and a run that can
refuse to compute from uncommitted code (issue 30)."""

from __future__ import annotations

import subprocess

import pytest

from harness import versions
from harness.config.settings import RunConfig
from harness.config.parse import apply_settings
from harness.errors import UserError
from harness.run.execute import Execution
from harness.run.dryrun import print_plan
from harness.run.plan import Plan


def tiny_plan(model, out, **extra) -> Plan:
    cfg = RunConfig()
    apply_settings(cfg, {"model": str(model), "methods": ["vanilla", "sdft"], "suites": ["translation"], "data_dir": "starter",
                         "train_size": 4, "eval_size": 2, "max_new_tokens": 4, "out": str(out),
                         "budget": {"steps": 1, "batch_size": 2, "save_every": 0},
                         "method_options": {"sdft": {"max_new_tokens": 4}}, **extra}, "the test")
    return Plan(cfg)


def test_every_key_holds_the_versions_of_the_code_that_computes_it(tiny_checkpoint, tmp_path, monkeypatch):
    plan = tiny_plan(tiny_checkpoint, tmp_path / "run")
    train = {label: plan.keys.train_key(label, 0) for label in plan.entries}
    evaluation = plan.keys.eval_key(plan.keys.model_key("vanilla-seed0"), "translation")

    def keys_after(change):
        with monkeypatch.context() as m:
            change(m)
            fresh = tiny_plan(tiny_checkpoint, tmp_path / "run")
            return ({label: fresh.keys.train_key(label, 0) for label in fresh.entries},
                    fresh.keys.eval_key(fresh.keys.model_key("vanilla-seed0"), "translation"))

    trainer = keys_after(lambda m: m.setattr(versions, "TRAINER", versions.TRAINER + 1))
    assert all(trainer[0][label] != train[label] for label in train) and trainer[1] != evaluation
    # the generator: every evaluation, and the trainings of methods that generate with the original
    generator = keys_after(lambda m: m.setattr(versions, "GENERATOR", versions.GENERATOR + 1))
    assert generator[0]["vanilla"] == train["vanilla"] and generator[0]["sdft"] != train["sdft"]
    assert generator[1] != evaluation
    method = keys_after(lambda m: m.setattr(type(plan.methods["sdft"]), "version", type(plan.methods["sdft"]).version + 1))
    assert method[0]["sdft"] != train["sdft"] and method[0]["vanilla"] == train["vanilla"] and method[1] == evaluation
    suite = keys_after(lambda m: m.setattr(type(plan.suites["translation"]), "version",
                                           type(plan.suites["translation"]).version + 1))
    assert suite[0] == train and suite[1] != evaluation


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_uncommitted_code_is_found_but_reports_and_prose_are_not(tmp_path):
    root = tmp_path / "checkout"
    (root / "harness").mkdir(parents=True)
    (root / "reports" / "r").mkdir(parents=True)
    (root / "harness" / "x.py").write_text("a = 1\n")
    (root / "README.md").write_text("# x\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    assert versions.source_changes(root) == []
    (root / "README.md").write_text("# y\n")
    (root / "reports" / "r" / "scores.csv").write_text("a\n")
    assert versions.source_changes(root) == []
    (root / "harness" / "x.py").write_text("a = 2\n")
    (root / "harness" / "new.py").write_text("")
    assert sorted(line[3:] for line in versions.source_changes(root)) == ["harness/new.py", "harness/x.py"]
    assert versions.source_changes(tmp_path / "not-a-checkout") is None


def test_require_clean_code_refuses_to_compute_but_not_to_reuse(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(versions, "source_changes", lambda root=None: [" M harness/model/training.py"])
    plan = tiny_plan(tiny_checkpoint, out, require_clean_code=True)
    with pytest.raises(UserError, match=r"uncommitted changes \(harness/model/training.py\)"):
        Execution(plan).run()
    assert not (out / "results").exists() and not (out / "models").exists()  # nothing computed
    with pytest.raises(UserError, match="uncommitted changes"):
        print_plan(tiny_plan(tiny_checkpoint, out, require_clean_code=True))  # the dry run stops as the run would

    monkeypatch.setattr(versions, "source_changes", lambda root=None: [])
    Execution(tiny_plan(tiny_checkpoint, out, require_clean_code=True)).run()
    monkeypatch.setattr(versions, "source_changes", lambda root=None: [" M harness/model/training.py"])
    Execution(tiny_plan(tiny_checkpoint, out, require_clean_code=True)).run()  # everything reused: nothing to refuse
    said = capsys.readouterr()
    assert "0 units computed" in said.out + said.err
