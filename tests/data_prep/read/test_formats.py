"""Input formats, detected from content: records through `datasets` (JSON lines, JSON,
Parquet, save_to_disk folders) and compressed or archived text."""
import bz2
import gzip
import importlib.util
import io
import json
import lzma
import tarfile

import pytest

from data_prep import DataError
from data_prep.read.streams import SourceError
from tests.helpers import tar_bytes

RECORDS = [{"id": i, "text": f"record {i}: some text with ünïcödé 🙂\n" * (1 + i % 3), "title": f"title {i}"}
           for i in range(120)]
TEXTS = sorted(r["text"] for r in RECORDS)  # enough records to split by document
# `datasets` is a declared dependency, so every install has it; a machine set up by hand
# without it (its absence is one clear line, tested in test_prepare_cli.py) skips these
needs_datasets = pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="no datasets package here")


def all_documents(data, read_documents):
    return sorted(read_documents(data, "train") + read_documents(data, "val"))


def test_json_lines_records_are_one_document_each(tmp_path, prepare_data, read_documents):
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    _, data = prepare_data(path)
    assert all_documents(data, read_documents) == TEXTS
    assert sum(data.meta["splits"][s]["documents"] for s in ("train", "val")) == len(RECORDS)


@needs_datasets
def test_a_json_file_of_records_is_read(tmp_path, prepare_data, read_documents):
    path = tmp_path / "records.json"
    path.write_text(json.dumps(RECORDS))
    _, data = prepare_data(path)
    assert all_documents(data, read_documents) == TEXTS


@needs_datasets
def test_a_parquet_file_is_read(tmp_path, prepare_data, read_documents):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "records.parquet")
    _, data = prepare_data(tmp_path / "records.parquet")
    assert all_documents(data, read_documents) == TEXTS


@needs_datasets
def test_a_saved_dataset_dict_folder_is_read_split_by_split(tmp_path, prepare_data, read_documents):
    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(RECORDS[:20]),
        "test": datasets.Dataset.from_list(RECORDS[20:]),
    }).save_to_disk(str(folder))
    _, data = prepare_data(folder)
    assert all_documents(data, read_documents) == TEXTS


@needs_datasets
def test_a_saved_dataset_inside_a_searched_folder_is_found(tmp_path, prepare_data, read_documents):
    import datasets

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "corpus" / "saved"))
    _, data = prepare_data(tmp_path / "corpus")
    assert all_documents(data, read_documents) == TEXTS


def test_text_field_chooses_the_column(tmp_path, prepare_data, read_documents):
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    _, data = prepare_data(path, text_field="title")
    assert all_documents(data, read_documents) == sorted(r["title"] for r in RECORDS)


@pytest.mark.parametrize("name", ["records.jsonl", pytest.param("records.parquet", marks=needs_datasets)])
def test_a_missing_text_field_is_an_error_naming_the_fields(tmp_path, prepare_data, name):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(RECORDS), path)
    with pytest.raises(DataError, match=r"no field 'body' \(fields: id, text, title\)"):
        prepare_data(path, text_field="body")


COMPRESSORS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_compressed_text_is_decompressed(tmp_path, prepare_data, read_documents, kind):
    text = "compressed text, line after line 東京🙂\n" * 200
    (tmp_path / f"doc.txt.{kind}").write_bytes(COMPRESSORS[kind](text.encode()))
    _, data = prepare_data(tmp_path / f"doc.txt.{kind}")
    assert "".join(read_documents(data, "train") + read_documents(data, "val")) == text


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_compression_is_detected_by_content_not_by_name(tmp_path, prepare_data, read_documents, kind):
    text = "this file is named .txt but holds compressed bytes\n" * 100
    (tmp_path / "misleading.txt").write_bytes(COMPRESSORS[kind](text.encode()))
    _, data = prepare_data(tmp_path / "misleading.txt")
    assert "".join(read_documents(data, "train") + read_documents(data, "val")) == text


def test_compressed_json_lines_are_read_as_records(tmp_path, prepare_data, read_documents):
    path = tmp_path / "records.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in RECORDS).encode()))
    _, data = prepare_data(path)
    assert all_documents(data, read_documents) == TEXTS


def test_a_text_file_named_json_is_read_as_text(tmp_path, prepare_data, read_documents):
    text = "not json at all, just prose\n" * 50
    (tmp_path / "notes.json").write_text(text)
    _, data = prepare_data(tmp_path / "notes.json")
    assert "".join(read_documents(data, "train") + read_documents(data, "val")) == text


@pytest.mark.parametrize("compress", ["none", "gz", "xz"])
def test_a_tar_of_text_files_gives_one_document_per_member(tmp_path, prepare_data, read_documents, compress):
    texts = [f"member {i} text\n" * (5 + i) for i in range(6)]
    raw = tar_bytes([(f"dir/m{i}.txt", t.encode()) for i, t in enumerate(texts)])
    (tmp_path / "docs.tar").write_bytes(raw if compress == "none" else COMPRESSORS[compress](raw))
    _, data = prepare_data(tmp_path / "docs.tar")
    ids_per_split = [data.meta["splits"][s]["documents"] for s in ("train", "val")]
    assert ids_per_split[0] == 6  # under 100 documents: each is split inside its text
    train, val = read_documents(data, "train"), read_documents(data, "val")
    assert [t + v for t, v in zip(train, val)] == texts


def test_tar_members_with_long_names_are_read(tmp_path, prepare_data, read_documents):
    name = "a/" + "very-long-directory-name/" * 8 + "member.txt"
    (tmp_path / "long.tar").write_bytes(tar_bytes([(name, b"long named member text\n" * 20)]))
    _, data = prepare_data(tmp_path / "long.tar")
    assert "".join(read_documents(data, "train") + read_documents(data, "val")) == "long named member text\n" * 20


def test_a_compressed_outer_tar_of_archives_is_read(tmp_path, owt_tar, owt_texts, prepare_data, whole_documents):
    (tmp_path / "openwebtext.tar.xz").write_bytes(lzma.compress(owt_tar.read_bytes()))
    _, data = prepare_data(tmp_path / "openwebtext.tar.xz")
    assert whole_documents(data) == sorted(owt_texts)


def test_pax_archives_with_long_unicode_names_and_folder_entries_yield_their_files(tmp_path, prepare_data,
                                                                                    whole_documents):
    texts = [f"pax member {i} ünïcode text\n" * 10 for i in range(3)]
    raw = tar_bytes([(f"dïr/名前-{i}-" + "x" * 120 + ".txt", t.encode()) for i, t in enumerate(texts)],
                    format=tarfile.PAX_FORMAT, folders=("dïr",))
    (tmp_path / "pax.tar").write_bytes(raw)
    _, data = prepare_data(tmp_path / "pax.tar")
    assert whole_documents(data) == sorted(texts)


def test_text_that_starts_like_bzip2_is_text(tmp_path, prepare_data, whole_documents):
    texts = ["BZh is how a bzip2 stream starts; this is text.\n", "BZhang Wei wrote this member.\n" * 3]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "plain.txt").write_text(texts[0])
    (tmp_path / "corpus" / "docs.tar").write_bytes(tar_bytes([("m.txt", texts[1].encode())]))
    (tmp_path / "corpus" / "real.txt.bz2").write_bytes(bz2.compress(b"real bzip2 text\n" * 5))
    _, data = prepare_data(tmp_path / "corpus")
    assert whole_documents(data) == sorted([*texts, "real bzip2 text\n" * 5])


def test_links_inside_a_tar_are_skipped_members_named_and_counted(tmp_path, prepare_data, whole_documents):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        text = b"the linked text\n" * 40
        info = tarfile.TarInfo("a.txt")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        far = "d/" + "x" * 120 + "/target.txt"  # past the header's 100 bytes: a pax record holds it
        for name, kind, target in (("soft.txt", tarfile.SYMTYPE, "a.txt"), ("hard.txt", tarfile.LNKTYPE, "a.txt"),
                                   ("out.txt", tarfile.SYMTYPE, "/etc/passwd"), ("far.txt", tarfile.SYMTYPE, far)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    (tmp_path / "links.tar").write_bytes(buf.getvalue())
    summary, data = prepare_data(tmp_path / "links.tar")
    assert whole_documents(data) == [text.decode()]  # read once, where the archive stores it
    assert data.meta["skipped"]["members"] == 4
    said = "\n".join(summary.warnings)
    for name, what in (("soft.txt", "a symbolic link to a.txt"), ("hard.txt", "a hard link to a.txt"),
                       ("out.txt", "a symbolic link to /etc/passwd"), ("far.txt", f"a symbolic link to {far}")):
        assert f"links.tar::{name}: {what}, not followed" in said, said


def test_reading_only_the_head_of_each_tar_member_still_walks_the_whole_archive():
    import io

    from data_prep.read.tar import iter_tar

    raw = tar_bytes([("a.bin", b"A" * 3000), ("b.txt", b"short"), ("c.bin", b"C" * 70000)], folders=("d",))
    assert list(iter_tar(io.BytesIO(raw), head=512)) == [("a.bin", b"A" * 512), ("b.txt", b"short"),
                                                         ("c.bin", b"C" * 512)]
    assert list(iter_tar(io.BytesIO(raw))) == [("a.bin", b"A" * 3000), ("b.txt", b"short"), ("c.bin", b"C" * 70000)]


def test_a_peeked_stream_gives_back_every_byte_once():
    import io

    from data_prep.read.streams import Peekable

    s = Peekable(io.BytesIO(bytes(range(200))))
    assert s.peek(10) == bytes(range(10))
    assert s.read(4) == bytes(range(4)) and s.read(10) == bytes(range(4, 14))
    assert s.read(50) == bytes(range(14, 64))
    assert s.peek(3) == bytes(range(64, 67))
    assert s.read() == bytes(range(64, 200)) and s.read(5) == b""


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1000])
def test_utf8_in_pieces_is_replaced_and_counted_exactly_as_pythons_replace_handler(piece):
    from data_prep.read.utf8 import DecodeStats, Utf8Decoder

    raw = "ok é 東京 🙂 ".encode() + b"caf\xe9 \xff\xfe \xf0\x9f\x99 \xed\xa0\x80 end \xe6\x9d"
    stats = DecodeStats()
    decoder = Utf8Decoder("x", stats, strict=False)
    text = ("".join(decoder.decode(raw[i : i + piece]) for i in range(0, len(raw), piece))
            + decoder.decode(b"", final=True))
    assert text == raw.decode("utf-8", "replace")
    assert stats.invalid_utf8 == text.count("\ufffd")


def test_strict_utf8_names_the_byte_of_the_first_invalid_sequence():
    from data_prep.read.streams import SourceError
    from data_prep.read.utf8 import DecodeStats, Utf8Decoder

    decoder = Utf8Decoder("doc.txt", DecodeStats(), strict=True)
    decoder.decode(b"0123456789")
    with pytest.raises(SourceError, match=r"doc.txt: invalid UTF-8 \(invalid start byte at byte 12\)"):
        decoder.decode(b"ab\xffcd")


def test_malformed_json_lines_are_skipped_and_counted_and_the_rest_read(tmp_path, prepare_data, read_documents):
    lines = [json.dumps(r) for r in RECORDS]
    lines[3] = '{"text": "unterminated'
    lines[10] = "[1, 2, 3]"
    lines.insert(20, "")  # a blank line is no record, and no error either
    (tmp_path / "r.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "bad \xff utf-8"}\n')
    summary, data = prepare_data(tmp_path / "r.jsonl")
    assert data.meta["skipped"]["bad_records"] == 2  # the bad byte's record is kept, the byte replaced
    kept = [r["text"] for i, r in enumerate(RECORDS) if i not in (3, 10)] + ["bad \ufffd utf-8"]
    assert all_documents(data, read_documents) == sorted(kept)
    assert [w.split(" (")[0] for w in summary.warnings] == ["skipped 2 record(s) without text"]


def test_a_json_lines_file_whose_first_line_is_bad_is_still_read_as_records(tmp_path, prepare_data, read_documents):
    (tmp_path / "r.jsonl").write_text("not json\n" + "".join(json.dumps(r) + "\n" for r in RECORDS))
    _, data = prepare_data(tmp_path / "r.jsonl")
    assert data.meta["skipped"]["bad_records"] == 1
    assert all_documents(data, read_documents) == sorted(r["text"] for r in RECORDS)


def test_records_without_text_are_skipped_and_counted_and_empty_ones_are_no_documents(tmp_path, prepare_data,
                                                                                      read_documents):
    odd = ['{"other": "x"}', '{"text": 5}', '{"text": ["a"]}', '{"text": null}', '{"text": ""}']
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + "\n".join(odd) + "\n")
    summary, data = prepare_data(tmp_path / "r.jsonl")
    assert data.meta["skipped"]["bad_records"] == 3  # no field, a number, an array
    assert all_documents(data, read_documents) == sorted(r["text"] for r in RECORDS)
    with pytest.raises(DataError, match=r"r.jsonl: line \d+ has no text in 'text' \(no such field\); without --strict"):
        prepare_data(tmp_path / "r.jsonl", strict=True)


def test_a_json_arrays_records_without_text_are_skipped_and_counted_and_its_text_kept_as_it_is(tmp_path,
                                                                                              prepare_data,
                                                                                              read_documents):
    (tmp_path / "r.json").write_text(json.dumps([*RECORDS, {"text": 5}, {"other": "x"}, ["a"]]))
    _, data = prepare_data(tmp_path / "r.json")
    assert data.meta["skipped"]["bad_records"] == 3
    assert all_documents(data, read_documents) == TEXTS  # no quotes added around the text
    with pytest.raises(DataError, match=r"r.json: record 121 has no text in 'text' \(a JSON number\)"):
        prepare_data(tmp_path / "r.json", strict=True)


@pytest.mark.parametrize("name, content", [
    ("array.json", json.dumps(RECORDS)), ("lines.jsonl", "".join(json.dumps(r) + "\n" for r in RECORDS)),
    ("lines.json", "".join(json.dumps(r) + "\n" for r in RECORDS)), ("one.jsonl", json.dumps(RECORDS[0]))])
def test_records_after_a_byte_order_mark_or_as_json_lines_in_a_json_file_are_records(tmp_path, prepare_data,
                                                                                       read_documents, name, content):
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + content.encode())
    _, data = prepare_data(tmp_path / name)
    if name == "one.jsonl":  # one document, split inside its text: train's part, then val's
        assert "".join(read_documents(data, "train") + read_documents(data, "val")) == RECORDS[0]["text"]
    else:
        assert all_documents(data, read_documents) == TEXTS


@needs_datasets
def test_parquet_values_that_are_not_text_are_skipped_and_counted(tmp_path, prepare_data, read_documents):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([1, 2, 3])}), tmp_path / "numbers.parquet")
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "records.parquet")
    _, data = prepare_data(tmp_path)
    assert data.meta["skipped"]["bad_records"] == 3
    assert all_documents(data, read_documents) == TEXTS
    with pytest.raises(DataError, match=r"numbers.parquet: record 1 has no text in 'text' \(a int\)"):
        prepare_data(tmp_path, strict=True)


def test_a_json_lines_file_whose_first_line_is_an_array_is_still_read_line_by_line(tmp_path, prepare_data,
                                                                                     read_documents):
    (tmp_path / "r.jsonl").write_text('["id", "text"]\n' + "".join(json.dumps(r) + "\n" for r in RECORDS))
    _, data = prepare_data(tmp_path / "r.jsonl")
    assert data.meta["skipped"]["bad_records"] == 1
    assert all_documents(data, read_documents) == TEXTS


def test_a_pretty_printed_json_object_is_not_read_as_json_lines(tmp_path, prepare_data):
    (tmp_path / "obj.json").write_text('{"version": 1,\n "data": [\n  {"text": "a"},\n  {"text": "b"}\n ]}\n')
    with pytest.raises(DataError, match="no text found"):  # not one record, found on a line of its own
        prepare_data(tmp_path / "obj.json")


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_a_json_array_is_read_element_by_element_whatever_the_chunks(monkeypatch, chunk):
    from data_prep.read import records

    monkeypatch.setattr(records, "CHUNK_BYTES", chunk)
    value = [RECORDS[0], 12345, 'a "quoted" ü', [1, [2]], None, True, -0.5e10, {"text": "x" * 50}]
    raw = "\ufeff [ " + " ,\n ".join(json.dumps(v) for v in value) + " ]\n"
    assert list(records.array_elements(io.BytesIO(raw.encode()), "a.json")) == value
    for bad in ("[1, 2", "[1 2]", "{}", "[1,]"):
        with pytest.raises(SourceError, match="a.json: not valid JSON"):
            list(records.array_elements(io.BytesIO(bad.encode()), "a.json"))


@pytest.mark.parametrize("shape", ["lines", "array"])
def test_invalid_utf8_inside_json_is_replaced_and_counted_as_in_text_files(tmp_path, prepare_data, read_documents,
                                                                           shape):
    records = [{"text": f"record {i} with a bad byte X here\n" if i == 7 else f"record {i}\n"} for i in range(120)]
    raw = ("".join(json.dumps(r) + "\n" for r in records) if shape == "lines" else json.dumps(records)).encode()
    path = tmp_path / ("r.jsonl" if shape == "lines" else "r.json")
    path.write_bytes(raw.replace(b"X", b"\xff"))
    _, data = prepare_data(path)
    texts = sorted(read_documents(data, "train") + read_documents(data, "val"))
    assert len(texts) == 120 and "record 7 with a bad byte \ufffd here\n" in texts
    assert data.meta["skipped"]["invalid_utf8_replaced"] == 1 and "bad_records" not in data.meta["skipped"]
    with pytest.raises(DataError, match="UTF-8"):
        prepare_data(path, strict=True)


def test_a_malformed_json_line_fails_under_strict_naming_the_line(tmp_path, prepare_data):
    (tmp_path / "r.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"r.jsonl: line 2 is not a JSON record .*--strict"):
        prepare_data(tmp_path / "r.jsonl", strict=True)


def test_a_corpus_without_bad_records_has_no_bad_records_entry_in_meta(tmp_path, prepare_data):
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    _, data = prepare_data(tmp_path / "r.jsonl")
    assert data.meta["skipped"] == {"files": 0, "members": 0, "invalid_utf8_replaced": 0}


@pytest.mark.parametrize("fill", [0x00, 0x7F, 0xFF])
def test_a_tar_header_checksum_is_the_sum_of_its_bytes_however_high(fill):
    # 0xFF throughout: the largest sum a header can have, where a sum taken modulo anything
    # short of 512 x 255 would wrap
    from data_prep.read.tar import _checksum_ok

    header = bytearray([fill] * 512)
    header[148:156] = b"%07o\0" % (sum(header[:148]) + sum(header[156:]) + 8 * 32)
    assert _checksum_ok(bytes(header))
    header[300] ^= 1
    assert not _checksum_ok(bytes(header))
