"""Batched generation with a content-addressed on-disk cache.

Every output is stored under a key made of the model fingerprint (base weights plus
adapter), the exact prompt text and the decoding settings, so asking twice for the
same thing generates nothing the second time. Prompts are sorted by length, the start they
all share is computed once, the rest is prefilled in passes of similar length and decoded
with continuous batching; finished sequences stop at the end-of-turn token.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from harness.model.attention import use_decode_attention
from harness.model.compute import adapter_flops, count_generation, counting, shape_of, uncounted
from harness.model.fast_llama import FastLlama
from harness.model.kv_cache import auto_batch_size, compact, fill_holes
from harness.model.prefill import Prefill, merge
from harness.model.prompts import end_of_turn_ids, render_chat, request_ids
from harness.paths import cache_dir
from harness.plugins.requests import Decoding, Output, Request
from harness.progress import progress_bar
from harness.store import CacheDB


class GenerationCache:
    """SQLite table of finished generations, committed batch by batch (safe to interrupt)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else cache_dir() / "generations.sqlite"
        self.db = CacheDB(self.path, "CREATE TABLE IF NOT EXISTS generations "
                                     "(key TEXT PRIMARY KEY, text TEXT, new_tokens INT, finished INT, ids TEXT)",
                          migrate=_add_ids_column)

    def get(self, key: str) -> Output | None:
        return self.db.lookup("SELECT text, new_tokens, finished, ids FROM generations WHERE key=?", (key,), _output)

    def put_many(self, items: list[tuple[str, Output]]) -> None:
        rows = [(k, o.text, o.new_tokens, int(o.finished), None if o.token_ids is None else json.dumps(o.token_ids))
                for k, o in items]

        def put(db):
            db.executemany("INSERT OR REPLACE INTO generations (key, text, new_tokens, finished, ids) VALUES (?, ?, ?, ?, ?)",
                           rows)
            db.commit()

        self.db.run(put)


def _output(row) -> Output:
    """A cached generation as ``put_many`` wrote it: text, a token count, a flag and JSON token
    ids; a ValueError for anything else."""
    text, new_tokens, finished, ids = row
    token_ids = json.loads(ids) if ids else None
    if not (isinstance(text, str) and isinstance(new_tokens, int) and finished in (0, 1) and (
            token_ids is None or (isinstance(token_ids, list) and all(type(i) is int for i in token_ids)))):
        raise ValueError("not a generation")
    return Output(text, new_tokens, bool(finished), cached=True, token_ids=token_ids)


def _add_ids_column(db) -> None:
    """A cache written before the token ids were kept gets their column (empty for old rows)."""
    if "ids" not in {row[1] for row in db.execute("PRAGMA table_info(generations)")}:
        db.execute("ALTER TABLE generations ADD COLUMN ids TEXT")


@dataclass
class GenerationStats:
    generated: int = 0
    cache_hits: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


class Decoder:
    """Decodes token ids with one model as it is now: prefill, KV cache, continuous batching and
    sampling, no cache of results. ``Generator`` adds the cache; a training samples from its
    current weights through ``sample`` (``harness.model.onpolicy``)."""

    # Decode steps of a plain Llama on a CPU run through ``harness.model.fast_llama`` (same
    # logits, bit for bit, without transformers' per-layer overhead); False: always ``model(...)``.
    FAST_DECODE = True

    def __init__(self, model, tokenizer, batch_size: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size  # 0: chosen per call by ``auto_batch_size``
        self.stop_ids = end_of_turn_ids(tokenizer)
        self.shape = shape_of(model)  # what an answer costs (harness.model.compute)
        self.prefill = Prefill(model, tokenizer)

    def sample(self, prompts: list[list[int]], decoding: Decoding, seed: int, limits: list[int] | None = None
               ) -> list[tuple[list[int], bool]]:
        """(token ids, finished) for each prompt's ids, in order; ``seed`` seeds the sampling whatever
        ``decoding.seed`` says, ``limits`` caps each prompt's new tokens (default ``decoding.max_new_tokens``)."""
        import torch

        if not prompts:
            return []
        limits = limits or [decoding.max_new_tokens] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        self.current_batch = self.batch_size or auto_batch_size(self.model, len(order), len(prompts[order[0]]) + max(limits))
        results: list = [None] * len(prompts)
        with torch.inference_mode(), uncounted():  # counted below, from the lengths, as the Generator counts answers
            for i, done in self._decode([prompts[i] for i in order], order, decoding, seed, _Silent(), [limits[i] for i in order]):
                results[i] = done
        if counting():  # inside a training step's meter (an on-policy method's samples)
            count_generation(self.shape, [len(p) for p in prompts], [Output("", len(ids), done) for ids, done in results],
                             adapter_flops(self.model))
        return results



    def _decode(self, prompts: list[list[int]], ids_of: list[int], decoding: Decoding, seed: int, bar, limits: list[int]):
        """Continuous batching with a KV cache: a sequence that reaches end of turn leaves the
        batch at once, and waiting prompts join whenever half the batch has finished.
        Yields (request index, (token ids, finished)) as sequences complete."""
        import torch

        model = self.model
        stop = set(self.stop_ids)
        generator = torch.Generator(device=model.device).manual_seed(seed) if decoding.do_sample else None
        queue = list(range(len(prompts)))
        prefix = self.prefill.prefix(prompts)
        layout = None
        alive: list[int] = []
        out: dict[int, list[int]] = {}
        cache = mask = next_pos = logits = None
        fast = None
        if self.FAST_DECODE:
            fast = FastLlama.of(model)
            if fast is not None:
                layout = (len(fast.layers), fast.kv_heads, fast.head_dim, fast.embed.dtype)
        while queue or alive:
            width = self.current_batch
            if queue and not decoding.do_sample and not self.batch_size:
                # Greedy: as many rows as the memory budget allows for the cache as it is now (``compact``)
                # and the longest waiting prompt (prompts wait longest first, so the cap grows as they
                # shorten). Sampling keeps the cap of the call's start: which rows share a step decides
                # which random numbers each row draws.
                tokens = max(len(prompts[queue[0]]), mask.shape[1] if alive else 0) + max(limits)
                width = auto_batch_size(model, len(queue) + len(alive), tokens)
                self.current_batch = max(self.current_batch, width)
            if queue and len(alive) <= width // 2:
                take, queue = queue[: width - len(alive)], queue[width - len(alive) :]
                new_cache, new_mask, new_pos, new_logits = self.prefill.run([prompts[j] for j in take], prefix, layout)
                if alive:
                    mask = compact(cache, mask)
                    cache, mask = merge([(cache, mask), (new_cache, new_mask)])
                    next_pos, logits = torch.cat([next_pos, new_pos]), torch.cat([logits, new_logits])
                else:
                    cache, mask, next_pos, logits = new_cache, new_mask, new_pos, new_logits
                alive += take
                out.update({j: [] for j in take})
            chosen = self._pick(logits, decoding, generator)
            keep = []
            for k, (j, token) in enumerate(zip(alive, chosen.tolist())):
                if token in stop:
                    bar.advance(1)
                    yield ids_of[j], (out.pop(j), True)
                    continue
                out[j].append(token)
                if len(out[j]) >= limits[j]:
                    bar.advance(1)
                    yield ids_of[j], (out.pop(j), False)
                    continue
                keep.append(k)
            bar.advance(0, tokens=len(alive))
            if len(keep) < len(alive):
                order = fill_holes(keep)
                for layer in cache.layers:
                    layer.keep_rows(order)
                index = torch.tensor(order, dtype=torch.long, device=mask.device)
                mask, next_pos, chosen, logits = mask[index], next_pos[index], chosen[index], logits[index]
                alive = [alive[k] for k in order]
                if alive:  # the columns only the rows that left used (worth a copy of the cache when many)
                    mask = compact(cache, mask, least=max(16, mask.shape[1] // 8))
            if not alive:
                continue
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            if fast is not None:
                logits = fast.decode(chosen, mask, next_pos, cache)
                next_pos = next_pos + 1
                continue
            logits = model(
                input_ids=chosen[:, None], attention_mask=mask, position_ids=next_pos[:, None], past_key_values=cache, use_cache=True
            ).logits[:, -1, :]
            next_pos = next_pos + 1

    @staticmethod
    def _pick(logits, decoding: Decoding, generator):
        import torch

        if not decoding.do_sample:
            # the first largest, as argmax picks it, ~2.5x faster over [128, 49,152] on a CPU
            return logits.max(-1).indices
        # temperature, then top-k, then top-p on what is left (transformers' order)
        logits = logits.float() / max(decoding.temperature, 1e-6)
        if 0 < decoding.top_k < logits.shape[-1]:
            kth = logits.topk(decoding.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if decoding.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > decoding.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class _Silent:
    """A progress bar that shows nothing (sampling inside a training step has the training's bar)."""

    def advance(self, *args, **kwargs) -> None:
        pass


class Generator(Decoder):
    """Generates chat completions for one model (base + optional adapter), through the cache.

    This is the transformers backend; harness/model/vllm_backend.py has a vLLM one with the
    same surface, prompts and cache keys."""

    backend = "transformers"

    def __init__(self, model, tokenizer, fingerprint: str, cache: GenerationCache | None = None, batch_size: int = 0):
        super().__init__(model, tokenizer, batch_size)
        self.fingerprint = fingerprint
        self.cache = cache or GenerationCache()
        self.stats = GenerationStats()
        use_decode_attention(model)  # on a CPU: single-query attention without copying keys per head

    def key(self, prompt_text: str, decoding: Decoding, prefix: bool = False) -> str:
        from harness import versions

        parts = [self.fingerprint, prompt_text, decoding.key()]
        if prefix:  # the assistant prefix is tokenised on its own (``request_ids``): other ids than the joined text's
            parts.append("prefix tokenised apart")
        if versions.GENERATOR > 1:  # another version's outputs are not this one's (version 1's keys stand)
            parts.append({"generator": versions.GENERATOR})
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def prompt_text(self, request: Request) -> str:
        return render_chat(self.tokenizer, request.messages, request.assistant_prefix)

    def generate(self, requests: list[Request], decoding: Decoding = Decoding(), label: str = "generating",
                 require_ids: bool = False) -> list[Output]:
        """Outputs in the order of ``requests``; only cache misses are generated."""
        return self.generate_many([(r, decoding) for r in requests], label, require_ids)

    def generate_many(self, items: list[tuple[Request, Decoding]], label: str = "generating",
                      require_ids: bool = False) -> list[Output]:
        """Like ``generate`` with a decoding per request: requests that differ only in
        ``max_new_tokens`` decode in one batch (e.g. every suite's questions to one model).
        ``require_ids``: a cached output without its token ids (a cache row older than them)
        counts as missing and is generated again."""
        texts = [self.prompt_text(r) for r, _ in items]
        keys = [self.key(t, d, bool(r.assistant_prefix)) for t, (r, d) in zip(texts, items)]
        results: list[Output | None] = [self.cache.get(k) for k in keys]
        if require_ids:
            results = [r if r is not None and r.token_ids is not None else None for r in results]
        todo = [i for i, r in enumerate(results) if r is None]
        # the same prompt twice in one call is generated once
        first_of: dict[str, int] = {}
        unique = [i for i in todo if first_of.setdefault(keys[i], i) == i]
        self.stats.cache_hits += len(items) - len(unique)
        groups: dict[str, list[int]] = {}
        for i in unique:
            groups.setdefault(self._batch_key(items[i][1]), []).append(i)
        prompts = {i: request_ids(self.tokenizer, items[i][0].messages, items[i][0].assistant_prefix) for i in unique}
        with uncounted():  # every answer is counted below, from its lengths, cached or not
            for group in groups.values():
                self._generate_missing(prompts, keys, group, {i: items[i][1] for i in group}, results, label)
        for i in todo:
            if results[i] is None:
                results[i] = results[first_of[keys[i]]]
        if counting():
            lengths = [len(prompts[i]) if i in prompts else len(request_ids(self.tokenizer, r.messages, r.assistant_prefix))
                       for i, (r, _) in enumerate(items)]
            count_generation(self.shape, lengths, results, adapter_flops(self.model) if self.model is not None else 0)
        return results  # type: ignore[return-value]

    @staticmethod
    def _batch_key(decoding: Decoding) -> str:
        """Requests with equal keys can share a batch: everything but the length limit."""
        return json.dumps({**decoding.key(), "max_new_tokens": None}, sort_keys=True)

    def _generate_missing(self, prompts, keys, todo, decodings: dict[int, Decoding], results, label):
        """Generate ``todo`` (indices into ``keys``) from their prompt token ids, caching each output."""
        import torch

        tok = self.tokenizer
        ids = {i: prompts[i] for i in todo}
        order = sorted(todo, key=lambda i: -len(ids[i]))
        decoding = decodings[order[0]]  # the sampling settings the whole group shares
        longest = max(decodings[i].max_new_tokens for i in order)
        self.current_batch = self.batch_size or auto_batch_size(self.model, len(order), len(ids[order[0]]) + longest)
        started = time.time()
        seed = int(keys[order[0]][:8], 16) ^ decoding.seed
        limits = [decodings[i].max_new_tokens for i in order]
        with progress_bar(label, total=len(order), unit="tok") as bar, torch.inference_mode():
            for i, (out, finished) in self._decode([ids[i] for i in order], order, decoding, seed, bar, limits):
                results[i] = Output(tok.decode(out, skip_special_tokens=True), len(out), finished, token_ids=list(out))
                self.cache.put_many([(keys[i], results[i])])
                self.stats.new_tokens += len(out)
                self.stats.generated += 1
        self.stats.seconds += time.time() - started
