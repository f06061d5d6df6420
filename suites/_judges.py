"""The judges of the judge-scored suites, chosen with ``--judge``.

AlpacaEval is judged through alpaca-eval's own annotator machinery, so ``--judge`` names
one of its annotator configs: a name from alpaca-eval's ``evaluators_configs`` (e.g.
``weighted_alpaca_eval_gpt4_turbo``) or a path to a config folder or YAML file (any
decoder alpaca-eval supports, local models included).

MT-Bench asks an OpenAI-compatible chat endpoint: the model is the one such a config
names when it uses ``openai_completions``, otherwise ``--judge`` itself is the model
name. Where it is served, and the key, come from the environment only:

- ``RADIS_BENCH_JUDGE_BASE_URL`` (else ``OPENAI_BASE_URL``, ``OPENAI_API_BASE``;
  default ``https://api.openai.com/v1``)
- ``RADIS_BENCH_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``)

Keys are read when a request is sent and are never stored, logged or written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness.api import CacheDB, UserError, cache_dir, check_file, looks_like_path

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class JudgeUnavailable(Exception):
    """The judge cannot score; the message says why (and never holds a key)."""


# --- alpaca-eval annotator configs ------------------------------------------------------


def import_alpaca_eval():
    """Import alpaca-eval, undoing its import-time switch of the root logger to INFO, which
    would flood the run's console, and without its deprecation warning."""
    import warnings

    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():  # its `import pkg_resources` warns of setuptools' deprecation on every run
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import alpaca_eval

    root.setLevel(level)
    return alpaca_eval


JUDGE_FIX = ("give the name of an alpaca-eval annotator config (e.g. weighted_alpaca_eval_gpt4_turbo) or the path of "
             "a config folder or YAML file")


def alpaca_eval_config(judge: str) -> Path | None:
    """The ``configs.yaml`` alpaca-eval would load for ``judge``, or None when it names no
    config. A path (it looks like one, or ends in .yaml) must be a readable config file or a
    folder holding configs.yaml: one sentence otherwise, in radis-bench's words."""
    path = Path(judge).expanduser()
    if looks_like_path(judge) or path.suffix in (".yaml", ".yml"):
        if path.is_dir():
            if not (path / "configs.yaml").exists():
                raise UserError(f"--judge {path} is a folder without configs.yaml; {JUDGE_FIX}.")
            path = path / "configs.yaml"
        return check_file(path, "--judge", JUDGE_FIX).resolve()
    builtin = Path(import_alpaca_eval().constants.EVALUATORS_CONFIG_DIR) / judge / "configs.yaml"
    return builtin if builtin.is_file() else None


def require_alpaca_eval_config(judge: str) -> Path:
    config = alpaca_eval_config(judge)
    if config is None:
        raise UserError(f"--judge '{judge}' is not an alpaca-eval annotator config; {JUDGE_FIX}.")
    read_annotator_configs(config)  # its YAML is checked before any compute too
    return config


def read_annotator_configs(config: Path) -> dict[str, dict]:
    """The annotators of a config file: name -> settings."""
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"The judge config {config} is not valid YAML ({str(err).splitlines()[0]}); fix it.") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"The judge config {config} must map annotator names to their settings, as alpaca-eval's do.")
    return data


def config_label(config: Path) -> str:
    """How the judge is named next to its numbers: the config and the model(s) it runs."""
    name = config.parent.name if config.name == "configs.yaml" else config.stem
    models = sorted({str((a.get("completions_kwargs") or {}).get("model_name", "?"))
                     for a in read_annotator_configs(config).values()})
    return f"{name} (alpaca-eval annotator; model {', '.join(models)})"


# --- OpenAI-compatible chat judges ------------------------------------------------------


@dataclass(frozen=True)
class ChatJudge:
    """A chat model behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    model: str
    base_url: str

    @property
    def label(self) -> str:
        """The model and endpoint, without any user:password or query part of the URL."""
        url = urllib.parse.urlsplit(self.base_url)
        return f"{self.model} at {url.scheme}://{url.hostname}{f':{url.port}' if url.port else ''}{url.path}"

    def complete_many(self, conversations: list[list[dict]], max_tokens: int, workers: int = 4) -> list[str]:
        """Greedy replies to each conversation, through an on-disk cache of earlier replies."""
        cache = _JudgmentCache()
        keys = [self._key(messages, max_tokens) for messages in conversations]
        replies = {k: cache.get(k) for k in set(keys)}
        todo = {k: m for k, m in zip(keys, conversations) if replies[k] is None}
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                # stored one by one, so replies paid for survive a later failure
                for key, reply in zip(todo, pool.map(lambda m: self._complete(m, max_tokens), todo.values())):
                    cache.put_many({key: reply})
                    replies[key] = reply
        return [replies[k] for k in keys]

    def _key(self, messages: list[dict], max_tokens: int) -> str:
        blob = json.dumps([self.base_url, self.model, messages, max_tokens], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _complete(self, messages: list[dict], max_tokens: int) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens})
        headers = {"Content-Type": "application/json"}
        key = os.environ.get("RADIS_BENCH_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = f"{self.base_url}/chat/completions"
        for attempt in range(4):
            request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=300) as response:
                    reply = json.loads(response.read())
                return reply["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as err:
                # rate limits and server errors pass; anything else (bad key, unknown model) will not
                if (err.code == 429 or err.code >= 500) and attempt < 3:
                    time.sleep(2**attempt)
                    continue
                raise JudgeUnavailable(f"the judge endpoint {url} answered HTTP {err.code} {err.reason}") from None
            except urllib.error.URLError as err:
                raise JudgeUnavailable(f"the judge endpoint {url} could not be reached ({err.reason})") from None
            except (KeyError, IndexError, TypeError, ValueError):
                raise JudgeUnavailable(f"the judge endpoint {url} did not answer like an OpenAI chat API") from None
        raise AssertionError("unreachable")


def chat_model(judge: str) -> str:
    """The chat model ``--judge`` names: an alpaca-eval config's OpenAI model, or the name itself;
    a config that decodes otherwise is a user error (found before any compute by the suite's check)."""
    config = alpaca_eval_config(judge)
    if config is None:
        return judge
    first = next(iter(read_annotator_configs(config).values()), {})
    if first.get("fn_completions", "openai_completions") != "openai_completions":
        raise UserError(f"--judge {config} decodes with {first['fn_completions']}, not an OpenAI-compatible chat model; "
                        "give an OpenAI-style config or a model name served at RADIS_BENCH_JUDGE_BASE_URL.")
    return str((first.get("completions_kwargs") or {}).get("model_name") or judge)


def chat_judge(judge: str) -> ChatJudge:
    """The chat judge ``--judge`` names: an alpaca-eval config's OpenAI model, or a model name."""
    model = chat_model(judge)
    base_url = (os.environ.get("RADIS_BENCH_JUDGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
                or os.environ.get("OPENAI_API_BASE") or DEFAULT_BASE_URL)
    return ChatJudge(model, base_url.rstrip("/"))


def _reply(row) -> str:
    if not isinstance(row[0], str):
        raise ValueError("not a judge reply")
    return row[0]


class _JudgmentCache:
    """SQLite table of judge replies keyed by endpoint, model, messages and limits."""

    def __init__(self):
        self.db = CacheDB(cache_dir() / "judgments.sqlite", "CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, reply TEXT)")

    def get(self, key: str) -> str | None:
        return self.db.lookup("SELECT reply FROM judgments WHERE key=?", (key,), _reply)

    def put_many(self, replies: dict[str, str]) -> None:
        def put(db):
            db.executemany("INSERT OR REPLACE INTO judgments VALUES (?, ?)", list(replies.items()))
            db.commit()

        self.db.run(put)
