"""Readers: the shared corpora, parquet, and bad input (counted with file:line, fatal with strict)."""

import json
from pathlib import Path

import pytest

from lmstack import DATA_DIR
from lmstack.data.sources import (DataError, ReadStats, SourceConfig, iter_source, read_jsonl, read_stdlib,
                                  stdlib_files)



def need(path: Path) -> Path:
    return path


def test_nested_json_paragraphs_tang300():
    path = DATA_DIR / "zh" / "tang300_original.json"
    stats = ReadStats()
    docs = list(iter_source(SourceConfig(kind="json", path=str(path), field="paragraphs"), stats))
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert len(docs) == len(raw) == stats.totals()["docs"]
    assert docs[0]["text"] == "\n".join(raw[0]["paragraphs"])
    assert docs[0]["author"] == raw[0]["author"] and docs[0]["source"] == "tang300_original"
    with pytest.raises(DataError, match="records path 'poems' not found"):
        list(iter_source(SourceConfig(kind="json", path=str(path), field="paragraphs", records="poems"), ReadStats()))


def test_nested_records_and_dotted_field(tmp_path):
    path = tmp_path / "nested.json"
    path.write_text(json.dumps({"data": {"items": [{"body": {"text": "hello there"}, "likes": 3},
                                                   {"body": {}}, "not a record"]}}))
    stats = ReadStats()
    docs = list(iter_source(SourceConfig(kind="json", path=str(path), records="data.items", field="body.text"), stats))
    assert [d["text"] for d in docs] == ["hello there"] and docs[0]["likes"] == 3
    assert stats.totals()["missing_field"] == 1 and stats.totals()["bad_json"] == 1


def test_jsonl_poetry_streams_with_cap():
    path = DATA_DIR / "zh" / "poetry.jsonl"
    stats = ReadStats()
    docs = list(iter_source(SourceConfig(kind="jsonl", path=str(path), max_docs=500, name="poems"), stats))
    assert len(docs) == 500 and docs[0]["source"] == "poems"
    assert docs[0]["id"] == "poetry.jsonl:1" and "title" in docs[0]


def test_txt_blank_line_blocks_and_whole_file(tmp_path):
    path = DATA_DIR / "en" / "tinyshakespeare.txt"
    docs = list(iter_source(SourceConfig(kind="txt", path=str(path), max_docs=50), ReadStats()))
    assert len(docs) == 50 and docs[0]["text"].startswith("First Citizen:")
    assert all("\n\n" not in d["text"] for d in docs)
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "b.txt").write_text("three")
    whole = list(iter_source(SourceConfig(kind="txt", path=str(tmp_path), txt_split="file"), ReadStats()))
    assert [d["text"] for d in whole] == ["one\n\ntwo", "three"]


def test_bad_jsonl_lines_counted_and_reported(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"text": "good one"}).encode(),
        b'{"text": "broken',                                    # line 2: malformed JSON
        json.dumps({"text": "good two"}).encode(),
        b'{"text": "bad byte \xff\xfe here"}',                  # line 4: invalid UTF-8
        json.dumps({"body": "no text field"}).encode(),        # line 5: missing field
        json.dumps({"text": 42}).encode(),                     # line 6: wrong type
        b"",
        json.dumps({"text": "good three", "likes": 7}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = ReadStats()
    docs = list(read_jsonl(path, stats))
    assert [d["text"] for d in docs] == ["good one", "good two", "good three"]
    assert docs[2]["likes"] == 7
    fs = stats.files[str(path)]
    assert (fs.docs, fs.bad_json, fs.bad_utf8, fs.missing_field) == (3, 1, 1, 2)
    assert stats.examples[0].startswith(f"{path}:2: malformed JSON")
    assert stats.examples[1].startswith(f"{path}:4: invalid UTF-8")
    assert f"{path}:5: field 'text' missing" in stats.examples[2]
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON.*strict=true"):
        list(read_jsonl(path, ReadStats(strict=True)))


def test_parquet_streamed_by_row_group(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"text": ["doc one", None, "doc three", "doc four"], "score": [1.0, 2.0, 3.0, 4.0]})
    path = tmp_path / "fw.parquet"
    pq.write_table(table, path, row_group_size=2)
    stats = ReadStats()
    docs = list(iter_source(SourceConfig(kind="parquet", path=str(path)), stats))
    assert [d["text"] for d in docs] == ["doc one", "doc three", "doc four"]
    assert docs[1]["score"] == 3.0 and docs[1]["id"] == "fw.parquet:3"
    assert stats.totals()["missing_field"] == 1
    with pytest.raises(DataError, match="column 'content' missing"):
        list(iter_source(SourceConfig(kind="parquet", path=str(path), field="content"), ReadStats()))


def test_stdlib_reader_caps_and_is_deterministic():
    files_a = stdlib_files(["test", "tests"], seed=5, max_bytes=200_000)
    files_b = stdlib_files(["test", "tests"], seed=5, max_bytes=200_000)
    assert files_a == files_b and files_a
    assert sum(f.stat().st_size for f in files_a) <= 200_000
    assert all("test" not in f.parts for f in files_a)
    docs = list(read_stdlib(ReadStats(), ["test", "tests"], seed=5, max_files=3))
    assert 1 <= len(docs) <= 3 and all(d["kind"] == "code" for d in docs)


def test_source_config_errors():
    with pytest.raises(ValueError, match="not one of"):
        SourceConfig(kind="csv", path="x")
    with pytest.raises(ValueError, match="needs a path"):
        SourceConfig(kind="jsonl")
    with pytest.raises(DataError, match="does not exist"):
        list(iter_source(SourceConfig(kind="jsonl", path="/no/such/file.jsonl"), ReadStats()))
