"""Every unit key, in one place: a unit (a training, an evaluation) is reused while its
stored key equals the key computed here, and redone when it changes.

- training of (row, seed): base-model fingerprint, method name and options, the row's
  budget and adapter, the training data's content and sample, the data sets the method
  reads, the seed, and the versions of the trainer, the method and (for a method that
  generates with the original) the generator;
- evaluation of (model, suite): the model's key (the base fingerprint for the original, else
  its training key), the suite's resolved options, its sample size and seed, the content of
  the data it reads, the directions (only for a suite that reads them), the original model
  (only for a suite that compares with it), and the versions of the suite and the generator
  (``harness.versions``);
- a training's content (``training_content_key``): what it computes whatever its row is
  called, so rows that train identically (``wise`` and ``vanilla``) share one training.

Keys made by earlier versions of radis-bench are computed here too, so their run
directories stay reusable: when only the key *scheme* changed, not what the unit computes,
the stored key is the one the old scheme gives for the same settings; ``harness.run.units``
then rewrites it with the current key and reuses the unit. Units whose computation changed
on purpose (their options or code changed) get a different old-scheme key too, and are
recomputed.

Scheme 3 (issue 30, the current one) adds the versions of the code that computes a unit.
Schemes 1 and 2 hashed none, so which code made such a unit is unknown: it is taken for
version-1 code, the versions that existed when versions began, and reused with a warning
(``harness.run.units`` marks it ``unversioned``); once any version that applies to a unit
has moved past 1 its old keys are not tried and it is recomputed. Options added since then
declare the value that does what the code did without them (field metadata ``before``,
``harness.plugins.options``); a unit whose options hold another value has no old key either.

Scheme 2 (2026-11 to issue 30) is scheme 3 without the code versions (``train_inputs``,
``eval_inputs``).

Scheme 1 (radis-bench up to 2026-11, issue 18 changed it) differs from scheme 2 in what it
hashed, not in what units compute:
- the base model's fingerprint hashed a converted model's provenance file (the install
  path of its GGUF) and not its chat template (``harness.model.loading.scheme1_fingerprints``);
- training: the data source's *label* (the data dir's absolute path) instead of only the
  files' contents (so a data dir elsewhere holding the same files as the published
  reports' also tries their data path, ``SCHEME1_DATA_LABELS``), and the file hash of a
  method's ``replay_set`` under "replay" instead of the contents of every data set the
  method reads;
- evaluation: every suite's key held the run-level settings that now are suite options
  (extraction, judge, COMET, classifier, lm-eval tasks) and the run's max_new_tokens,
  the directions and the original model whether or not the suite reads them, the data
  source's label, and the suite options unresolved (``Suite.legacy_options``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from harness import versions
from harness.config.settings import lora_key
from harness.data.sources import file_hash
from harness.model.loading import scheme1_fingerprints as model_scheme1_fingerprints
from harness.plugins import registry
from harness.plugins.method import Method
from harness.store import ORIGINAL
from harness.versions import all_first, evaluation_code, training_code


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class UnitKeys:
    """The keys of a plan's units (memoised: reading data files to hash them happens once)."""

    def __init__(self, plan):
        self.plan = plan
        self._memo: dict = {}
        self.earlier = EarlierKeys(self)

    def data_key(self) -> dict:
        self.plan.train_pairs  # reading the files records their hashes
        return {"directions": [d.name for d in self.plan.directions], "train_size": self.plan.cfg.train_size,
                "data_seed": self.plan.cfg.data_seed, "content": self.plan.data.content_key([f"{d.name}/train" for d in self.plan.directions])}

    def train_key(self, label: str, seed: int) -> str:
        if ("train", label, seed) not in self._memo:
            method = self.plan.methods[label]
            self._memo["train", label, seed] = digest({**self.train_inputs(label, seed, method.options_dict()),
                                                       "code": training_code(method)})
        return self._memo["train", label, seed]

    def train_inputs(self, label: str, seed: int, options: dict) -> dict:
        """What a training unit's key hashes besides the code versions: the base model, the
        method and its ``options``, budget, adapter, seed and the data it reads (key scheme 2)."""
        method = self.plan.methods[label]
        for spec in method.uses_data():
            self.plan.data.general(spec)
        # lora_key leaves out lora.kind while it is the default: the keys made before it existed stay as they were
        return {"base": self.plan.spec.fingerprint, "method": self.plan.entries[label].method, "options": options,
                "budget": asdict(self.plan.budgets[label]), "lora": lora_key(self.plan.loras[label]), "seed": seed,
                "data": self.plan.keys.data_key(), "data_sets": self.plan.data.content_key([f"set:{s.name}" for s in method.uses_data()])}

    def model_key(self, cell: str) -> str:
        """The key of the model a cell evaluates: the base fingerprint for the original."""
        if cell == ORIGINAL:
            return self.plan.spec.fingerprint
        if "@step" in cell:  # a checkpoint of a trajectory: its training's key and the step
            trained, step = cell.rsplit("@step", 1)
            return f"{self.model_key(trained)}@step{int(step)}"
        label, seed = cell.rsplit("-seed", 1)
        return self.train_key(label, int(seed))

    def eval_key(self, model_key: str, suite: str) -> str:
        if ("eval", model_key, suite) not in self._memo:
            s = self.plan.suites[suite]
            self._memo["eval", model_key, suite] = digest({**self.eval_inputs(model_key, suite, s.options_dict()),
                                                           "code": evaluation_code(s)})
        return self._memo["eval", model_key, suite]

    def eval_inputs(self, model_key: str, suite: str, options: dict) -> dict:
        """What an evaluation unit's key hashes besides the code versions: the model's key, the
        suite and its ``options``, its sample and the content of what it reads (key scheme 2)."""
        s = self.plan.suites[suite]
        reads = [f"set:{spec.name}" for spec in s.uses_data()]
        for spec in s.uses_data():
            self.plan.data.general(spec)
        inputs = {"size": self.plan.size(suite), "data_seed": self.plan.cfg.data_seed, "data": self.plan.data.content_key(reads)}
        if s.uses_directions:
            for d in self.plan.directions:
                self.plan.data.translation(d, "test")
            inputs["directions"] = [d.name for d in self.plan.directions]
            inputs["test"] = self.plan.data.content_key([f"{d.name}/test" for d in self.plan.directions])
        if s.compares_with_original:
            inputs["original"] = self.plan.spec.fingerprint
        return {"model": model_key, "suite": suite, "options": options, **inputs}

    def training_content_key(self, label: str, examples: list[dict], budget, seed: int) -> str:
        """What a training computes, whatever its row is called: base model, examples (as
        written to examples.jsonl), the method's hooks into the loss or the model, budget,
        adapter and seed. Rows that differ only after training (wise) share it."""
        m = self.plan.methods[label]
        hooked = (m.extra_loss is not None or m.token_loss is not None or m.sample_step is not None
                  or type(m).prepare_model is not Method.prepare_model)
        return digest({
            "base": self.plan.spec.fingerprint, "seed": seed, "budget": asdict(budget), "trainer": versions.TRAINER,
            "lora": lora_key(self.plan.loras[label]),
            "examples": [[e["messages"], e["response"], e.get("end_of_turn", True), e.get("end_weight")] for e in examples],
            "hooks": [self.plan.entries[label].method, m.options_dict()] if hooked else None,
        })


# Keys of earlier schemes ------------------------------------------------------------------------

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
    """The scheme-1 RunConfig fields that moved into suites, with the values they had (also
    what the default run directory name hashes, so a run directory keeps its name)."""
    return {alias: _run_setting(plan, alias, default) for alias, default in SCHEME1_RUN_SETTINGS.values()}


def _run_setting(plan, alias: str, default):
    """The value a scheme-1 run-level setting had: what the alias set on the suites."""
    for suite, option in registry.suite_aliases().get(alias, []):
        if suite in plan.suites:
            return getattr(plan.suites[suite].options, option)
        configured = registry.get_suite(suite).from_settings(plan.cfg.suite_options.get(suite))
        return getattr(configured.options, option)
    return default


class EarlierKeys:
    """The keys a plan's units may hold from before code versions existed (schemes 2 and 1)."""

    def __init__(self, keys: UnitKeys):
        self.keys, self.plan = keys, keys.plan
        self._fingerprints: list[str] | None = None
        self._data_labels: list[str] | None = None

    def train(self, label: str, seed: int) -> list[str]:
        """The keys a training unit made before code versions existed may hold; none once a
        version that applies to it has moved past 1, or for options that no such unit computed."""
        method = self.plan.methods[label]
        options = method.options_before_versions()
        if options is None or not all_first(training_code(method)):
            return []
        return [digest(self.keys.train_inputs(label, seed, options))] + [key for _, _, key in self._scheme1_train(label, seed, options)]

    def evaluation(self, cell: str, suite: str) -> list[str]:
        """The keys an evaluation unit made before code versions existed may hold, under the same
        conditions as ``train`` for the suite and the model."""
        s = self.plan.suites[suite]
        options = s.options_before_versions()
        if options is None or not all_first(evaluation_code(s)):
            return []
        if cell == ORIGINAL:
            model_key = self.plan.spec.fingerprint
        else:
            label, seed = cell.rsplit("-seed", 1)
            found = self.train(label, int(seed))
            if not found:
                return []
            model_key = found[0]
        return [digest(self.keys.eval_inputs(model_key, suite, options))] + self._scheme1_evaluation(cell, suite)

    def fingerprints(self) -> list[str]:
        """The base model's scheme-1 fingerprints (with its dtype suffix, if any)."""
        if self._fingerprints is None:
            fingerprint = self.plan.spec.fingerprint
            suffix = fingerprint.partition("@")[1] + fingerprint.partition("@")[2]
            self._fingerprints = [f + suffix for f in model_scheme1_fingerprints(self.plan.spec)]
        return self._fingerprints

    def data_labels(self) -> list[str]:
        """The data labels a scheme-1 key may hold: this run's, and for a data dir (not the
        starter set or the hub) the published reports' ones (``SCHEME1_DATA_LABELS``)."""
        data = self.plan.data
        if data.hub or data.root is None or data.label.startswith("starter"):
            return [data.label]
        if self._data_labels is None:
            same = [published for published, files in SCHEME1_DATA_LABELS.items()
                    if all((data.root / rel).is_file() and file_hash(data.root / rel) == sha for rel, sha in files.items())]
            self._data_labels = list(dict.fromkeys([data.label, *same]))
        return self._data_labels

    def _scheme1_train(self, label: str, seed: int, options: dict) -> list[tuple[str, str, str]]:
        """(fingerprint, data label, scheme-1 training key) for each combination; none for rows
        scheme 1 could not express."""
        plan = self.plan
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
                        "budget": asdict(plan.budgets[label]), "lora": lora_key(plan.loras[label]), "seed": seed,
                        "data": {"data": data_label, "directions": [d.name for d in plan.directions],
                                 "train_size": plan.cfg.train_size, "data_seed": plan.cfg.data_seed, "hashes": hashes},
                        "replay": replay_hash}))
                for fingerprint in self.fingerprints() for data_label in self.data_labels()]

    def _scheme1_evaluation(self, cell: str, suite: str) -> list[str]:
        plan = self.plan
        options = plan.suites[suite].legacy_options()
        if options is None:
            return []
        if cell == ORIGINAL:
            models = [(f, d, f) for f in self.fingerprints() for d in self.data_labels()]
        else:
            label, seed = cell.rsplit("-seed", 1)
            train_options = plan.methods[label].options_before_versions()
            models = [] if train_options is None else self._scheme1_train(label, int(seed), train_options)
        settings = {name: _run_setting(plan, alias, default) for name, (alias, default) in SCHEME1_RUN_SETTINGS.items()}
        settings["lm_eval"] = list(settings["lm_eval"])
        return [digest({
            "model": model_key, "suite": suite, "options": options,
            "directions": [d.name for d in plan.directions], "eval_size": plan.size(suite), "data_seed": plan.cfg.data_seed,
            "data": data_label, "max_new_tokens": plan.cfg.max_new_tokens, "original": fingerprint, **settings,
        }) for fingerprint, data_label, model_key in models]
