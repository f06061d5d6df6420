"""The KV cache the generator decodes with: a transformers ``DynamicCache`` whose layers grow in
place by chunks (``GrowingCache``), rows that leave the batch refilled from its end
(``fill_holes``), and how many sequences fit in memory (``auto_batch_size``)."""

from __future__ import annotations

import functools
import os

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


def available_memory(meminfo: str = "/proc/meminfo") -> int:
    """Bytes of RAM a process can still take: Linux's ``MemAvailable`` (free memory plus the page
    cache it can drop), else free pages, else 16 GiB. Free pages alone shrink as files are read
    (the model, the data), so the batch would depend on what the machine read before."""
    try:
        with open(meminfo) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 16 * 2**30


def auto_batch_size(model, requests: int, tokens_per_sequence: int) -> int:
    """Sequences decoded together: as many as the device's cap, the requests and a KV-cache
    memory budget allow (CUDA: a third of free memory; CPU: 1.5 GiB or a tenth of the
    available RAM, whichever is smaller)."""
    import torch

    device = next(model.parameters()).device
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] / 3
    else:
        budget = min(1.5 * 2**30, available_memory() / 10)
    fits = int(budget // max(kv_bytes_per_token(model) * tokens_per_sequence, 1))
    return max(1, min(MAX_BATCH.get(device.type, 64), requests, fits))


class _BatchEdits:
    """How the generator's cache (``GrowingLayer``) changes its batch in place: rows leave
    (``keep_rows``), join into the rows that left (``fits_rows``, ``add_rows``), and columns no
    row attends to go (``keep_columns``, by ``compact``)."""

    def fits_rows(self, rows: int, width: int) -> bool:
        """Whether ``rows`` more rows of ``width`` positions fit in the freed rows (``add_rows``)."""
        keys = self.room[0]
        return (width <= self.length and keys.shape[0] >= self.keys.shape[0] + rows
                and keys.data_ptr() == self.keys.data_ptr() and keys.shape[1:] == self.keys.shape[1:])

    def add_rows(self, keys, values):
        """Rows joining the batch, written into the freed rows right-aligned at the current
        length (``fits_rows``): nothing else is copied. Their columns before that stay as the
        rows that left them (finite values their masks exclude)."""
        start, end, width = self.keys.shape[0], self.keys.shape[0] + keys.shape[0], keys.shape[-2]
        for room, part in zip(self.room, (keys, values)):
            room[start:end, :, self.length - width : self.length] = part
        self.keys, self.values = self.room[0][:end], self.room[1][:end]

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

    def keep_columns(self, columns):
        """Keep only the positions ``columns`` (ascending indices), moved down in place."""
        if not self.is_initialized:
            return
        for t in (self.keys, self.values):
            t[..., : len(columns), :] = t[..., columns, :]  # the index gathers a copy first
        self.length = len(columns)


@functools.cache
def growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(_BatchEdits, DynamicLayer):
        """A cache layer that writes new keys and values into spare capacity instead of
        concatenating the whole cache at every step (which copies it once per token)."""

        CHUNK = 64  # tokens of capacity added at a time

        def lazy_initialization(self, key_states):
            super().lazy_initialization(key_states)
            self.length = 0

        def replace(self, keys, values, length=None):
            """Hold ``keys`` and ``values``, of which the first ``length`` positions are filled."""
            self.keys, self.values, self.length = keys, values, keys.shape[-2] if length is None else length
            self.room = (keys, values)  # every row allocated: rows that leave (``keep_rows``) free theirs

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
                self.room = (self.keys, self.values)
            self.keys[..., self.length : self.length + new, :] = key_states
            self.values[..., self.length : self.length + new, :] = value_states
            self.length += new
            return self._view()

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_select_indices(self, indices):
            if self.is_initialized:
                self.keys, self.values = self.keys[indices, ...], self.values[indices, ...]
                self.room = (self.keys, self.values)

    return GrowingLayer


def compact(cache, mask, least: int = 1):
    """Drop the cache columns that no row attends to (``mask`` [rows, columns], 0 = not
    attended): left padding that every row still in the batch has, because the longest rows
    left or joined narrower. Returns the narrower mask, or ``mask`` itself when fewer than
    ``least`` columns would go. Every row keeps its keys and values in order, and its
    positions (given apart); what goes are columns whose softmax weights are exact zeros."""
    import torch

    used = mask.bool().any(0)
    kept = int(used.sum())
    if mask.shape[1] - kept < max(least, 1):
        return mask
    columns = used.nonzero()[:, 0]
    for layer in cache.layers:
        layer.keep_columns(columns)
    return mask[:, columns]


def GrowingCache():
    """A DynamicCache whose layers grow in place (see ``GrowingLayer``)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = growing_layer_class()
    return cache
