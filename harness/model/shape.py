"""A model's shape, read before any compute and without loading weights: the numbers some
option ranges name (``harness.config.ranges.MODEL_SHAPE``: layers, vocabulary, context,
hidden size) from its config.json, and the modules that carry weights from the header of its
safetensors files (the JSON index of a sharded checkpoint, or the JSON header at the start
of each file). Plain JSON only, so the dry run imports neither torch nor transformers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from harness.config.ranges import MODEL_SHAPE
from harness.model.loading import EMBEDDED, looks_like_path
from harness.paths import model_cache_dir

# names other model families give the same numbers (GPT-2, T5-style and MPT configs)
ALIASES = {"num_hidden_layers": ("n_layer", "num_layers", "n_layers"),
           "max_position_embeddings": ("n_positions", "max_seq_len", "seq_length"),
           "hidden_size": ("n_embd", "d_model")}
HEADER_LIMIT = 100 << 20  # a safetensors header larger than this is no header


def model_files(name: str) -> Path | str | None:
    """Where the model's config.json and weight files are, without fetching or converting
    anything: a local folder, the embedded model's converted copy, or the hub model's id when
    the local hub cache holds its config; None when none is local yet."""
    if name in EMBEDDED:
        folder = model_cache_dir() / EMBEDDED[name]["folder"]
        return folder if (folder / "config.json").is_file() else None
    if looks_like_path(name):
        folder = Path(name).expanduser()
        return folder if (folder / "config.json").is_file() else None
    return name if isinstance(_hub_file(name, "config.json"), str) else None


def _hub_file(repo: str, filename: str):
    try:  # reads the local hub cache only, never the network
        from huggingface_hub import try_to_load_from_cache

        return try_to_load_from_cache(repo, filename)
    except Exception:
        return None


def _local(where: Path | str, filename: str) -> Path | None:
    path = where / filename if isinstance(where, Path) else _hub_file(where, filename)
    return Path(path) if isinstance(path, (str, Path)) and Path(path).is_file() else None


def model_shape(name: str) -> dict | None:
    """The model's shape numbers and weight-carrying module names (``modules``: the last part
    of each module's name, e.g. q_proj), or None while its config.json is not local. A
    multimodal config's ``text_config`` fills in what its top level lacks."""
    where = model_files(name)
    config_path = _local(where, "config.json") if where is not None else None
    if config_path is None:
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # check_model names a damaged config.json
    if not isinstance(config, dict):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    shape = {}
    for key in MODEL_SHAPE:
        for source in (config, text):
            value = next((source[k] for k in (key, *ALIASES.get(key, ())) if isinstance(source.get(k), int)), None)
            if value is not None:
                shape[key] = value
                break
    modules = weight_modules(where)
    if modules:
        shape["modules"] = modules
    return shape


def weight_modules(where: Path | str) -> list[str]:
    """The last part of the name of every module with a weight matrix, the modules an adapter
    can target (``model.layers.0.self_attn.q_proj.weight`` -> q_proj), from the safetensors
    headers; [] when the checkpoint has none (e.g. only .bin weights, never opened here)."""
    index = _local(where, "model.safetensors.index.json")
    if index is not None:
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return []
    else:
        shards = ["model.safetensors"]
    found = set()
    for shard in shards:
        path = _local(where, shard)
        if path is None:
            return []  # a shard not local: the module list would be partial
        found |= {name.rsplit(".", 2)[-2] for name, shape in safetensors_shapes(path).items()
                  if name.endswith(".weight") and "." in name[:-7] and len(shape) == 2}
    return sorted(found)


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a safetensors file's header (8 bytes of length, then
    JSON); {} when it is no such file."""
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > HEADER_LIMIT:
                return {}
            header = json.loads(fh.read(size).decode("utf-8"))
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(header, dict):
        return {}
    return {name: list(info.get("shape", [])) for name, info in header.items()
            if name != "__metadata__" and isinstance(info, dict)}


def fewest_tokens(name: str, texts: list[str]) -> int | None:
    """The fewest tokens any of ``texts`` takes with the model's tokenizer (its tokenizer.json,
    read by the tokenizers library alone: no torch, no weights), or None when that file is not
    local or cannot be read."""
    where = model_files(name)
    path = _local(where, "tokenizer.json") if where is not None and texts else None
    if path is None:
        return None
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        return min(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    except Exception:  # an unusual tokenizer file: the trainer's own check stands
        return None
