"""Token shards and the prepared-data folder: what is written reads back, and every kind
of damage or a newer format is refused on load with a DataError that says what is wrong."""
import json
import os
import re
import struct

import numpy as np
import pytest

import data_prep
from data_prep import DataError
from data_prep.prepared.shards import HEADER_SIZE, SplitWriter, open_shard


def write_shard(folder, ids, dtype):
    """One shard in `folder` holding `ids`, written the way gpt-prepare writes them."""
    w = SplitWriter(folder, "s", total=len(ids), shard_tokens=max(len(ids), 1), dtype=dtype)
    w.create()
    w.write_at(0, ids)
    w.close()
    return w.paths[0]


@pytest.fixture
def prepared(tmp_path, prepare_data):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a small corpus for shard tests\n" * 50, encoding="utf-8")
    summary, data = prepare_data(corpus)
    return data.path


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_a_written_shard_reads_back_memory_mapped(tmp_path, dtype):
    ids = np.arange(1000, dtype=np.int64) % np.iinfo(dtype).max
    back = open_shard(write_shard(tmp_path, ids, dtype))
    assert back.dtype == dtype and np.array_equal(back, ids)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts this process's open files in /proc")
def test_a_range_across_many_shards_keeps_one_file_open(tmp_path):
    """Tiny shards (--shard-tokens 200 on a large corpus) are thousands: one range crosses
    them all, and holding each open ran out of the process's files."""
    ids = np.arange(500, dtype=np.uint16)
    w = SplitWriter(tmp_path, "train", total=500, shard_tokens=2, dtype=np.uint16)
    w.create()
    before = len(os.listdir("/proc/self/fd"))
    w.write_at(0, ids)
    assert len(os.listdir("/proc/self/fd")) <= before + 1
    w.close()
    assert np.array_equal(np.concatenate([open_shard(p) for p in w.paths]), ids)


def test_split_writer_fills_shards_from_disjoint_ranges_in_any_order(tmp_path):
    ids = np.arange(25, dtype=np.uint16)
    w = SplitWriter(tmp_path, "train", total=25, shard_tokens=10, dtype=np.uint16)
    w.create()
    w.write_at(13, ids[13:])
    w.write_at(0, ids[:13])
    w.close()
    shards = [open_shard(p) for p in w.paths]
    assert [len(s) for s in shards] == [10, 10, 5]
    assert np.array_equal(np.concatenate(shards), ids)


@pytest.mark.parametrize("offset, lengths", [(2, [3, 1, 0, 4]), (7, [3, 1, 0, 4]), (0, [1] * 2000)],
                         ids=["within a shard", "across a shard's end", "more parts than one call takes"])
def test_parts_are_written_end_to_end(tmp_path, offset, lengths):
    parts = [np.full(n, i, np.uint16) for i, n in enumerate(lengths, start=1)]
    joined = np.concatenate(parts)
    w = SplitWriter(tmp_path, "train", total=offset + len(joined), shard_tokens=10 if offset else 2000,
                    dtype=np.uint16)
    w.create()
    w.write_at(0, np.zeros(offset, np.uint16))
    assert w.write_parts(offset, parts) == len(joined)
    w.close()
    assert np.array_equal(np.concatenate([open_shard(p) for p in w.paths]), np.concatenate(([0] * offset, joined)))


def test_parts_in_another_byte_order_are_written_little_endian(tmp_path):
    # a big-endian machine's own uint16 arrays, as pass 2 would hand them over there
    w = SplitWriter(tmp_path, "train", total=4, shard_tokens=4, dtype=np.uint16)
    w.create()
    w.write_parts(0, [np.array([1, 2], ">u2"), np.array([3], ">u2")])
    w.write_at(3, np.array([4], ">u2"))
    w.close()
    assert open_shard(w.paths[0]).tolist() == [1, 2, 3, 4]


def test_an_empty_shard_opens_as_an_empty_array(tmp_path):
    assert len(open_shard(write_shard(tmp_path, np.zeros(0), np.uint8))) == 0


def test_corrupt_magic_is_refused_on_load(prepared):
    shard = prepared / "train_0000.bin"
    shard.write_bytes(b"NOTOKENS" + shard.read_bytes()[8:])
    with pytest.raises(DataError, match="not a token shard"):
        data_prep.load(prepared).split("train")


def test_a_truncated_shard_is_refused_on_load(prepared):
    shard = prepared / "train_0000.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        data_prep.load(prepared).split("train")


def test_a_shard_shorter_than_its_header_is_refused_on_load(prepared):
    shard = prepared / "val_0000.bin"
    shard.write_bytes(shard.read_bytes()[: HEADER_SIZE - 1])
    with pytest.raises(DataError, match="truncated"):
        data_prep.load(prepared).split("val")


def test_a_padded_shard_is_refused_on_load(prepared):
    shard = prepared / "train_0000.bin"
    shard.write_bytes(shard.read_bytes() + b"\0")
    with pytest.raises(DataError, match="longer than its header"):
        data_prep.load(prepared).split("train")


def test_a_newer_shard_format_version_is_refused_on_load(prepared):
    shard = prepared / "train_0000.bin"
    raw = bytearray(shard.read_bytes())
    raw[8:12] = struct.pack("<I", 2)
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="format version 2, newer"):
        data_prep.load(prepared).split("train")


def test_a_newer_data_format_version_in_meta_is_refused_on_load(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    meta["version"] = 99
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError,
                       match="data folder .* has format version 99, newer than this toolkit reads .*upgrade"):
        data_prep.load(prepared)


def test_corrupt_meta_json_is_refused_on_load(prepared):
    (prepared / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        data_prep.load(prepared)


def test_a_split_whose_shards_hold_fewer_tokens_than_meta_says_is_refused(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    meta["splits"]["train"]["tokens"] += 1
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="should hold"):
        data_prep.load(prepared).split("train")


def test_loading_a_folder_that_was_never_prepared_says_so(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data_prep.load(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no meta.json"):
        data_prep.load(tmp_path)


def test_asking_for_an_unknown_split_names_the_ones_there_are(prepared):
    with pytest.raises(DataError, match="it has train, val"):
        data_prep.load(prepared).split("test")


@pytest.mark.parametrize("damage", [
    lambda m: m.pop("splits"),
    lambda m: m["splits"].pop("val"),
    lambda m: m["splits"]["train"].pop("shards"),
    lambda m: m["splits"]["train"].update(tokens="many"),
    lambda m: m["splits"]["train"].update(shards=[1]),
])
def test_a_meta_file_missing_what_training_reads_is_one_clear_error(prepared, damage):
    meta = json.loads((prepared / "meta.json").read_text())
    damage(meta)
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="meta.json is incomplete .*prepare the data again"):
        data_prep.load(prepared)


@pytest.mark.parametrize("meta,message", [
    ("[1, 2]", "is corrupt (not a JSON object)"),
    ('{"format": "chargpt-data", "version": "two"}', "format version that is no number ('two')"),
])
def test_a_meta_file_of_the_wrong_shape_is_one_clear_error(prepared, meta, message):
    meta = meta.replace("chargpt-data", json.loads((prepared / "meta.json").read_text())["format"])
    (prepared / "meta.json").write_text(meta)
    with pytest.raises(DataError, match=re.escape(message)):
        data_prep.load(prepared)
