"""`radis-bench run` end to end on a tiny model: files, reuse, kill-and-resume, locking,
combined reports, plugins."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SUITES = "translation,safety,retention,gsm8k"


def run_args(model: Path, out: Path, methods="radis,vanilla,sdft", seeds="0"):
    return [
        "run", "--model", str(model), "--methods", methods, "--suites", SUITES, "--seeds", seeds,
        "--train-size", "16", "--eval-size", "6", "--steps", "6", "--batch-size", "4", "--out", str(out),
        "--set", "max_new_tokens=12", "--set", "radis.max_new_tokens=12", "--set", "sdft.max_new_tokens=12",
        "--set", "retention.max_new_tokens=12", "--set", "translation.max_new_tokens=12",
        "--set", "budget.save_every=2",
    ]


def cli(args, env_extra=None, wait=True, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    cmd = [sys.executable, "-m", "harness", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=cwd)


def read_scores(run_dir: Path) -> list[dict]:
    with (run_dir / "scores.csv").open() as fh:
        return list(csv.DictReader(fh))


def unit_mtimes(run_dir: Path) -> dict[str, int]:
    """Modification times of the finished units: results/<label>/<suite>.json and train_stats.json.
    (A unit's items/<suite>.json is written just before its result file, so a kill between the
    two leaves it behind for an unfinished unit, which a resumed run rightly recomputes.)"""
    files = list((run_dir / "results").glob("*/*.json")) + list((run_dir / "models").rglob("train_stats.json"))
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in files}


def kill_when(proc, condition, timeout=600, sig=signal.SIGKILL) -> str:
    """Send ``sig`` once ``condition()`` holds; the process's stderr."""
    start = time.time()
    while time.time() - start < timeout:
        if condition():
            proc.send_signal(sig)
            return proc.communicate(timeout=120)[1]
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended before the kill point (rc={proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("kill point never reached")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_checkpoint):
    """An uninterrupted run, the baseline of every comparison."""
    root = tmp_path_factory.mktemp("ref")
    env = {"RADIS_BENCH_CACHE": str(root / "cache")}
    result = cli(run_args(tiny_checkpoint, root / "run"), env)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run", env, result


def test_run_writes_every_artefact(reference_run):
    run_dir, _, result = reference_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for name in ("scores.csv", "run.log", "report/leaderboard.md", "report/leaderboard.csv", "report/leaderboard.html"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "report").glob("*.png"))
    for label in ("original", "radis-seed0", "vanilla-seed0", "sdft-seed0"):
        for suite in SUITES.split(","):
            rows = (run_dir / "outputs" / label / f"{suite}.jsonl").read_text().splitlines()
            assert rows and all(json.loads(r) for r in rows)
    # identical budgets, and the tokens each method trained on
    budgets = {m: manifest["training"][m]["0"] for m in ("radis", "vanilla", "sdft")}
    assert {b["steps"] for b in budgets.values()} == {6}
    assert manifest["budget"]["batch_size"] == 4 and manifest["budget"]["learning_rate"] == 2e-4
    assert manifest["lora"]["r"] == 16 and manifest["seeds"] == [0]
    assert all(b["target_tokens"] > 0 for b in budgets.values())
    # a random tiny model writes blank rationales, which fall back to vanilla examples
    assert budgets["radis"]["target_tokens"] >= budgets["vanilla"]["target_tokens"]
    assert manifest["methods"]["radis"]["options"]["rationale_weight"] == 1.0
    assert manifest["versions"]["torch"] and manifest["data"]["source"].startswith("starter")
    scores = read_scores(run_dir)
    methods = {r["method"] for r in scores}
    assert methods == {"original", "radis", "vanilla", "sdft"}
    retention_kl = {r["method"]: float(r["value"]) for r in scores if r["suite"] == "retention" and r["metric"] == "kl"}
    assert retention_kl["original"] == 0.0 and retention_kl["vanilla"] > 0.0
    # provenance: every unit and every cell names the process and the code that computed it
    assert set(manifest["cells"]) == {"original", "radis-seed0", "vanilla-seed0", "sdft-seed0"}
    assert {c["git"]["commit"] for c in manifest["cells"].values()} == {manifest["git"]["commit"]}
    # what each model generated anew: the original's batch (its answers, retention's, the methods' data) and each row's
    generated = manifest["generated"]
    assert {"radis-seed0", "vanilla-seed0", "sdft-seed0"} <= set(generated)
    original_work = [k for k in generated if k.startswith("original for ")]
    assert len(original_work) == 1 and "radis data" in original_work[0] and "sdft data" in original_work[0]
    assert all(g["answers"] > 0 and g["new_tokens"] >= g["answers"] and g["seconds"] > 0 for g in generated.values())
    # the compute record reads all of it back: every row's tokens, training and what its model generated
    record = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "compute_record.py"), str(run_dir)],
                            capture_output=True, text=True, check=True).stdout
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in record.splitlines()[2:]]
    rows = {c[0].split(" (training of")[0]: c for c in cells}
    assert set(rows) == {"original", "radis", "vanilla", "sdft", "all"}
    own = [b for b in budgets.values() if not b.get("shared_with")]  # a shared training (here blank rationales) counts once
    assert rows["all"][3] == f"{sum(b['total_tokens'] for b in own):,} ({sum(b['target_tokens'] for b in own):,})"
    assert sum("(training of" in c[0] for c in cells) == len(budgets) - len(own)
    assert all(rows[r][5] == "1/1" and int(rows[r][7].replace(",", "")) > 0 for r in ("original", "radis", "vanilla", "sdft"))
    units = [json.loads(p.read_text()) for p in (run_dir / "results").glob("*/*.json")]
    units += [json.loads(p.read_text()) for p in (run_dir / "models").rglob("train_stats.json")]
    assert len(units) == 4 * len(SUITES.split(",")) + 3
    assert {(u["computed"]["git"]["commit"], u["computed"]["pid"]) for u in units} == {
        (manifest["git"]["commit"], manifest["cells"]["original"]["pid"])}


def test_rerun_reuses_everything(reference_run):
    run_dir, env, _ = reference_run
    before = unit_mtimes(run_dir)
    items_before = {p: p.stat().st_mtime_ns for p in (run_dir / "results").glob("*/items/*.json")}
    scores = (run_dir / "scores.csv").read_text()
    cells = json.loads((run_dir / "manifest.json").read_text())["cells"]
    generated = json.loads((run_dir / "manifest.json").read_text())["generated"]
    again = cli(run_args(Path(json.loads((run_dir / "manifest.json").read_text())["config"]["model"]), run_dir), env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert unit_mtimes(run_dir) == before
    assert items_before and {p: p.stat().st_mtime_ns for p in (run_dir / "results").glob("*/items/*.json")} == items_before
    assert (run_dir / "scores.csv").read_text() == scores
    assert "0 units computed" in again.stderr
    assert json.loads((run_dir / "manifest.json").read_text())["cells"] == cells  # a re-render computed nothing
    assert json.loads((run_dir / "manifest.json").read_text())["generated"] == generated  # and generated nothing
    assert "reused: training radis seed 0" not in again.stderr  # nothing even loaded
    log = (run_dir / "run.log").read_text()
    assert "reused: original on translation" in log


def test_dry_run_says_what_is_finished_and_what_is_to_compute(reference_run, tiny_checkpoint):
    run_dir, env, _ = reference_run
    before, keys = unit_mtimes(run_dir), {p: p.read_text() for p in run_dir.rglob("*.json")}
    same = cli(run_args(tiny_checkpoint, run_dir) + ["--dry-run"], {**env, "COLUMNS": "400"})
    assert same.returncode == 0, same.stderr[-3000:]
    out = " ".join(same.stdout.split())
    # 3 trained models and the original, 4 suites each
    assert "To compute: nothing: all 3 trainings and 16 evaluations are finished under the current keys" in out, out
    assert "0.0M tokens trained, 0.0M tokens generated" in out and "(nothing to compute)" in out
    more = cli(run_args(tiny_checkpoint, run_dir, seeds="0,1") + ["--dry-run"], {**env, "COLUMNS": "400"})
    assert more.returncode == 0, more.stderr[-3000:]
    out = " ".join(more.stdout.split())
    assert "To compute: 3 trainings and 12 evaluations (radis-seed1, vanilla-seed1, sdft-seed1); " \
           "3 trainings and 16 evaluations finished, reused" in out, out
    other = cli(run_args(tiny_checkpoint, run_dir) + ["--steps", "5", "--dry-run"], {**env, "COLUMNS": "400"})
    assert other.returncode == 0, other.stderr[-3000:]
    assert "3 trainings and 12 evaluations" in " ".join(other.stdout.split())  # another budget: every trained unit anew
    # a dry run reads: no unit or key file changed
    assert unit_mtimes(run_dir) == before and {p: p.read_text() for p in run_dir.rglob("*.json")} == keys


def test_killed_during_training_and_evaluation_resumes_to_the_same_scores(reference_run, tiny_checkpoint, tmp_path):
    ref_dir, _, _ = reference_run
    env = {"RADIS_BENCH_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    args = run_args(tiny_checkpoint, run_dir)
    # 1) kill while radis trains (after its first state save). The tiny model's rationales are
    # all rejected, so vanilla's and sdft's trainings are identical to it and get copied.
    proc = cli(args, env, wait=False)
    kill_when(proc, lambda: (run_dir / "models" / "radis" / "seed0" / "state").exists())
    done_before = unit_mtimes(run_dir)
    assert not (run_dir / "models" / "radis" / "seed0" / "train_stats.json").exists()
    # 2) restart, kill during the evaluation of sdft
    proc = cli(args, env, wait=False)
    kill_when(proc, lambda: (run_dir / "results" / "sdft-seed0" / "translation.json").exists())
    for name, mtime in done_before.items():
        assert unit_mtimes(run_dir)[name] == mtime, f"{name} was recomputed"
    done_before = unit_mtimes(run_dir)
    # 3) finish
    final = cli(args, env)
    assert final.returncode == 0, final.stderr[-3000:]
    for name, mtime in done_before.items():
        assert unit_mtimes(run_dir)[name] == mtime, f"{name} was recomputed"
    stats = json.loads((run_dir / "models" / "radis" / "seed0" / "train_stats.json").read_text())
    assert stats["resumed_from_step"] is not None and stats["resumed_from_step"] > 0
    ours = [{k: v for k, v in r.items()} for r in read_scores(run_dir)]
    ref = read_scores(ref_dir)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert (a["method"], a["suite"], a["metric"]) == (b["method"], b["suite"], b["metric"])
        if a["value"] and b["value"]:
            assert float(a["value"]) == pytest.approx(float(b["value"]), rel=1e-4, abs=1e-6), (a, b)
        else:
            assert a["value"] == b["value"]


def test_sigterm_stops_with_one_line_and_resumes(tiny_checkpoint, tmp_path):
    """A batch system's cancel (SIGTERM) stops like Ctrl-C: one line, no traceback, the lock
    released and the saved training state picked up by the next run."""
    env = {"RADIS_BENCH_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    args = run_args(tiny_checkpoint, run_dir, methods="vanilla")
    proc = cli(args, env, wait=False)
    err = kill_when(proc, lambda: (run_dir / "models" / "vanilla" / "seed0" / "state").exists(), sig=signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    assert "error: stopped (SIGTERM); finished stages are saved" in err and "Traceback" not in err
    assert not (run_dir / "models" / "vanilla" / "seed0" / "train_stats.json").exists()
    again = cli(args, env)
    assert again.returncode == 0, again.stderr[-3000:]
    stats = json.loads((run_dir / "models" / "vanilla" / "seed0" / "train_stats.json").read_text())
    assert stats["resumed_from_step"] is not None and stats["resumed_from_step"] > 0


def test_second_concurrent_run_exits_2(reference_run, tiny_checkpoint, tmp_path):
    from harness.store import RunLock

    run_dir = tmp_path / "locked"
    with RunLock(run_dir):
        result = cli(run_args(tiny_checkpoint, run_dir), {"RADIS_BENCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2
    assert "in use by radis-bench process" in result.stderr and "Traceback" not in result.stderr


def test_report_combines_two_runs(reference_run, tmp_path):
    run_dir, _, _ = reference_run
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text((run_dir / "manifest.json").read_text().replace('"model": {', '"model": {"alias": 1, ', 1))
    rows = read_scores(run_dir)
    with (other / "scores.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "model": "second-model"})
    result = cli(["report", str(run_dir), str(other), "--out", str(tmp_path / "combined")])
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "combined" / "leaderboard.csv").read_text()
    assert "second-model" in table and str(json.loads((run_dir / "manifest.json").read_text())["config"]["model"]) in table


def test_external_plugin_method_is_listed_and_runs(tiny_checkpoint, tmp_path):
    """A method from another package, registered only through the entry-point group."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "echo_method.py").write_text(textwrap.dedent('''
        from harness.plugins.method import Method, Segment, TrainingExample
        from harness.model.prompts import translation_prompt, user_turn

        class EchoMethod(Method):
            name = "echo"
            description = "plugin test: trains on the source sentence itself"

            def build_training_examples(self, ctx):
                return [TrainingExample(user_turn(translation_prompt(p)), [Segment(p.source)]) for p in ctx.pairs]
    '''))
    dist = site / "echo_method-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-method\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[radis_bench.methods]\necho = echo_method:EchoMethod\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "RADIS_BENCH_CACHE": str(tmp_path / "cache")}
    listed = cli(["list"], env)
    assert listed.returncode == 0 and "echo" in listed.stdout and "plugin test" in listed.stdout
    args = run_args(tiny_checkpoint, tmp_path / "run", methods="echo")
    args[args.index("--suites") + 1] = "translation"
    result = cli(args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    methods = {r["method"] for r in read_scores(tmp_path / "run")}
    assert methods == {"original", "echo"}


def test_each_model_answers_every_suite_in_one_batched_call(tiny_checkpoint, tmp_path, monkeypatch):
    """Before scoring a model, the runner generates all its suites' answers in one call; the
    suites then find every answer in the cache and generate nothing themselves."""
    from harness.config.settings import RunConfig
    from harness.config.parse import apply_settings
    from harness.model.generation import Generator
    from harness.run.execute import Execution
    from harness.run.plan import Plan

    calls = []
    real = Generator.generate_many

    def counting(self, items, label="generating", require_ids=False):
        before = self.stats.generated
        out = real(self, items, label, require_ids)
        calls.append((label, len(items), self.stats.generated - before))
        return out

    monkeypatch.setattr(Generator, "generate_many", counting)
    cfg = RunConfig()
    apply_settings(cfg, {"model": str(tiny_checkpoint), "methods": ["vanilla"], "suites": ["translation", "safety", "gsm8k"],
                         "train_size": 4, "eval_size": 3, "out": str(tmp_path / "run"), "max_new_tokens": 6,
                         "budget": {"steps": 1, "batch_size": 2}, "lora": {"r": 4}}, "test")
    Execution(Plan(cfg)).run()
    ahead = [c for c in calls if "answers for translation, safety, gsm8k" in c[0]]
    # original and vanilla: 3 translations + 3 plain and 3 attacked safety prompts + 3 questions each
    assert [(n, made) for _, n, made in ahead] == [(12, 12), (12, 12)]
    suite_calls = [c for c in calls if c[0].split(" [")[0] in ("translation", "safety", "gsm8k")]
    assert len(suite_calls) == 6 and all(made == 0 for _, _, made in suite_calls)


def test_rescore_with_other_extraction_rules_generates_nothing(reference_run, monkeypatch):
    """`radis-bench rescore` scores the saved outputs again under other extraction rules; the
    run's own rule reproduces its scores, and no model generates a single token."""
    from harness.model import generation
    from harness.report.rescore import rescore

    run_dir, _, _ = reference_run
    monkeypatch.setattr(generation.Generator, "__init__", lambda *a, **k: pytest.fail("a model was set up to generate"))
    monkeypatch.setattr(generation.Generator, "generate_many", lambda *a, **k: pytest.fail("something was generated"))
    written = rescore(run_dir, "translation", "extraction", ["first_line", "full"])
    table = list(csv.DictReader(written["translation-extraction.csv"].open()))
    assert {r["extraction"] for r in table} == {"first_paragraph", "first_line", "full"}
    stored = {(r["method"], r["seed"]): float(r["value"]) for r in read_scores(run_dir)
              if r["suite"] == "translation" and r["metric"] == "de-en/chrf++"}
    again = {(r["method"], r["seed"]): float(r["value"]) for r in table
             if r["extraction"] == "first_paragraph" and r["metric"] == "de-en/chrf++"}
    assert again == pytest.approx(stored)
    md = written["translation-extraction.md"].read_text()
    assert "## de-en/chrf++" in md and "Δ full" in md and "Nothing was generated" in md
    bad = cli(["rescore", str(run_dir), "--suite", "translation", "--option", "extraction", "--values", "last_word"])
    assert bad.returncode == 2 and "last_word" in bad.stderr and "Traceback" not in bad.stderr
