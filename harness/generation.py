"""Batched generation with a content-addressed on-disk cache.

Every output is stored under a key made of the model fingerprint (base weights plus
adapter), the exact prompt text and the decoding settings, so asking twice for the
same thing generates nothing the second time. Batches are sorted by prompt length and
left-padded; finished sequences stop at the end-of-turn token.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.paths import cache_dir
from harness.prompts import end_of_turn_ids, render_chat
from harness.progress import progress_bar


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; part of every cache key."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def key(self) -> dict:
        d = asdict(self)
        if not self.do_sample:
            d.update(temperature=None, top_p=None, seed=None)
        return d


@dataclass
class Request:
    """One generation: chat messages, and optionally text the assistant turn starts with."""

    messages: list[dict]
    assistant_prefix: str = ""


@dataclass
class Output:
    text: str
    new_tokens: int
    finished: bool  # stopped at end of turn rather than at max_new_tokens
    cached: bool = False


class GenerationCache:
    """SQLite table of finished generations, committed batch by batch (safe to interrupt)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else cache_dir() / "generations.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, text TEXT, new_tokens INT, finished INT)"
        )
        self.db.commit()

    def get(self, key: str) -> Output | None:
        row = self.db.execute("SELECT text, new_tokens, finished FROM generations WHERE key=?", (key,)).fetchone()
        return Output(row[0], row[1], bool(row[2]), cached=True) if row else None

    def put_many(self, items: list[tuple[str, Output]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?)",
            [(k, o.text, o.new_tokens, int(o.finished)) for k, o in items],
        )
        self.db.commit()


@dataclass
class GenerationStats:
    generated: int = 0
    cache_hits: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


class Generator:
    """Generates chat completions for one model (base + optional adapter), through the cache."""

    def __init__(self, model, tokenizer, fingerprint: str, cache: GenerationCache | None = None, batch_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.cache = cache or GenerationCache()
        self.batch_size = batch_size
        self.stats = GenerationStats()
        self.stop_ids = end_of_turn_ids(tokenizer)

    def key(self, prompt_text: str, decoding: Decoding) -> str:
        blob = json.dumps([self.fingerprint, prompt_text, decoding.key()], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def prompt_text(self, request: Request) -> str:
        return render_chat(self.tokenizer, request.messages, request.assistant_prefix)

    def generate(self, requests: list[Request], decoding: Decoding = Decoding(), label: str = "generating") -> list[Output]:
        """Outputs in the order of ``requests``; only cache misses are generated."""
        texts = [self.prompt_text(r) for r in requests]
        keys = [self.key(t, decoding) for t in texts]
        results: list[Output | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        # the same prompt twice in one call is generated once
        first_of: dict[str, int] = {}
        unique = [i for i in todo if first_of.setdefault(keys[i], i) == i]
        self.stats.cache_hits += len(requests) - len(unique)
        if unique:
            self._generate_missing(texts, keys, unique, decoding, results, label)
        for i in todo:
            if results[i] is None:
                results[i] = results[first_of[keys[i]]]
        return results  # type: ignore[return-value]

    def _generate_missing(self, texts, keys, todo, decoding, results, label):
        import torch

        tok = self.tokenizer
        lengths = {i: len(tok(texts[i], add_special_tokens=False)["input_ids"]) for i in todo}
        order = sorted(todo, key=lambda i: -lengths[i])
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        tok.padding_side = "left"
        started = time.time()
        with progress_bar(label, total=len(order), unit="tok") as bar, torch.inference_mode():
            for batch in batches:
                enc = tok([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False)
                enc = {k: v.to(self.model.device) for k, v in enc.items()}
                if decoding.do_sample:
                    torch.manual_seed(int(keys[batch[0]][:8], 16) ^ decoding.seed)
                out = self.model.generate(
                    **enc,
                    max_new_tokens=decoding.max_new_tokens,
                    do_sample=decoding.do_sample,
                    temperature=decoding.temperature if decoding.do_sample else None,
                    top_p=decoding.top_p if decoding.do_sample else None,
                    top_k=None,
                    eos_token_id=self.stop_ids,
                    pad_token_id=tok.pad_token_id,
                )
                new = out[:, enc["input_ids"].shape[1] :]
                done = []
                for row, i in zip(new.tolist(), batch):
                    finished = any(t in self.stop_ids for t in row)
                    if finished:
                        row = row[: min(row.index(t) for t in self.stop_ids if t in row)]
                    text = tok.decode(row, skip_special_tokens=True)
                    results[i] = Output(text, len(row), finished)
                    done.append((keys[i], results[i]))
                    self.stats.new_tokens += len(row)
                self.cache.put_many(done)
                self.stats.generated += len(batch)
                bar.advance(len(batch), tokens=sum(o.new_tokens for _, o in done))
        self.stats.seconds += time.time() - started
