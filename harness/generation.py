"""Batched generation with a content-addressed on-disk cache.

Every output is stored under a key made of the model fingerprint (base weights plus
adapter), the exact prompt text and the decoding settings, so asking twice for the
same thing generates nothing the second time. Batches are sorted by prompt length and
left-padded; finished sequences stop at the end-of-turn token.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    """Generates chat completions for one model (base + optional adapter), through the cache.

    This is the transformers backend; harness/vllm_backend.py has a vLLM one with the
    same surface, prompts and cache keys."""

    backend = "transformers"

    def __init__(self, model, tokenizer, fingerprint: str, cache: GenerationCache | None = None, batch_size: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.cache = cache or GenerationCache()
        self.batch_size = batch_size  # 0: chosen per call by ``auto_batch_size``
        self.stats = GenerationStats()
        self.stop_ids = end_of_turn_ids(tokenizer)
        from harness.attention import use_decode_attention

        use_decode_attention(model)  # on a CPU: single-query attention without copying keys per head

    def key(self, prompt_text: str, decoding: Decoding) -> str:
        blob = json.dumps([self.fingerprint, prompt_text, decoding.key()], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def prompt_text(self, request: Request) -> str:
        return render_chat(self.tokenizer, request.messages, request.assistant_prefix)

    def generate(self, requests: list[Request], decoding: Decoding = Decoding(), label: str = "generating") -> list[Output]:
        """Outputs in the order of ``requests``; only cache misses are generated."""
        return self.generate_many([(r, decoding) for r in requests], label)

    def generate_many(self, items: list[tuple[Request, Decoding]], label: str = "generating") -> list[Output]:
        """Like ``generate`` with a decoding per request: requests that differ only in
        ``max_new_tokens`` decode in one batch (e.g. every suite's questions to one model)."""
        texts = [self.prompt_text(r) for r, _ in items]
        keys = [self.key(t, d) for t, (_, d) in zip(texts, items)]
        results: list[Output | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        # the same prompt twice in one call is generated once
        first_of: dict[str, int] = {}
        unique = [i for i in todo if first_of.setdefault(keys[i], i) == i]
        self.stats.cache_hits += len(items) - len(unique)
        groups: dict[str, list[int]] = {}
        for i in unique:
            groups.setdefault(self._batch_key(items[i][1]), []).append(i)
        for group in groups.values():
            self._generate_missing(texts, keys, group, {i: items[i][1] for i in group}, results, label)
        for i in todo:
            if results[i] is None:
                results[i] = results[first_of[keys[i]]]
        return results  # type: ignore[return-value]

    @staticmethod
    def _batch_key(decoding: Decoding) -> str:
        """Requests with equal keys can share a batch: everything but the length limit."""
        return json.dumps({**decoding.key(), "max_new_tokens": None}, sort_keys=True)

    def _generate_missing(self, texts, keys, todo, decodings: dict[int, Decoding], results, label):
        import torch

        tok = self.tokenizer
        lengths = {i: len(tok(texts[i], add_special_tokens=False)["input_ids"]) for i in todo}
        order = sorted(todo, key=lambda i: -lengths[i])
        decoding = decodings[order[0]]  # the sampling settings the whole group shares
        longest = max(decodings[i].max_new_tokens for i in order)
        self.current_batch = self.batch_size or auto_batch_size(self.model, len(order), lengths[order[0]] + longest)
        started = time.time()
        seed = int(keys[order[0]][:8], 16) ^ decoding.seed
        limits = [decodings[i].max_new_tokens for i in order]
        with progress_bar(label, total=len(order), unit="tok") as bar, torch.inference_mode():
            for i, (ids, finished) in self._decode([texts[i] for i in order], order, decoding, seed, bar, limits):
                results[i] = Output(tok.decode(ids, skip_special_tokens=True), len(ids), finished)
                self.cache.put_many([(keys[i], results[i])])
                self.stats.new_tokens += len(ids)
                self.stats.generated += 1
        self.stats.seconds += time.time() - started

    def _prefill(self, prompts: list[str]):
        """Left-padded forward pass over new prompts: (cache, mask, next positions, last logits)."""
        tok, model = self.tokenizer, self.model
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False)
        ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = GrowingCache()
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1
        ).logits[:, -1, :]
        return cache, mask, positions[:, -1] + 1, logits

    @staticmethod
    def _merge(cache, mask, extra_cache, extra_mask):
        """Join two left-padded caches along the batch, left-padding the shorter one."""
        import torch
        import torch.nn.functional as F

        width = max(mask.shape[1], extra_mask.shape[1])

        def widen(layer_tensor, current):
            return F.pad(layer_tensor, (0, 0, width - current, 0))

        cur, new = mask.shape[1], extra_mask.shape[1]
        for layer, extra in zip(cache.layers, extra_cache.layers):
            (keys, values), (extra_keys, extra_values) = layer._view(), extra._view()
            layer.replace(torch.cat([widen(keys, cur), widen(extra_keys, new)]),
                          torch.cat([widen(values, cur), widen(extra_values, new)]))
        return torch.cat([F.pad(mask, (width - cur, 0)), F.pad(extra_mask, (width - new, 0))])

    def _decode(self, prompts: list[str], ids_of: list[int], decoding: Decoding, seed: int, bar, limits: list[int]):
        """Continuous batching with a KV cache: a sequence that reaches end of turn leaves the
        batch at once, and waiting prompts join whenever half the batch has finished.
        Yields (request index, (token ids, finished)) as sequences complete."""
        import torch

        model = self.model
        stop = set(self.stop_ids)
        generator = torch.Generator(device=model.device).manual_seed(seed) if decoding.do_sample else None
        queue = list(range(len(prompts)))
        alive: list[int] = []
        out: dict[int, list[int]] = {}
        cache = mask = next_pos = logits = None
        while queue or alive:
            width = self.current_batch
            if queue and len(alive) <= width // 2:
                take, queue = queue[: width - len(alive)], queue[width - len(alive) :]
                new_cache, new_mask, new_pos, new_logits = self._prefill([prompts[j] for j in take])
                if alive:
                    mask = self._merge(cache, mask, new_cache, new_mask)
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
                index = torch.tensor(keep, dtype=torch.long, device=mask.device)
                cache.batch_select_indices(index)
                mask, next_pos, chosen, logits = mask[index], next_pos[index], chosen[index], logits[index]
                alive = [alive[k] for k in keep]
            if not alive:
                continue
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            logits = model(
                input_ids=chosen[:, None], attention_mask=mask, position_ids=next_pos[:, None], past_key_values=cache, use_cache=True
            ).logits[:, -1, :]
            next_pos = next_pos + 1

    @staticmethod
    def _pick(logits, decoding: Decoding, generator):
        import torch

        if not decoding.do_sample:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / max(decoding.temperature, 1e-6), dim=-1)
        if decoding.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > decoding.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# --- batch size and KV cache ------------------------------------------------------------------

# Largest generation batch per device type: on a CPU, tokens/s stops improving around 64
# (benchmarks/generation.py); a GPU keeps gaining well beyond.
MAX_BATCH = {"cpu": 64, "cuda": 256}


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one token adds to the cache, over all layers."""
    c = model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * heads * head_dim * next(model.parameters()).element_size()


def auto_batch_size(model, requests: int, tokens_per_sequence: int) -> int:
    """Sequences decoded together: as many as the device's cap, the requests and a KV-cache
    memory budget allow (CUDA: a third of free memory; CPU: 1.5 GiB or a tenth of the
    available RAM, whichever is smaller)."""
    import torch

    device = next(model.parameters()).device
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] / 3
    else:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            available = 16 * 2**30
        budget = min(1.5 * 2**30, available / 10)
    fits = int(budget // max(kv_bytes_per_token(model) * tokens_per_sequence, 1))
    return max(1, min(MAX_BATCH.get(device.type, 64), requests, fits))


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A cache layer that writes new keys and values into spare capacity instead of
        concatenating the whole cache at every step (which copies it once per token)."""

        CHUNK = 64  # tokens of capacity added at a time

        def lazy_initialization(self, key_states):
            super().lazy_initialization(key_states)
            self.length = 0

        def replace(self, keys, values):
            self.keys, self.values, self.length = keys, values, keys.shape[-2]

        def _view(self):
            return self.keys[..., : self.length, :], self.values[..., : self.length, :]

        def update(self, key_states, value_states, cache_kwargs=None):
            import torch

            if not self.is_initialized:
                self.lazy_initialization(key_states)
                self.replace(key_states, value_states)
                return self._view()
            new = key_states.shape[-2]
            if self.length + new > self.keys.shape[-2]:
                grow = max(self.CHUNK, new)
                pad = lambda t: torch.cat([t[..., : self.length, :], t.new_zeros(*t.shape[:-2], grow + new, t.shape[-1])], dim=-2)
                self.keys, self.values = pad(self.keys), pad(self.values)
            self.keys[..., self.length : self.length + new, :] = key_states
            self.values[..., self.length : self.length + new, :] = value_states
            self.length += new
            return self._view()

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_select_indices(self, indices):
            if self.is_initialized:
                self.keys, self.values = self.keys[indices, ...], self.values[indices, ...]

    return GrowingLayer


_GROWING_LAYER = None


def GrowingCache():
    """A DynamicCache whose layers grow in place (see ``GrowingLayer``)."""
    global _GROWING_LAYER
    from transformers import DynamicCache

    if _GROWING_LAYER is None:
        _GROWING_LAYER = _growing_layer_class()
    cache = DynamicCache()
    cache.layer_class_to_replicate = _GROWING_LAYER
    return cache
