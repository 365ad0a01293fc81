"""Data sources behind fsspec URLs read exactly like the same files on disk (fsspec's in-memory filesystem
stands in for object storage)."""

import json

import pytest

from lmstack.data.sources import DataError, ReadStats, SourceConfig, iter_source

fsspec = pytest.importorskip("fsspec")

DOCS = [f"Document number {i} talks about rivers, hills and the weather in spring. " * 3 for i in range(12)]


@pytest.fixture
def corpus(tmp_path):
    """The same jsonl, txt and parquet files on disk and under memory://corpus_<test>/."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs = fsspec.filesystem("memory")
    root = f"/corpus_{tmp_path.name}"
    files = {
        "a.jsonl": "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(DOCS[:6])).encode(),
        "b.jsonl": ("".join(json.dumps({"text": t}) + "\n" for t in DOCS[6:]) + '{"text": "trunc\n').encode(),
        "c.txt": "\n\n".join(DOCS[:3]).encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with fs.open(f"{root}/{name}", "wb") as f:
            f.write(data)
    table = pa.table({"text": DOCS, "score": list(range(len(DOCS)))})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=5)
    with fs.open(f"{root}/d.parquet", "wb") as f:
        pq.write_table(table, f, row_group_size=5)
    yield tmp_path, f"memory://{root}"
    fs.rm(root, recursive=True)


def read(kind: str, path: str) -> tuple[list[dict], dict]:
    stats = ReadStats()
    docs = list(iter_source(SourceConfig(kind=kind, path=path, name="src"), stats))
    counts = {"docs": sum(f.docs for f in stats.files.values()), "bad_json": sum(f.bad_json for f in stats.files.values())}
    return docs, counts


@pytest.mark.parametrize("kind,local,remote", [
    ("jsonl", "", ""),                       # the whole directory
    ("jsonl", "*.jsonl", "*.jsonl"),         # a glob
    ("txt", "c.txt", "c.txt"),               # one file
    ("parquet", "d.parquet", "d.parquet"),
])
def test_url_sources_read_like_local_files(corpus, kind, local, remote):
    disk, url = corpus
    want, want_counts = read(kind, str(disk / local) if local else str(disk))
    got, got_counts = read(kind, f"{url}/{remote}" if remote else url)
    assert got == want and got_counts == want_counts
    assert len(got) >= 3
    if kind == "jsonl" and not local:
        assert got_counts["bad_json"] == 1     # the truncated line is counted, as for a local file


def test_missing_url_is_an_actionable_error(corpus):
    _, url = corpus
    with pytest.raises(DataError, match="matches no file"):
        read("jsonl", f"{url}/nope/*.jsonl")
    with pytest.raises(DataError, match="notaprotocol"):
        read("jsonl", "notaprotocol://bucket/x.jsonl")
