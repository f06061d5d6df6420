"""Batched generation with a content-addressed on-disk cache.

Every output is stored under a key made of the model fingerprint (base weights plus
adapter), the exact prompt text and the decoding settings, so asking twice for the
same thing generates nothing the second time. Prompts are sorted by length, the start they
all share is computed once, the rest is prefilled in passes of similar length and decoded
with continuous batching; finished sequences stop at the end-of-turn token.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.paths import cache_dir
from harness.prompts import end_of_turn_ids, render_chat, request_ids
from harness.progress import progress_bar
from harness.store import CacheDB


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; part of every cache key."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    top_k: int = 0  # 0: no top-k filter

    def key(self) -> dict:
        d = asdict(self)
        if not self.do_sample:
            d.update(temperature=None, top_p=None, seed=None)
        if not self.do_sample or not self.top_k:
            d.pop("top_k")  # keys of decodings without it stay what they were before it existed
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
    token_ids: list[int] | None = None  # the generated tokens (end of turn excluded); None in older cache rows


class GenerationCache:
    """SQLite table of finished generations, committed batch by batch (safe to interrupt)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else cache_dir() / "generations.sqlite"
        self.db = CacheDB(self.path, "CREATE TABLE IF NOT EXISTS generations "
                                     "(key TEXT PRIMARY KEY, text TEXT, new_tokens INT, finished INT, ids TEXT)",
                          migrate=_add_ids_column)

    def get(self, key: str) -> Output | None:
        row = self.db.run(lambda db: db.execute("SELECT text, new_tokens, finished, ids FROM generations WHERE key=?",
                                                (key,)).fetchone())
        if not row:
            return None
        return Output(row[0], row[1], bool(row[2]), cached=True, token_ids=json.loads(row[3]) if row[3] else None)

    def put_many(self, items: list[tuple[str, Output]]) -> None:
        rows = [(k, o.text, o.new_tokens, int(o.finished), None if o.token_ids is None else json.dumps(o.token_ids))
                for k, o in items]

        def put(db):
            db.executemany("INSERT OR REPLACE INTO generations (key, text, new_tokens, finished, ids) VALUES (?, ?, ?, ?, ?)",
                           rows)
            db.commit()

        self.db.run(put)


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


class Generator:
    """Generates chat completions for one model (base + optional adapter), through the cache.

    This is the transformers backend; harness/vllm_backend.py has a vLLM one with the
    same surface, prompts and cache keys."""

    backend = "transformers"
    # Decode steps of a plain Llama on a CPU run through ``harness.fast_llama`` (same
    # logits, bit for bit, without transformers' per-layer overhead); False: always ``model(...)``.
    FAST_DECODE = True

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

    def key(self, prompt_text: str, decoding: Decoding, prefix: bool = False) -> str:
        parts = [self.fingerprint, prompt_text, decoding.key()]
        if prefix:  # the assistant prefix is tokenised on its own (``request_ids``): other ids than the joined text's
            parts.append("prefix tokenised apart")
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
        for group in groups.values():
            self._generate_missing(prompts, keys, group, {i: items[i][1] for i in group}, results, label)
        for i in todo:
            if results[i] is None:
                results[i] = results[first_of[keys[i]]]
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

    # Prompts of one call usually start alike (the chat template's system turn): a shared
    # start at least this long is computed once and its keys and values copied to every row.
    PREFIX_MIN_TOKENS = 8
    # A prefill forward pass holds at most this many (padded) prompt tokens, and a prompt
    # joins a pass only while padding stays under a tenth of it: one pass over prompts of
    # mixed lengths spent most of its time on padding.
    PREFILL_TOKENS = 4096

    def _prefix(self, prompts: list[list[int]]):
        """(length, per-layer (keys, values)) of the start every prompt shares, or (0, None)."""
        import torch

        if len(prompts) < 2:
            return 0, None
        shared = os.path.commonprefix(prompts)[: min(map(len, prompts)) - 1]  # every prompt keeps a token to prefill
        if len(shared) < self.PREFIX_MIN_TOKENS:
            return 0, None
        cache = GrowingCache()
        self.model(input_ids=torch.tensor([shared], device=self.model.device), past_key_values=cache, use_cache=True,
                   logits_to_keep=1)
        return len(shared), [layer._view() for layer in cache.layers]

    @staticmethod
    def _chunks(prompts: list[list[int]], start: int, budget: int) -> list[list[int]]:
        """Consecutive runs of prompts (indices) to prefill together: each under ``budget``
        padded tokens (``start`` shared tokens excluded) and under 10% padding."""
        chunks, current, real, longest = [], [], 0, 0
        for k, p in enumerate(prompts):
            padded = (max(longest, len(p)) - start) * (len(current) + 1)
            if current and (padded > budget or 1 - (real + len(p) - start) / padded > 0.1):
                chunks.append(current)
                current, real, longest = [], 0, 0
            current.append(k)
            real += len(p) - start
            longest = max(longest, len(p))
        return chunks + [current] if current else chunks

    def _prefill(self, prompts: list[list[int]], prefix=(0, None), layout=None):
        """Forward passes over new prompts, length-bucketed and joined into one left-padded
        batch: (cache, mask, next positions, last logits). With a ``prefix`` (from ``_prefix``)
        only what follows it is computed; the mask then has a hole between prefix and prompt."""
        import torch

        start, shared = prefix
        chunks = self._chunks(prompts, start, self.PREFILL_TOKENS)
        if layout is not None:
            return self._prefill_in_place(prompts, start, shared, chunks, layout)
        parts, logits = [], []
        for chunk in chunks:
            rest = [prompts[k][start:] for k in chunk]
            ids, mask, positions = self._pass_inputs(rest, start)
            cache = GrowingCache()
            if start:
                for index, (keys, values) in enumerate(shared):
                    cache.update(keys.expand(len(rest), -1, -1, -1).contiguous(),
                                 values.expand(len(rest), -1, -1, -1).contiguous(), index)
            logits.append(self.model(input_ids=ids, attention_mask=mask, position_ids=positions[:, start:],
                                     past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :])
            parts.append((cache, mask))
        cache, mask = self._merge(parts)
        return cache, mask, mask.sum(-1), torch.cat(logits)  # next position = real tokens so far

    def _pass_inputs(self, rest: list[list[int]], start: int):
        """One prefill pass's left-padded ids, its mask (with ``start`` shared-prefix columns in
        front) and each column's position."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width, device = max(map(len, rest)), self.model.device
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest], device=device)
        if start:
            mask = torch.cat([mask.new_ones(len(rest), start), mask], dim=1)
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def _prefill_in_place(self, prompts, start, shared, chunks, layout):
        """``_prefill`` for a model whose cache layout is known (``layout``: layers, key/value
        heads, head size, dtype; the fast Llama path): every pass writes its keys and values
        straight into its rows of one zeroed, left-padded cache with room for the next
        ``CHUNK`` tokens, so nothing is grown, merged or copied afterwards (128 benchmark
        prompts: 8.3 -> 7.7 s). The cache, mask, positions and logits equal those of
        ``_prefill`` + ``_merge``."""
        import torch
        import torch.nn.functional as F

        layers, kv_heads, head_dim, dtype = layout
        device = self.model.device
        rests = [[prompts[k][start:] for k in chunk] for chunk in chunks]
        width = start + max(len(r) for rest in rests for r in rest)
        layer_class = _growing_layer_class()
        room = torch.zeros((layers, 2, len(prompts), kv_heads, width + layer_class.CHUNK, head_dim), dtype=dtype, device=device)
        masks, logits, row = [], [], 0
        for rest in rests:
            ids, mask, positions = self._pass_inputs(rest, start)
            offset = width - start - ids.shape[1]  # the pass's columns are right-aligned in the cache
            cache = GrowingCache()
            for index in range(layers):
                keys, values = (room[index, which, row : row + len(rest), :, offset:] for which in (0, 1))
                if start:
                    keys[:, :, :start], values[:, :, :start] = shared[index]
                layer = layer_class()
                layer.lazy_initialization(keys)
                layer.replace(keys, values, length=start)
                cache.layers.append(layer)
            logits.append(self.model(input_ids=ids, attention_mask=mask, position_ids=positions[:, start:],
                                     past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :])
            assert all(layer.keys.data_ptr() == room[index, 0, row].data_ptr() + offset * head_dim * room.element_size()
                       for index, layer in enumerate(cache.layers)), "a prefill pass outgrew its cache rows"
            masks.append(F.pad(mask, (width - mask.shape[1], 0)))
            row += len(rest)
        cache = GrowingCache()
        for index in range(layers):
            layer = layer_class()
            layer.lazy_initialization(room[index, 0])
            layer.replace(room[index, 0], room[index, 1], length=width)
            cache.layers.append(layer)
        mask = torch.cat(masks)
        return cache, mask, mask.sum(-1), torch.cat(logits)

    @staticmethod
    def _merge(parts):
        """Join (cache, mask) pairs along the batch into the first cache, left-padding the
        narrower ones: one copy into tensors with room for the next tokens."""
        import torch
        import torch.nn.functional as F

        if len(parts) == 1:
            return parts[0]
        width = max(mask.shape[1] for _, mask in parts)
        caches = [cache for cache, _ in parts]
        for index, layer in enumerate(caches[0].layers):
            views = [cache.layers[index]._view() for cache in caches]
            joined = []
            for which in (0, 1):  # keys, then values
                first = views[0][which]
                room = first.new_zeros(sum(v[which].shape[0] for v in views), first.shape[1], width + layer.CHUNK, first.shape[3])
                row = 0
                for view in views:
                    part = view[which]
                    room[row : row + part.shape[0], :, width - part.shape[-2] : width] = part
                    row += part.shape[0]
                joined.append(room)
            layer.replace(*joined, length=width)
        return caches[0], torch.cat([F.pad(mask, (width - mask.shape[1], 0)) for _, mask in parts])

    def _decode(self, prompts: list[list[int]], ids_of: list[int], decoding: Decoding, seed: int, bar, limits: list[int]):
        """Continuous batching with a KV cache: a sequence that reaches end of turn leaves the
        batch at once, and waiting prompts join whenever half the batch has finished.
        Yields (request index, (token ids, finished)) as sequences complete."""
        import torch

        model = self.model
        stop = set(self.stop_ids)
        generator = torch.Generator(device=model.device).manual_seed(seed) if decoding.do_sample else None
        queue = list(range(len(prompts)))
        prefix = self._prefix(prompts)
        layout = None
        alive: list[int] = []
        out: dict[int, list[int]] = {}
        cache = mask = next_pos = logits = None
        fast = None
        if self.FAST_DECODE:
            from harness.fast_llama import FastLlama

            fast = FastLlama.of(model)
            if fast is not None:
                layout = (len(fast.layers), fast.kv_heads, fast.head_dim, fast.embed.dtype)
        while queue or alive:
            width = self.current_batch
            if queue and len(alive) <= width // 2:
                take, queue = queue[: width - len(alive)], queue[width - len(alive) :]
                new_cache, new_mask, new_pos, new_logits = self._prefill([prompts[j] for j in take], prefix, layout)
                if alive:
                    cache, mask = self._merge([(cache, mask), (new_cache, new_mask)])
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
            return logits.argmax(-1)
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


def fill_holes(keep: list[int]) -> list[int]:
    """New row order after the rows not in ``keep`` (ascending) leave: rows from the end
    move into the holes, so only as many cache rows are copied as sequences left."""
    count, kept = len(keep), set(keep)
    movers = iter(k for k in keep if k >= count)
    return [k if k in kept else next(movers) for k in range(count)]


# --- batch size and KV cache ------------------------------------------------------------------

# Largest generation batch per device type: on a 2-core CPU a decode step of the embedded
# model costs ~340 ms at 64 sequences and ~660 ms at 128, so wider batches still gain a
# little and halve the steps of a short call (benchmarks/generation.py: 128 prompts in one
# wave, 1.3x faster than two waves of 64); a GPU keeps gaining well beyond.
MAX_BATCH = {"cpu": 128, "cuda": 256}


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


@functools.cache
def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A cache layer that writes new keys and values into spare capacity instead of
        concatenating the whole cache at every step (which copies it once per token)."""

        CHUNK = 64  # tokens of capacity added at a time

        def lazy_initialization(self, key_states):
            super().lazy_initialization(key_states)
            self.length = 0

        def replace(self, keys, values, length=None):
            """Hold ``keys`` and ``values``, of which the first ``length`` positions are filled."""
            self.keys, self.values, self.length = keys, values, keys.shape[-2] if length is None else length

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

        def keep_rows(self, order: list[int]):
            """Row ``p`` becomes old row ``order[p]``: moves only the rows that change place and
            narrows the batch in place (``batch_select_indices`` copies the whole cache)."""
            import torch

            if not self.is_initialized:
                return
            moved = [p for p, source in enumerate(order) if p != source]
            if moved:
                to = torch.tensor(moved, device=self.keys.device)
                source = torch.tensor([order[p] for p in moved], device=self.keys.device)
                self.keys[to], self.values[to] = self.keys[source], self.values[source]
            self.keys, self.values = self.keys[: len(order)], self.values[: len(order)]

        def batch_select_indices(self, indices):
            if self.is_initialized:
                self.keys, self.values = self.keys[indices, ...], self.values[indices, ...]

    return GrowingLayer


def GrowingCache():
    """A DynamicCache whose layers grow in place (see ``GrowingLayer``)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = _growing_layer_class()
    return cache
