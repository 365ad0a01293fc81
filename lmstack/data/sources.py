"""Streaming readers for pretraining text: txt, jsonl, parquet, nested JSON, the Python standard
library and the synthetic world.

Every reader yields documents ``{"text": str, "source": str, "id": str, ...metadata}`` one at a time
(never the whole corpus). Bad input is counted per file in a :class:`ReadStats`: invalid UTF-8,
malformed JSON lines and missing/non-string fields. The first few problems are kept as
``file:line: reason`` messages for the report; with ``strict=True`` the first one raises
:class:`DataError` instead.
"""

from __future__ import annotations

import json
import os
import random
import sysconfig
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, get_args

from lmstack import REPO_ROOT
from lmstack.data.remote import RemoteFile, expand_url, is_url, open_binary

SourceKind = Literal["txt", "jsonl", "parquet", "json", "stdlib", "world"]
KINDS = get_args(SourceKind)
MAX_EXAMPLES = 5


class DataError(ValueError):
    """Bad input data (the message names the file, the line and the problem)."""


@dataclass
class SourceConfig:
    """One ``[[data.sources]]`` entry of a recipe."""
    kind: SourceKind = "jsonl"
    path: str = ""                  # file, directory or glob (txt/jsonl/parquet/json); relative to the cwd, else the repo;
                                    # or an fsspec URL (s3://bucket/dir, gs://..., memory://...: lmstack.data.remote)
    name: str = ""                  # source name in the stats and the mix table (default: kind, or the file stem)
    field: str = "text"             # jsonl/json: the text field of each record, dotted for nested objects ("body.text");
                                    # a list of strings (e.g. "paragraphs") is joined by newlines; parquet: the column
    records: str = ""               # json: dotted path to the list of records inside the document ("" = top level)
    txt_split: Literal["blank_line", "file"] = "blank_line"  # txt: "blank_line" (one doc per blank-line-separated block) or "file" (one doc per file)
    weight: float = 1.0             # mixing weight: 0.5 keeps half the docs, 2.0 repeats every doc twice (epochs)
    strict: bool = False            # true: the first bad line raises instead of being counted and skipped
    max_docs: int = 0               # 0 = no cap
    max_files: int = 0              # stdlib: cap on files (0 = no cap)
    max_bytes: int = 0              # cap on bytes of text read (0 = no cap); stdlib files are sampled deterministically
    exclude: list[str] = dataclasses.field(default_factory=lambda: ["test", "tests", "idlelib", "site-packages", "__pycache__", "lib2to3"])  # stdlib: skipped directory names

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"source kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind in ("txt", "jsonl", "parquet", "json") and not self.path:
            raise ValueError(f"source kind {self.kind!r} needs a path")
        if self.txt_split not in ("blank_line", "file"):
            raise ValueError(f"txt_split {self.txt_split!r} is not one of 'blank_line', 'file'")
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.path:
            return Path(self.path).stem
        return self.kind


@dataclass
class FileStats:
    docs: int = 0
    bytes: int = 0
    bad_utf8: int = 0
    bad_json: int = 0
    missing_field: int = 0
    empty: int = 0


@dataclass
class ReadStats:
    """Per-file counters of documents read and problems skipped, plus the first few problems."""
    strict: bool = False
    files: dict[str, FileStats] = dataclasses.field(default_factory=dict)
    examples: list[str] = dataclasses.field(default_factory=list)

    def file(self, path: str) -> FileStats:
        return self.files.setdefault(str(path), FileStats())

    def problem(self, path: str, line: int | None, kind: str, reason: str) -> None:
        fs = self.file(path)
        setattr(fs, kind, getattr(fs, kind) + 1)
        where = f"{path}:{line}" if line is not None else str(path)
        msg = f"{where}: {reason}"
        if self.strict:
            raise DataError(msg + " (strict=true; set strict=false to count and skip bad lines)")
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(msg)

    def totals(self) -> dict[str, int]:
        out = {"files": len(self.files)}
        for name in FileStats.__dataclass_fields__:
            out[name] = sum(getattr(fs, name) for fs in self.files.values())
        return out


def resolve_path(path: str) -> Path:
    """A user path as given (relative to the cwd), else relative to the repository root."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    if (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return p


def expand_paths(path: str, suffixes: tuple[str, ...]) -> list[Path]:
    """A file, every matching file under a directory (sorted), or a glob; fsspec URLs too (remote.py)."""
    if is_url(path):
        try:
            return expand_url(path, suffixes)
        except ValueError as e:
            raise DataError(str(e)) from e.__cause__
    p = resolve_path(path)
    if p.is_dir():
        return sorted(q for q in p.rglob("*") if q.is_file() and q.name.endswith(suffixes))
    if p.exists():
        return [p]
    import glob as _glob
    matches = sorted(Path(m) for m in _glob.glob(str(p), recursive=True))
    if not matches:
        raise DataError(f"data source path {path!r} does not exist (looked in {Path.cwd()} and the repository)")
    return matches


def _decode(raw: bytes, path: str, line: int | None, stats: ReadStats) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        stats.problem(path, line, "bad_utf8", f"invalid UTF-8 at byte {e.start}")
        return None


# --- file readers ------------------------------------------------------------------------------

def read_txt(path: Path, stats: ReadStats, split: str = "blank_line", source: str = "txt") -> Iterator[dict]:
    """One document per file, or per block separated by blank lines (streamed line by line)."""
    fs = stats.file(str(path))
    if split == "file":
        text = _decode(path.read_bytes(), str(path), None, stats)
        if text is not None and text.strip():
            fs.docs += 1
            fs.bytes += len(text.encode("utf-8"))
            yield {"text": text.strip("\n"), "source": source, "id": f"{path.name}"}
        return
    block: list[str] = []
    start = 1
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, str(path), lineno, stats)
            if line is None:
                continue
            if line.strip():
                if not block:
                    start = lineno
                block.append(line.rstrip("\r\n"))
                continue
            if block:
                text = "\n".join(block)
                fs.docs += 1
                fs.bytes += len(text.encode("utf-8"))
                yield {"text": text, "source": source, "id": f"{path.name}:{start}"}
                block = []
    if block:
        text = "\n".join(block)
        fs.docs += 1
        fs.bytes += len(text.encode("utf-8"))
        yield {"text": text, "source": source, "id": f"{path.name}:{start}"}


def _take_text(value: Any, path: str, lineno: int, field_name: str, stats: ReadStats) -> str | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = "\n".join(value)
    if not isinstance(value, str):
        stats.problem(path, lineno, "missing_field",
                      f"field {field_name!r} is {type(value).__name__}, expected a string")
        return None
    return value


def _metadata(record: dict, text_field: str) -> dict:
    """Scalar fields besides the text, kept for the metadata filter (likes, comments, ...)."""
    return {k: v for k, v in record.items()
            if k != text_field and isinstance(v, (int, float, str, bool)) and k not in ("text", "source", "id")}


_MISSING = object()


def get_field(record: dict, dotted: str):
    """record["a"]["b"] for "a.b"; _MISSING when any step is absent."""
    node = record
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def read_jsonl(path: Path, stats: ReadStats, field_name: str = "text", source: str = "jsonl") -> Iterator[dict]:
    fs = stats.file(str(path))
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, str(path), lineno, stats)
            if line is None or not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                stats.problem(str(path), lineno, "bad_json", f"malformed JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(record, dict):
                stats.problem(str(path), lineno, "bad_json", f"expected a JSON object, got {type(record).__name__}")
                continue
            doc = _record_to_doc(record, field_name, path, lineno, str(path), lineno, f"{path.name}:{lineno}",
                                 f"field {field_name!r} missing (fields: {', '.join(sorted(record)) or 'none'})",
                                 source, fs, stats)
            if doc is not None:
                yield doc


def _record_to_doc(record: dict, field_name: str, path: Path, line: int | None, where: str, index: int,
                   doc_id: str, missing_msg: str, source: str, fs, stats: ReadStats) -> dict | None:
    """The document of one JSON record, or None (counted in ``stats``) when it has no usable text.
    ``line`` locates problems in the file (None for records of one JSON document); ``where`` and
    ``index`` locate a bad text value."""
    value = get_field(record, field_name)
    if value is _MISSING:
        stats.problem(str(path), line, "missing_field", missing_msg)
        return None
    text = _take_text(value, where, index, field_name, stats)
    if text is None:
        return None
    if not text.strip():
        fs.empty += 1
        return None
    fs.docs += 1
    fs.bytes += len(text.encode("utf-8"))
    doc = _metadata(record, field_name)
    doc.update(text=text, source=source, id=doc_id)
    return doc


def read_parquet(path: Path, stats: ReadStats, field_name: str = "text", source: str = "parquet") -> Iterator[dict]:
    """Streamed by row group (FineWeb-style files have a ``text`` column)."""
    import pyarrow.parquet as pq

    fs = stats.file(str(path))
    try:
        pf = pq.ParquetFile(path.open("rb") if isinstance(path, RemoteFile) else path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if field_name not in names:
        raise DataError(f"{path}: column {field_name!r} missing (columns: {', '.join(names)})")
    row = 0
    for rg in range(pf.num_row_groups):
        table = pf.read_row_group(rg)
        columns = {n: table.column(n).to_pylist() for n in table.column_names}
        for i in range(table.num_rows):
            row += 1
            text = columns[field_name][i]
            if text is None:
                stats.problem(str(path), row, "missing_field", f"column {field_name!r} is null")
                continue
            text = _take_text(text, str(path), row, field_name, stats)
            if text is None:
                continue
            if not text.strip():
                fs.empty += 1
                continue
            fs.docs += 1
            fs.bytes += len(text.encode("utf-8"))
            doc = {k: columns[k][i] for k in columns
                   if k != field_name and isinstance(columns[k][i], (int, float, str, bool))}
            doc.update(text=text, source=source, id=f"{path.name}:{row}")
            yield doc


def read_json(path: Path, stats: ReadStats, records_path: str = "", text_field: str = "text",
              source: str = "json") -> Iterator[dict]:
    """A JSON document holding a list of records (at ``records_path``, dotted, '' = the top level).
    Each record's ``text_field`` (dotted) is the text; a list of strings (e.g. ``paragraphs``) is joined by newlines.
    The file is parsed whole (JSON arrays cannot be streamed with the stdlib); use jsonl for big corpora."""
    fs = stats.file(str(path))
    raw = path.read_bytes()
    text_all = _decode(raw, str(path), None, stats)
    if text_all is None:
        return
    try:
        data = json.loads(text_all)
    except json.JSONDecodeError as e:
        stats.problem(str(path), e.lineno, "bad_json", f"malformed JSON ({e.msg})")
        return
    node = data
    for part in [p for p in records_path.split(".") if p]:
        if not isinstance(node, dict) or part not in node:
            raise DataError(f"{path}: records path {records_path!r} not found (missing {part!r})")
        node = node[part]
    if isinstance(node, dict):
        node = [node]
    if not isinstance(node, list):
        raise DataError(f"{path}: {records_path or 'top level'} is {type(node).__name__}, expected a list of records "
                        "(set records = \"dotted.path\" to the list)")
    for i, record in enumerate(node):
        if not isinstance(record, dict):
            stats.problem(str(path), None, "bad_json", f"record {i} is {type(record).__name__}, expected an object")
            continue
        doc = _record_to_doc(record, text_field, path, None, f"{path}[{i}]", i, f"{path.name}[{i}]",
                             f"record {i}: field {text_field!r} missing", source, fs, stats)
        if doc is not None:
            yield doc


def stdlib_files(exclude: list[str], seed: int, max_files: int = 0, max_bytes: int = 0) -> list[Path]:
    """``.py`` files of the running interpreter's standard library, deterministically sampled by seed
    (sorted, then shuffled) until ``max_files`` / ``max_bytes`` is reached."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = set(exclude)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    files.sort()
    random.Random(seed).shuffle(files)
    picked, total = [], 0
    for f in files:
        if max_files and len(picked) >= max_files:
            break
        if max_bytes and total >= 0.99 * max_bytes:
            break  # full enough: stop stat-ing the rest of the tree
        size = f.stat().st_size
        if max_bytes and total + size > max_bytes:
            continue
        picked.append(f)
        total += size
    return picked


def read_stdlib(stats: ReadStats, exclude: list[str], seed: int, max_files: int = 0, max_bytes: int = 0,
                source: str = "stdlib") -> Iterator[dict]:
    """Each standard-library module is one document: code, comments and docstrings as written."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files(exclude, seed, max_files, max_bytes):
        rel = str(path.relative_to(root))
        text = _decode(path.read_bytes(), rel, None, stats)
        if text is None:
            continue
        fs = stats.file(rel)
        if not text.strip():
            fs.empty += 1
            continue
        fs.docs += 1
        fs.bytes += len(text.encode("utf-8"))
        # The file type is known: route it to the code rules without guessing.
        yield {"text": text, "source": source, "id": rel, "kind": "code"}


def read_world(world, stats: ReadStats, source: str = "world") -> Iterator[dict]:
    fs = stats.file("<world>")
    for i, doc in enumerate(world.pretrain_docs()):
        text = doc.get("text")
        if not isinstance(text, str) or not text.strip():
            stats.problem("<world>", i, "missing_field", "world document without text")
            continue
        fs.docs += 1
        fs.bytes += len(text.encode("utf-8"))
        out = {k: v for k, v in doc.items() if k != "source"}
        out.update(source=source, id=f"world:{i}")
        yield out


def iter_source(spec: SourceConfig, stats: ReadStats, *, seed: int = 0, world=None) -> Iterator[dict]:
    """All documents of one source, streamed, honouring ``max_docs`` / ``max_bytes``."""
    label = spec.label
    if spec.kind == "stdlib":
        it = read_stdlib(stats, spec.exclude, seed, spec.max_files, spec.max_bytes, source=label)
    elif spec.kind == "world":
        if world is None:
            raise DataError("source kind 'world' needs the synthetic world (built by the data stage)")
        it = read_world(world, stats, source=label)
    else:
        suffix = {"txt": (".txt",), "jsonl": (".jsonl", ".json"), "parquet": (".parquet",), "json": (".json",)}[spec.kind]
        paths = expand_paths(spec.path, suffix)

        def chain():
            for p in paths:
                if spec.kind == "txt":
                    yield from read_txt(p, stats, spec.txt_split, source=label)
                elif spec.kind == "jsonl":
                    yield from read_jsonl(p, stats, spec.field, source=label)
                elif spec.kind == "parquet":
                    yield from read_parquet(p, stats, spec.field, source=label)
                else:
                    yield from read_json(p, stats, spec.records, spec.field, source=label)
        it = chain()
    n, nbytes = 0, 0
    for doc in it:
        if spec.max_docs and n >= spec.max_docs:
            break
        if spec.kind != "stdlib" and spec.max_bytes and nbytes >= spec.max_bytes:
            break
        n += 1
        nbytes += len(doc["text"].encode("utf-8"))
        yield doc

