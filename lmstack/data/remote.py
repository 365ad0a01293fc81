"""Data sources behind fsspec URLs (``s3://bucket/fineweb/*.parquet``, ``gs://``, ``hf://``, ``memory://``).

A ``[[data.sources]]`` path that contains ``://`` is expanded with fsspec (a file, every matching
file under a "directory" prefix, or a glob) into :class:`RemoteFile` objects, which offer the part
of ``pathlib.Path`` the readers use. Remote protocols need their fsspec backend installed (s3fs,
gcsfs, ...) and the usual credentials in the environment; nothing here stores any.
"""

from __future__ import annotations

from typing import IO


def is_url(path: str) -> bool:
    return "://" in str(path)


class RemoteFile:
    """One file of an fsspec filesystem, as the readers see it: ``name``, ``read_bytes()``, ``open()``."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.fs.unstrip_protocol(self.path)

    def __repr__(self) -> str:
        return f"RemoteFile({str(self)!r})"

    def open(self, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(self.path, mode)

    def read_bytes(self) -> bytes:
        with self.open("rb") as f:
            return f.read()


def expand_url(url: str, suffixes: tuple[str, ...]) -> list[RemoteFile]:
    """A file, every file with one of ``suffixes`` under a prefix (sorted), or a glob. Raises
    ValueError with an actionable message (sources.py turns it into a DataError)."""
    try:
        import fsspec
    except ImportError as e:
        raise ValueError(f"data source path {url!r} is a URL: install fsspec (pip install 'lmstack[ray]') "
                         "and the backend for its protocol (s3fs, gcsfs, ...)") from e
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise ValueError(f"data source path {url!r}: {e}") from None
    if any(ch in root for ch in "*?["):
        files = sorted(fs.glob(root))
    elif fs.isdir(root):
        files = sorted(p for p in fs.find(root) if p.endswith(suffixes))
    elif fs.exists(root):
        files = [root]
    else:
        files = []
    if not files:
        raise ValueError(f"data source path {url!r} matches no file")
    return [RemoteFile(fs, p) for p in files]


def open_binary(path) -> IO[bytes]:
    return path.open("rb") if isinstance(path, RemoteFile) else open(path, "rb")
