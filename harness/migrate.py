"""Keys made by earlier versions of radis-bench, so their run directories stay reusable.

A unit is reused when its stored key equals the key the current plan computes. When only
the key *scheme* changed, not what the unit computes, the stored key is the one the old
scheme gives for the same settings: ``harness.units`` then rewrites it with the current
key and reuses the unit. Units whose computation changed on purpose (their options or
code changed) get a different old-scheme key too, and are recomputed.

Scheme 1 (radis-bench up to 2026-11, issue 18 changed it) differs from the current one in
what it hashed, not in what units compute:
- the base model's fingerprint hashed a converted model's provenance file (the install
  path of its GGUF) and not its chat template (``harness.models.scheme1_fingerprints``);
- training: the data source's *label* (the data dir's absolute path) instead of only the
  files' contents, and the file hash of a method's ``replay_set`` under "replay" instead
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

# scheme-1 run-level settings (name in its evaluation keys -> the RunConfig field, which is now an
# alias that sets suite options, and the old default)
SCHEME1_RUN_SETTINGS = {
    "extraction": ("extraction", "first_paragraph"),
    "judge": ("judge", None),
    "comet": ("comet_model", None),
    "classifier": ("safety_classifier", None),
    "lm_eval": ("lm_eval_tasks", []),
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


def scheme1_train_keys(plan, label: str, seed: int) -> list[str]:
    """The scheme-1 keys a training unit may have (one per scheme-1 fingerprint of the base
    model); none for rows scheme 1 could not express."""
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
    data = {"data": plan.data.label, "directions": [d.name for d in plan.directions], "train_size": plan.cfg.train_size,
            "data_seed": plan.cfg.data_seed,
            "hashes": {k: v for k, v in sorted(plan.data.hashes.items()) if k.startswith("alma/") and "/train." in k}}
    return [digest({"base": fingerprint, "method": label, "options": method.options_dict(),
                    "budget": asdict(plan.budgets[label]), "lora": asdict(plan.loras[label]), "seed": seed, "data": data,
                    "replay": replay_hash}) for fingerprint in scheme1_fingerprints(plan)]


def scheme1_eval_keys(plan, cell: str, suite: str) -> list[str]:
    if cell == ORIGINAL:
        models = [(f, f) for f in scheme1_fingerprints(plan)]
    else:
        label, seed = cell.rsplit("-seed", 1)
        models = list(zip(scheme1_train_keys(plan, label, int(seed)), scheme1_fingerprints(plan)))
    settings = {name: _run_setting(plan, alias, default) for name, (alias, default) in SCHEME1_RUN_SETTINGS.items()}
    settings["lm_eval"] = list(settings["lm_eval"])
    return [digest({
        "model": model_key, "suite": suite, "options": plan.suites[suite].legacy_options(),
        "directions": [d.name for d in plan.directions], "eval_size": plan.size(suite), "data_seed": plan.cfg.data_seed,
        "data": plan.data.label, "max_new_tokens": plan.cfg.max_new_tokens, "original": fingerprint, **settings,
    }) for model_key, fingerprint in models]
