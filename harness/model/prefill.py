"""Prefilling prompts into a KV cache before decoding: the start every prompt shares is computed
once and copied to every row, the rest in forward passes of similar length (padding under a
tenth), joined into one left-padded batch."""

from __future__ import annotations

import os

from harness.model.kv_cache import GrowingCache, growing_layer_class


class Prefill:
    """Prefill for one model (and its tokenizer's padding id)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    # Prompts of one call usually start alike (the chat template's system turn): a shared
    # start at least this long is computed once and its keys and values copied to every row.
    PREFIX_MIN_TOKENS = 8
    # A prefill forward pass holds at most this many (padded) prompt tokens, and a prompt
    # joins a pass only while padding stays under a tenth of it: one pass over prompts of
    # mixed lengths spent most of its time on padding.
    PREFILL_TOKENS = 4096

    def prefix(self, prompts: list[list[int]]):
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
    def _chunks(prompts: list[list[int]], start: int, budget: int, most: int = 0) -> list[list[int]]:
        """Consecutive runs of prompts (indices) to prefill together: each under ``budget``
        padded tokens (``start`` shared tokens excluded), under 10% padding and, with ``most``,
        of at most that many prompts."""
        chunks, current, real, longest = [], [], 0, 0
        for k, p in enumerate(prompts):
            padded = (max(longest, len(p)) - start) * (len(current) + 1)
            if current and (padded > budget or 1 - (real + len(p) - start) / padded > 0.1 or len(current) == most):
                chunks.append(current)
                current, real, longest = [], 0, 0
            current.append(k)
            real += len(p) - start
            longest = max(longest, len(p))
        return chunks + [current] if current else chunks

    def hidden(self, sequences: list[tuple[list[int], int]], most: int = 0) -> list:
        """Teacher-forced final hidden states (the output layer's input) of each (token ids,
        scored) sequence at its last ``scored`` + 1 positions but the very last, i.e. the positions
        that predict its ``scored`` last tokens: the sequences longest first, the start they all
        share (before any needed position) computed once, the rest in passes of similar length
        as prompts are prefilled (``most`` sequences per pass at most). Each sequence's states
        depend only on its pass, so two models given the same sequences compute in the same
        passes."""
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
        ids = [sequences[i][0] for i in order]
        # the shared start ends before the first position whose state is kept
        start, shared = self.prefix([sequences[i][0][: len(sequences[i][0]) - sequences[i][1]] for i in order])
        decoder = self.model.get_decoder()
        out: list = [None] * len(sequences)
        for chunk in self._chunks(ids, start, self.PREFILL_TOKENS, most):
            rest = [ids[k][start:] for k in chunk]
            input_ids, mask, positions = self._pass_inputs(rest, start)
            cache = _with_start(shared, len(rest)) if start else None
            states = decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions[:, start:],
                             past_key_values=cache, use_cache=cache is not None).last_hidden_state
            for row, k in enumerate(chunk):
                scored = sequences[order[k]][1]
                out[order[k]] = states[row, states.shape[1] - scored - 1 : states.shape[1] - 1]
        return out

    def run(self, prompts: list[list[int]], prefix=(0, None), layout=None):
        """Forward passes over new prompts, length-bucketed and joined into one left-padded
        batch: (cache, mask, next positions, last logits). With a ``prefix`` (from ``prefix``)
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
            cache = _with_start(shared, len(rest)) if start else GrowingCache()
            logits.append(self.model(input_ids=ids, attention_mask=mask, position_ids=positions[:, start:],
                                     past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :])
            parts.append((cache, mask))
        cache, mask = merge(parts)
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
        """``run`` for a model whose cache layout is known (``layout``: layers, key/value
        heads, head size, dtype; the fast Llama path): every pass writes its keys and values
        straight into its rows of one zeroed, left-padded cache with room for the next
        ``CHUNK`` tokens, so nothing is grown, merged or copied afterwards (128 benchmark
        prompts: 8.3 -> 7.7 s). The cache, mask, positions and logits equal those of
        ``run`` + ``merge``."""
        import torch
        import torch.nn.functional as F

        layers, kv_heads, head_dim, dtype = layout
        device = self.model.device
        rests = [[prompts[k][start:] for k in chunk] for chunk in chunks]
        width = start + max(len(r) for rest in rests for r in rest)
        layer_class = growing_layer_class()
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


def _with_start(shared, rows: int):
    """A cache holding the shared start's keys and values (``Prefill.prefix``) in each of ``rows`` rows."""
    cache = GrowingCache()
    for index, (keys, values) in enumerate(shared):
        cache.update(keys.expand(rows, -1, -1, -1).contiguous(), values.expand(rows, -1, -1, -1).contiguous(), index)
    return cache


def teacher_forced_states(model, tokenizer, sequences: list[tuple[list[int], int]], most: int = 0) -> list:
    """Each (token ids, scored) sequence's final hidden states at the positions that predict its
    ``scored`` last tokens, computed as prompts are prefilled (``Prefill.hidden``)."""
    return Prefill(model, tokenizer).hidden(sequences, most)


def merge(parts):
    """Join (cache, mask) pairs along the batch into the first cache, left-padding the
    narrower ones: one copy into tensors with room for the next tokens, or, when one part
    joins a cache at least as wide whose freed rows hold it, a copy of that part only."""
    import torch
    import torch.nn.functional as F

    if len(parts) == 1:
        return parts[0]
    (cache, mask), rest = parts[0], parts[1:]
    if len(rest) == 1 and all(layer.fits_rows(rest[0][1].shape[0], rest[0][1].shape[1]) for layer in cache.layers):
        # the usual refill: the new rows go into the rows that left, no wider than the batch
        new_cache, new_mask = rest[0]
        for layer, new in zip(cache.layers, new_cache.layers):
            layer.add_rows(*new._view())
        return cache, torch.cat([mask, F.pad(new_mask, (mask.shape[1] - new_mask.shape[1], 0))])
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

