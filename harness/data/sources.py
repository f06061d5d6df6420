"""Where benchmark data comes from and how it is read: data sets declared by plugins
(``DataSet``), a data directory, the packaged starter set or the hub (``DataSource``), and the
seeded samples every suite and method draws.

A data directory has the layout of ``../shared/data`` (see its README): ALMA parallel
data under ``alma/<xx>en/``, and one folder per general-ability set. The packaged
starter suite (``harness/data/starter``) has the same layout, so one loader serves
both. With ``data_dir="hub"`` the same sets are read by their public hub names.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.data.records import Direction, HarmfulPrompt, Instruction, TranslationPair
from harness.errors import UserError
from harness.paths import STARTER_DATA, check_file, check_folder

# --- raw readers -----------------------------------------------------------------


def read_lines(path: Path) -> list[str]:
    try:
        text = check_file(path, "Data file", "check --data-dir").read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"Data file {path} is not UTF-8 text (byte {err.start}): re-encode it as UTF-8.") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_aligned(src_path: Path, tgt_path: Path) -> list[tuple[str, str]]:
    """Two plain-text files aligned line by line (the ALMA training layout)."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise UserError(
            f"Aligned files differ in length: {src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "fix them so line i of one is the translation of line i of the other."
        )
    return list(zip(src, tgt))


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON list, a JSONL file or a CSV file with a header, as dicts."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise UserError(f"Data file {path} does not exist: check --data-dir.")
    text = "\n".join(read_lines(path))
    if suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(
                f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; fix the file."
            ) from None
        if isinstance(rows, dict):
            rows = next((v for v in rows.values() if isinstance(v, list)), None)
        if not isinstance(rows, list):
            raise UserError(f"{path} must hold a JSON list of objects; fix the file.")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise UserError(f"{path}: item {i} is not a JSON object; every item must be an object.")
        return rows
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: line {lineno} is not valid JSON ({err.msg}, column {err.colno}); fix that line.") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}: line {lineno} is not a JSON object; every line must be an object.")
            rows.append(row)
        return rows
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        return [dict(row) for row in reader]
    raise UserError(f"{path}: unsupported data file type '{suffix}'; use .json, .jsonl, .csv or .tsv.")


def map_columns(rows: list[dict], mapping: dict[str, str], path: Path | str, optional: Sequence[str] = ()) -> list[dict]:
    """Rename the file's columns (``mapping`` = field -> column) and check they exist."""
    if not rows:
        raise UserError(f"{path} has no rows; give a file with at least one row.")
    out = []
    for i, row in enumerate(rows):
        mapped = {}
        for field_name, column in mapping.items():
            if column not in row:
                if field_name in optional:
                    continue
                raise UserError(
                    f"{path}: row {i + 1} has no column '{column}' (needed for '{field_name}'); "
                    f"its columns are {sorted(row)}; fix the file or the column mapping."
                )
            mapped[field_name] = row[column]
        out.append(mapped)
    return out


# --- general-ability data sets: declared by the suites and methods that read them -----------


@dataclass(frozen=True)
class DataSet:
    """A general-ability data set as a plugin declares it: its name, where it lives in a
    data dir (the layout of shared/data) and on the hub, its columns, and how rows become
    records (``load_instructions``, ``load_harmful`` or a loader of the plugin's own)."""

    name: str
    path: str  # relative to the data dir, e.g. "ifeval/input_data.jsonl"
    columns: dict[str, str]  # record field -> column of the file
    hub: str | None = None
    hub_split: str = "test"
    hub_config: str | None = None
    optional: tuple[str, ...] = ()
    loader: Callable[[list[dict]], list] | None = None  # mapped rows -> records; default: load_instructions

    def load(self, mapped: list[dict]) -> list:
        return (self.loader or load_instructions)(mapped)


def load_instructions(rows: list[dict]) -> list["Instruction"]:
    return [_to_instruction(i, r) for i, r in enumerate(rows)]


def load_harmful(rows: list[dict]) -> list["HarmfulPrompt"]:
    return [HarmfulPrompt(str(i), r["goal"], r.get("target", "")) for i, r in enumerate(rows)]


def _to_instruction(i: int, row: dict) -> Instruction:
    turns = row.get("turns") or [row["instruction"]]
    kwargs = row.get("kwargs") or []
    return Instruction(
        id=str(row.get("id", i)),
        turns=tuple(str(t) for t in turns),
        reference=row.get("reference"),
        category=row.get("category"),
        instruction_ids=tuple(row.get("instruction_ids") or ()),
        instruction_kwargs=tuple({k: v for k, v in kw.items() if v is not None} for kw in kwargs),
        input=str(row.get("input") or ""),
    )


class MissingData(UserError):
    """A pair or set that the data source does not have (or cannot reach); a dry run lists it."""


def _hub_rows(name: str, split: str, config: str | None = None) -> list[dict]:
    """Rows of a public hub data set; offline this fails with one clear sentence."""
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # the datasets library raises many types when offline
        raise MissingData(
            f"Could not load the hub data set '{name}' ({type(err).__name__}); "
            "check your network or point --data-dir at a local copy."
        ) from None
    return [dict(row) for row in ds]


# --- the data source -----------------------------------------------------------------


@dataclass
class DataSource:
    """All benchmark data for a run: a data dir (or the packaged starter suite, or the hub)."""

    root: Path | None = None
    hub: bool = False
    hashes: dict[str, str] = field(default_factory=dict)
    _read: dict[str, list] = field(default_factory=dict, repr=False)  # records by set name, read once
    _files: dict[str, list[str]] = field(default_factory=dict, repr=False)  # what each read took its rows from

    @classmethod
    def open(cls, data_dir: str | Path | None) -> "DataSource":
        if data_dir is None or str(data_dir) == "starter":
            return cls(STARTER_DATA)
        if str(data_dir) == "hub":
            return cls(None, hub=True)
        root = check_folder(data_dir, "--data-dir", "give a folder with the layout of shared/data, 'starter' for the built-in "
                                                    "smoke-test set, or 'hub' to read public hub names")
        return cls(root.resolve())

    @property
    def label(self) -> str:
        if self.hub:
            return "hub"
        if self.root == STARTER_DATA:
            return "starter (radis-bench smoke-test set, not a benchmark)"
        return str(self.root)

    def _file(self, rel: str, read: str | None = None) -> Path:
        assert self.root is not None
        path = self.root / rel
        if path.exists():
            self.hashes.setdefault(rel, file_hash(check_file(path, "Data file", "check --data-dir")))
            if read is not None and rel not in self._files.setdefault(read, []):
                self._files[read].append(rel)
        return path

    def content_key(self, reads: list[str]) -> dict:
        """What the rows of earlier reads (``"de-en/test"``, ``"set:ifeval"``) were made
        of: file content hashes, so a data dir that moves keeps its keys; hub names on the hub."""
        if self.hub:
            return {"hub": sorted(reads)}
        return {rel: self.hashes[rel] for read in sorted(reads) for rel in self._files.get(read, [])}

    # translation ---------------------------------------------------------------------
    def translation(self, direction: Direction, split: str) -> list[TranslationPair]:
        """Pairs of one direction. ``train`` reads the aligned text files (both directions
        share them); ``valid``/``test`` read ``<split>.<src>-<tgt>.json``."""
        src, tgt = direction.src, direction.tgt
        if self.hub:
            return self._hub_translation(direction, split)
        folder = self.root / "alma" / direction.folder
        if not folder.is_dir():
            raise MissingData(
                f"No data for pair {direction.name} in {self.root}: expected the folder {folder}; "
                "choose another --pairs or --data-dir."
            )
        x = direction.foreign
        if split == "train":
            read = f"{direction.name}/train"
            rows = read_aligned(self._file(f"alma/{x}en/train.{x}-en.{x}", read), self._file(f"alma/{x}en/train.{x}-en.en", read))
            return [
                TranslationPair(src, tgt, *(pair if src == x else pair[::-1]))
                for pair in rows
            ]
        name = f"{split}.{src}-{tgt}.json"
        path = self._file(f"alma/{x}en/{name}", f"{direction.name}/{split}")
        if not path.exists() and split == "valid":
            path = self._file(f"alma/{x}en/valid.{x}-en.json", f"{direction.name}/{split}")
        rows = read_records(path)
        pairs = []
        for i, row in enumerate(rows):
            tr = row.get("translation")
            if not isinstance(tr, dict) or src not in tr or tgt not in tr:
                raise UserError(
                    f"{path}: item {i} needs {{\"translation\": {{\"{src}\": ..., \"{tgt}\": ...}}}}; fix the file."
                )
            pairs.append(TranslationPair(src, tgt, str(tr[src]), str(tr[tgt])))
        return pairs

    def _hub_translation(self, direction: Direction, split: str) -> list[TranslationPair]:
        x = direction.foreign
        if split == "test":
            rows = _hub_rows("haoranxu/WMT22-Test", f"{direction.src}-{direction.tgt}", None)
        else:
            rows = _hub_rows("haoranxu/ALMA-Human-Parallel", "train" if split == "train" else "validation", f"{x}-en")
        return [
            TranslationPair(direction.src, direction.tgt, r["translation"][direction.src], r["translation"][direction.tgt])
            for r in rows
        ]

    # general sets ----------------------------------------------------------------------
    def general(self, spec: DataSet) -> list:
        """Records of a general-ability set (a plugin's ``DataSet``; by name:
        ``harness.plugins.registry.data_set``)."""
        if spec.name in self._read:
            return self._read[spec.name]
        if self.hub:
            if spec.hub is None:
                raise MissingData(f"The {spec.name} set has no hub name; point --data-dir at a local copy.")
            rows, where = _hub_rows(spec.hub, spec.hub_split, spec.hub_config), spec.hub
        else:
            path = self._file(spec.path, f"set:{spec.name}")
            if not path.exists():
                raise MissingData(
                    f"The {spec.name} set is missing from {self.root}: expected {path}; "
                    "add it, choose another --data-dir, or leave out the suite or method that reads it."
                )
            rows, where = read_records(path), path
        records = spec.load(map_columns(rows, spec.columns, where, optional=spec.optional))
        self._read[spec.name] = records
        return records


def file_hash(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample(items: Sequence, size: int | None, seed: int) -> list:
    """A seeded subsample that keeps the file order; ``None`` or a large size keeps all."""
    items = list(items)
    if size is None or size >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), size))
    return [items[i] for i in keep]
