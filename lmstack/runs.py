"""Run directories: the interface between stages (see DESIGN.md).

A run directory holds ``manifest.json`` plus every artifact the stages write. All writes
go through the atomic helpers below, so an interrupted process never leaves a half-written
file where a later stage (or a resume) would read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # The target is untouched; only the temp file has to go.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def iter_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a jsonl file, streamed; a malformed
    line raises ``error`` with a message that names the file and the line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield lineno, value


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: str | os.PathLike) -> dict:
    """Size and sha256 of a file, or of every file under a directory (by relative path; hidden
    names, such as half-written ``.tmp-*`` files, are left out)."""
    path = Path(path)
    if path.is_file():
        return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    h, total = hashlib.sha256(), 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        total += f.stat().st_size
        h.update(f"{rel.as_posix()}\0{file_sha256(f)}\n".encode())
    return {"bytes": total, "sha256": h.hexdigest()}


class RunDir:
    """A run directory ``runs/<name>/`` and its ``manifest.json``.

    The manifest records, per stage: status (running / done / failed), the config used,
    start and end times, metrics and artifact paths. It is rewritten atomically on every change.
    """

    MANIFEST = "manifest.json"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        manifest_path = self.path / self.MANIFEST
        if manifest_path.exists():
            self.manifest = read_json(manifest_path)
        else:
            self.manifest = {"name": self.path.name, "created": _now(), "stages": {}}

    @property
    def name(self) -> str:
        return self.path.name

    def sub(self, name: str) -> Path:
        """Path of a sub-directory of the run, created if missing."""
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def save_manifest(self) -> None:
        atomic_write_json(self.path / self.MANIFEST, self.manifest)

    def stage(self, name: str) -> dict:
        return self.manifest["stages"].get(name, {})

    def stage_done(self, name: str) -> bool:
        return self.stage(name).get("status") == "done"

    def mark_started(self, name: str, config: dict) -> None:
        entry = self.manifest["stages"].setdefault(name, {})
        attempts = entry.get("attempts", 0) + 1
        entry.clear()
        entry.update(status="running", config=config, started=_now(), attempts=attempts)
        self.save_manifest()

    def mark_finished(self, name: str, *, seconds: float, metrics: dict, artifacts: dict) -> None:
        entry = self.manifest["stages"][name]
        checks = {key: fingerprint(self.path / rel) for key, rel in artifacts.items() if (self.path / rel).exists()}
        entry.update(status="done", ended=_now(), seconds=round(seconds, 3),
                     metrics=metrics, artifacts=artifacts, checks=checks)
        self.save_manifest()

    def verify_stage(self, name: str) -> list[str]:
        """What no longer matches the artifacts a finished stage recorded (empty: all intact)."""
        entry = self.stage(name)
        problems = []
        for key, expected in entry.get("checks", {}).items():
            rel = entry["artifacts"][key]
            path = self.path / rel
            if not path.exists():
                problems.append(f"{rel} is missing")
                continue
            now = fingerprint(path)
            if now != expected:
                problems.append(f"{rel} changed ({now['bytes']:,} bytes, expected {expected['bytes']:,}; sha256 differs)"
                                if now["sha256"] != expected["sha256"] else f"{rel} changed")
        return problems

    def mark_failed(self, name: str, *, seconds: float, error: str) -> None:
        entry = self.manifest["stages"].setdefault(name, {})
        entry.update(status="failed", ended=_now(), seconds=round(seconds, 3), error=error)
        self.save_manifest()

    def append_metrics(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (append is atomic enough for one small line)."""
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
