"""Keys made by earlier versions of radis-bench, so their run directories stay reusable.

A unit is reused when its stored key equals the key the current plan computes. When only
the key *scheme* changed, not what the unit computes, the stored key is the one the old
scheme gives for the same settings: ``harness.units`` then rewrites it with the current
key and reuses the unit. Units whose computation changed on purpose (their options or
code changed) get a different old-scheme key too, and are recomputed.

Scheme 3 (issue 30, the current one) adds the versions of the code that computes a unit
(``harness.versions``). Schemes 1 and 2 hashed none, so which code made such a unit is
unknown: it is taken for version-1 code, the versions that existed when versions began,
and reused with a warning (``harness.units`` marks it ``unversioned``); once any version
that applies to a unit has moved past 1 its old keys are not tried and it is recomputed.
Options added since then declare the value that does what the code did without them
(field metadata ``before``, ``harness.config.options_before_versions``); a unit whose
options hold another value has no old key either.

Scheme 2 (2026-11 to issue 30) is scheme 3 without the code versions (``Plan.train_inputs``,
``Plan.eval_inputs``).

Scheme 1 (radis-bench up to 2026-11, issue 18 changed it) differs from the current one in
what it hashed, not in what units compute:
- the base model's fingerprint hashed a converted model's provenance file (the install
  path of its GGUF) and not its chat template (``harness.models.scheme1_fingerprints``);
- training: the data source's *label* (the data dir's absolute path) instead of only the
  files' contents (so a data dir elsewhere holding the same files as the published
  reports' also tries their data path, ``SCHEME1_DATA_LABELS``), and the file hash of a method's ``replay_set`` under "replay" instead
  of the contents of every data set the method reads;
- evaluation: every suite's key held the run-level settings that now are suite options
  (extraction, judge, COMET, classifier, lm-eval tasks) and the run's max_new_tokens,
  the directions and the original model whether or not the suite reads them, the data
  source's label, and the suite options unresolved (``Suite.legacy_options``).
"""

from __future__ import annotations

from dataclasses import asdict

from harness import registry
from harness.plan import ORIGINAL, digest
from harness.versions import all_first, evaluation_code, training_code

# scheme-1 run-level settings (name in its evaluation keys -> the RunConfig field, which is now an
# alias that sets suite options, and the old default)
SCHEME1_RUN_SETTINGS = {
    "extraction": ("extraction", "first_paragraph"),
    "judge": ("judge", None),
    "comet": ("comet_model", None),
    "classifier": ("safety_classifier", None),
    "lm_eval": ("lm_eval_tasks", []),
}
# where the data lay when the published reports' units were made, and the files it held there
# (their manifests' file_sha256): scheme 1 hashed the data dir's absolute path, so a copy of the
# same files elsewhere (CI's clone, a user's) also tries that path to reuse the published units
SCHEME1_DATA_LABELS = {
    "/work/shared/data": {
        "advbench/harmful_behaviors.csv": "dc1f2e4cfc7856a0e91f8bfdb8236d219644309a7522ece3f2d13bb2cc4a339c",
        "alma/deen/test.de-en.json": "e0a489fcf4fb59d0a9646681ba8466ce7bd76b05f3e22f39fd881045b45788b6",
        "alma/deen/train.de-en.de": "0740773995f58880a41c4c0f4257d7a03f4e6fc5fd4de3f2df9f3be45ba7cd2d",
        "alma/deen/train.de-en.en": "cc92c1004a33acb67a2c0becec81f59482494a3ba6329a18f5921f1d65cc1111",
        "alpaca/alpaca_train.json": "8857456d329dd0a320a03273f4d837e750cb54bb8aee90fb886301fc95f77205",
        "alpaca_eval/alpaca_eval.json": "3ef9dc5d89d85a37a06d3d904ebfcb38312409eda89f38ab5db28869742c5cd8",
        "ifeval/input_data.jsonl": "0ca6d445a430b5dfe2a9657492fa058ff83fce61c7ed1a3b5f74c3a746d2160b",
    },
}


def scheme1_run_settings(plan) -> dict:
    """The scheme-1 RunConfig fields that moved into suites, with the values they had."""
    return {alias: _run_setting(plan, alias, default) for alias, default in SCHEME1_RUN_SETTINGS.values()}


def _run_setting(plan, alias: str, default):
    """The value a scheme-1 run-level setting had: what the alias set on the suites."""
    for suite, option in registry.suite_aliases().get(alias, []):
        if suite in plan.suites:
            return getattr(plan.suites[suite].options, option)
        configured = registry.get_suite(suite).from_settings(plan.cfg.suite_options.get(suite))
        return getattr(configured.options, option)
    return default


def scheme1_fingerprints(plan) -> list[str]:
    if "scheme1_fingerprints" not in plan.__dict__:
        from harness.models import scheme1_fingerprints as of

        suffix = plan.spec.fingerprint.partition("@")[1] + plan.spec.fingerprint.partition("@")[2]
        plan.__dict__["scheme1_fingerprints"] = [f + suffix for f in of(plan.spec)]
    return plan.__dict__["scheme1_fingerprints"]


def scheme1_data_labels(plan) -> list[str]:
    """The data labels a scheme-1 key may hold: this run's, and for a data dir (not the starter
    set or the hub) the published reports' ones (``SCHEME1_DATA_LABELS``)."""
    label = plan.data.label
    if plan.data.hub or plan.data.root is None or label.startswith("starter"):
        return [label]
    if "scheme1_data_labels" not in plan.__dict__:
        from harness.data import _file_hash

        root = plan.data.root
        same = [published for published, files in SCHEME1_DATA_LABELS.items()
                if all((root / rel).is_file() and _file_hash(root / rel) == sha for rel, sha in files.items())]
        plan.__dict__["scheme1_data_labels"] = list(dict.fromkeys([label, *same]))
    return plan.__dict__["scheme1_data_labels"]


def unversioned_train_keys(plan, label: str, seed: int) -> list[str]:
    """The keys a training unit made before code versions existed may hold (schemes 2 and 1);
    none once a version that applies to it has moved past 1, or for options that no such unit
    computed."""
    method = plan.methods[label]
    options = method.options_before_versions()
    if options is None or not all_first(training_code(method)):
        return []
    return [digest(plan.train_inputs(label, seed, options))] + [key for _, _, key in _scheme1_train_keys(plan, label, seed, options)]


def unversioned_eval_keys(plan, cell: str, suite: str) -> list[str]:
    """The keys an evaluation unit made before code versions existed may hold (schemes 2 and
    1), under the same conditions as ``unversioned_train_keys`` for the suite and the model."""
    s = plan.suites[suite]
    options = s.options_before_versions()
    if options is None or not all_first(evaluation_code(s)):
        return []
    if cell == ORIGINAL:
        model_key = plan.spec.fingerprint
    else:
        label, seed = cell.rsplit("-seed", 1)
        found = unversioned_train_keys(plan, label, int(seed))
        if not found:
            return []
        model_key = found[0]
    return [digest(plan.eval_inputs(model_key, suite, options))] + _scheme1_eval_keys(plan, cell, suite)


def _scheme1_train_keys(plan, label: str, seed: int, options: dict) -> list[tuple[str, str, str]]:
    """(fingerprint, data label, scheme-1 training key) for each combination; none for rows
    scheme 1 could not express."""
    entry = plan.entries[label]
    if label != entry.method or entry.budget or entry.lora:
        return []
    method = plan.methods[label]
    plan.train_pairs
    replay = getattr(method.options, "replay_set", None)
    replay_hash = None
    if replay:
        spec = next((s for s in method.uses_data() if s.name == replay), None)
        if spec is None:
            return []
        plan.data.general(spec)
        replay_hash = plan.data.hashes.get(spec.path)
    hashes = {k: v for k, v in sorted(plan.data.hashes.items()) if k.startswith("alma/") and "/train." in k}
    return [(fingerprint, data_label, digest({"base": fingerprint, "method": label, "options": options,
                    "budget": asdict(plan.budgets[label]), "lora": asdict(plan.loras[label]), "seed": seed,
                    "data": {"data": data_label, "directions": [d.name for d in plan.directions],
                             "train_size": plan.cfg.train_size, "data_seed": plan.cfg.data_seed, "hashes": hashes},
                    "replay": replay_hash}))
            for fingerprint in scheme1_fingerprints(plan) for data_label in scheme1_data_labels(plan)]


def _scheme1_eval_keys(plan, cell: str, suite: str) -> list[str]:
    options = plan.suites[suite].legacy_options()
    if options is None:
        return []
    if cell == ORIGINAL:
        models = [(f, d, f) for f in scheme1_fingerprints(plan) for d in scheme1_data_labels(plan)]
    else:
        label, seed = cell.rsplit("-seed", 1)
        train_options = plan.methods[label].options_before_versions()
        models = [] if train_options is None else _scheme1_train_keys(plan, label, int(seed), train_options)
    settings = {name: _run_setting(plan, alias, default) for name, (alias, default) in SCHEME1_RUN_SETTINGS.items()}
    settings["lm_eval"] = list(settings["lm_eval"])
    return [digest({
        "model": model_key, "suite": suite, "options": options,
        "directions": [d.name for d in plan.directions], "eval_size": plan.size(suite), "data_seed": plan.cfg.data_seed,
        "data": data_label, "max_new_tokens": plan.cfg.max_new_tokens, "original": fingerprint, **settings,
    }) for fingerprint, data_label, model_key in models]
