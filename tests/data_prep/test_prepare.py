"""prepare(): corpus -> vocabulary -> train/val shards, checked by decoding what it wrote."""
import errno
import json
import os
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep import prepare as prepare_module
from data_prep.errors import DataError
from data_prep.passes import codepoint_files as scratch_module
from data_prep.passes import pass2_char
from data_prep.read import utf8 as decode
from plumbing.output_folder import beside_stem
from tests.helpers import dead_pid, write_corpus

UNICODE = (
    "Plain ASCII, then accents: naïve café Zürich; CJK 東京 한국어; emoji 🙂🎉👩‍👩‍👧; "
    "combining e\u0301 a\u0308; astral \U0001d11e \U00020000 \U0010fffd; "
    "Windows line\r\nend, tab\tseparated, a lone \r and\n"
)


def test_unicode_text_round_trips_losslessly_through_byte_fallback(tmp_path, prepare_data, read_documents):
    text = UNICODE * 20 + "".join(chr(c) for c in range(0x3041, 0x3097))  # many rare characters
    (tmp_path / "unicode.txt").write_text(text, encoding="utf-8", newline="")
    _, data = prepare_data(tmp_path / "unicode.txt", max_vocab=300)
    assert data.meta["coverage"]["byte_fallback"]
    assert len(data.tokenizer.chars) < len(set(text))  # some characters go through byte tokens
    assert data.meta["vocab_size"] == 300
    (train,), (val,) = read_documents(data, "train"), read_documents(data, "val")
    assert train + val == text


def test_text_read_in_many_chunks_and_batches_round_trips(tmp_path, prepare_data, read_documents, monkeypatch):
    # chunks of 1000 bytes split multi-byte characters; batches of 700 characters mix
    # 8-, 16- and 32-bit scratch storage
    monkeypatch.setattr(decode, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(scratch_module, "BATCH_CHARS", 700)
    text = (UNICODE + "plain ascii filler line without astral characters\n" * 20) * 30
    (tmp_path / "big.txt").write_text(text, encoding="utf-8", newline="")
    _, data = prepare_data(tmp_path / "big.txt", max_vocab=280)
    (train,), (val,) = read_documents(data, "train"), read_documents(data, "val")
    assert train + val == text


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
@pytest.mark.parametrize("n", [100, (1 << 16) + 1, 1 << 18])  # one call, a chunk and one more, whole chunks
def test_code_points_counted_in_chunks_match_bincount(n, dtype):
    cps = np.random.default_rng(n).integers(0, 256 if dtype == np.uint8 else 3000, n).astype(dtype)
    if dtype == np.uint32:
        cps[n // 2] = 0x1F642  # one wide character, in one chunk: the others' tables stay short
    counts, top = scratch_module.count(cps), int(cps.max()) + 1
    assert np.array_equal(counts[:top], np.bincount(cps)) and not counts[top:].any()


PASS_2_CASES = {  # (documents, options, what meta.json must show the case reached)
    "by document": (600, {}, {"split_mode": "document"}),
    "byte fallback": (600, {"min_char_count": 300}, {"split_mode": "document", "byte_fallback": True}),
    "split inside": (60, {}, {"split_mode": "text"}),
}


@pytest.mark.parametrize("case", sorted(PASS_2_CASES))
def test_pass_2_writes_the_same_bytes_piece_by_piece_and_gathered(tmp_path, prepare_data, monkeypatch, case):
    # one JSON lines file of short records, in batches of 3,000 characters so that documents
    # cross blocks; the rare characters fall out of the vocabulary at --min-char-count 300
    n_docs, options, reached = PASS_2_CASES[case]
    rng = np.random.default_rng(5)
    alphabet = list(string.ascii_letters + " .,\n") * 20 + list("éü東🙂ñ")
    docs = ["".join(rng.choice(alphabet, size=int(rng.integers(5, 150)))) for _ in range(n_docs)]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    monkeypatch.setattr(scratch_module, "BATCH_CHARS", 3000)
    made = {}
    for pieces in (0, 10**9):  # PIECES forced: every block gathered; every block piece by piece
        monkeypatch.setattr(pass2_char, "PIECES", pieces)
        _, data = prepare_data(tmp_path / "records.jsonl", **options)
        made[pieces] = {p.name: p.read_bytes() for p in sorted(data.path.iterdir())}
    shown = {"split_mode": data.meta["split_mode"], "byte_fallback": data.meta["coverage"]["byte_fallback"]}
    assert {k: shown[k] for k in reached} == reached
    assert made[0] == made[10**9]


@pytest.mark.parametrize("val", [[0, 1, 0, 5], [], [0, 3]])  # part of some, all of one; none; all of one
def test_counts_split_into_train_and_val_list_each_counted_code_point_once(val):
    whole, val = np.array([0, 3, 0, 5, 2]), np.array(val, dtype=np.int64)
    made = scratch_module.split_sparse(whole, val)
    train = whole - np.pad(val, (0, len(whole) - len(val)))
    for split, dense in (("train", train), ("val", val)):
        cps, counts = made[split]
        assert cps.dtype == np.uint32 and counts.dtype == np.int64
        assert cps.tolist() == np.flatnonzero(dense).tolist() and counts.tolist() == dense[dense > 0].tolist()


@pytest.mark.parametrize("val", [[0, 4], [0, 1, 0, 1, 0, 7]])  # more of a character than all; a longer table
def test_counts_whose_val_exceeds_all_are_refused(val):
    with pytest.raises(RuntimeError, match="exceed"):
        scratch_module.split_sparse(np.array([0, 3, 0, 5, 2]), np.array(val, dtype=np.int64))


def test_a_batch_of_one_byte_characters_is_stored_one_byte_each(tmp_path):
    writer = scratch_module.ScratchWriter(tmp_path / "unit.cp", 0.1)
    for text in ("plain ascii and Latin-1: café", "wider: € and 🙂"):
        writer.start_document()
        writer.add(text)
        writer.end_document()
        writer.flush()  # one batch per document
    index, _counts = writer.close()
    assert index.batches[:, 2].tolist() == [1, 4]
    read = "".join(b.astype("<u4").tobytes().decode("utf-32-le") for b in index.blocks())
    assert read == "plain ascii and Latin-1: café" + "wider: € and 🙂"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings from /proc")
def test_a_code_point_file_is_mapped_a_block_at_a_time(tmp_path, monkeypatch):
    # pass 2 reads a unit's code points as views of the file mapped: however large the unit,
    # a process holds no more of it than the blocks it keeps
    monkeypatch.setattr(scratch_module, "BATCH_CHARS", 1 << 16)
    writer = scratch_module.ScratchWriter(tmp_path / "unit.cp", 0.1)
    for i in range(8):  # eight batches, one a document
        writer.start_document()
        writer.add(f"document {i} " + "x" * (1 << 16))
        writer.end_document()
    index, _counts = writer.close()

    def mapped_bytes() -> int:
        lines = [line.split() for line in Path("/proc/self/maps").read_text().splitlines() if "unit.cp" in line]
        return sum(int(end, 16) - int(start, 16) for start, end in (line[0].split("-") for line in lines))

    seen, text = [], []
    for block in index.blocks():
        seen.append(mapped_bytes())
        text.append(block.tobytes().decode("latin-1"))
    del block
    assert "".join(text) == "".join(f"document {i} " + "x" * (1 << 16) for i in range(8))
    assert len(seen) == 8 and max(seen) < 2 * (1 << 16) + 2 * 4096  # this block's pages, and the last's at most
    assert mapped_bytes() == 0


@pytest.mark.parametrize("corpus", ["documents", "one file"])  # pass 2 alone; and the split inside's recount
def test_where_files_cannot_be_mapped_the_blocks_are_read_to_the_same_output(tmp_path, monkeypatch, corpus):
    if corpus == "documents":
        source = write_corpus(tmp_path / "corpus")
    else:
        source = tmp_path / "one.txt"
        source.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(3000)))
    options = prepare_module.PrepareOptions(workers=1, progress=False)
    prepare_module.prepare([source], tmp_path / "mapped", options)

    def refuse(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    with monkeypatch.context() as m:  # as a FUSE mount without mmap answers
        m.setattr(scratch_module.mmap, "mmap", refuse)
        prepare_module.prepare([source], tmp_path / "read", options)
    made = [{p.name: p.read_bytes() for p in sorted((tmp_path / out).iterdir())} for out in ("mapped", "read")]
    assert made[0] == made[1] and "meta.json" in made[0]


def test_a_single_file_is_split_inside_its_text_last_tenth_to_val(tmp_path, prepare_data, read_documents):
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(1000))
    (tmp_path / "one.txt").write_text(text)
    _, data = prepare_data(tmp_path / "one.txt")
    (train,), (val,) = read_documents(data, "train"), read_documents(data, "val")
    assert data.meta["split_mode"] == "text"
    assert len(val) == round(len(text) * 0.1)
    assert train + val == text


def test_when_no_document_goes_to_val_the_split_is_inside_the_text_and_a_warning_says_so(tmp_path, prepare_data):
    for i in range(120):  # whose content hashes all fall above 0.003 (the lowest: 0.0035)
        (tmp_path / f"doc{i:03d}.txt").write_text(f"text {i}: the quick brown fox jumps over the lazy dog\n" * 30)
    summary, data = prepare_data(tmp_path, val_fraction=0.003)
    assert data.meta["split_mode"] == "text"
    assert any("none of the 120 documents went to val at --val-fraction 0.003" in w and "share documents" in w
               for w in summary.warnings), summary.warnings


def test_unk_mode_maps_characters_outside_the_vocabulary_to_one_token(tmp_path, prepare_data):
    text = "ab" * 500 + "🙂東"
    (tmp_path / "t.txt").write_text(text)
    _, data = prepare_data(tmp_path / "t.txt", oov="unk", max_vocab=4, val_fraction=0.5)
    tok = data.tokenizer
    assert data.meta["coverage"]["unknown_token"] and tok.chars == ["a", "b"] and len(tok) == 4
    val = np.concatenate(data.split("val")).tolist()
    assert val[-3:] == [tok.unk_id, tok.unk_id, tok.eot_id]


def test_a_clean_corpus_gets_its_distinct_characters_plus_end_of_text_as_uint8_ids(tmp_path, prepare_data):
    alphabet = string.ascii_letters + " \n.,;:!?'-&$3"
    assert len(alphabet) == 65
    (tmp_path / "shakespeare.txt").write_text("".join(alphabet[(i * 7) % 65] for i in range(20_000)))
    _, data = prepare_data(tmp_path / "shakespeare.txt")
    assert data.meta["vocab_size"] == len(data.tokenizer) == 66
    assert sorted(data.tokenizer.chars) == sorted(alphabet)
    assert data.meta["dtype"] == "uint8" and data.split("train")[0].dtype == np.uint8
    assert not data.meta["coverage"]["byte_fallback"]


def test_the_vocabulary_never_exceeds_max_vocab_when_rare_characters_are_left_out(tmp_path, prepare_data,
                                                                                  read_documents):
    text = "".join(chr(0x4E00 + i) * (1 + i % 3) for i in range(400)) * 3
    (tmp_path / "t.txt").write_text(text)
    _, data = prepare_data(tmp_path / "t.txt", min_char_count=4, max_vocab=300)
    assert data.meta["coverage"]["byte_fallback"]
    assert len(data.tokenizer) <= 300
    (train,), (val,) = read_documents(data, "train"), read_documents(data, "val")
    assert train + val == text


def test_the_vocabulary_never_exceeds_max_vocab_when_val_has_characters_train_lacks(tmp_path, prepare_data,
                                                                                    read_documents):
    train_text = "".join(chr(0x4E00 + i) for i in range(300)) * 9
    val_text = "🙂" * 300
    (tmp_path / "t.txt").write_text(train_text + val_text)
    _, data = prepare_data(tmp_path / "t.txt", max_vocab=301)
    assert len(data.tokenizer) <= 301
    assert read_documents(data, "val") == [val_text]


@pytest.mark.parametrize("layout", ["folder", "outer tar"])
def test_owt_tokens_hold_only_document_text_never_tar_headers(layout, owt_folder, owt_tar, owt_archives, prepare_data,
                                                              read_documents):
    _, data = prepare_data(owt_folder if layout == "folder" else owt_tar)
    decoded = "".join(read_documents(data, "train") + read_documents(data, "val"))
    assert "\0" not in decoded and "ustar" not in decoded
    for name, docs in owt_archives.items():
        assert name not in decoded
        assert not any(member in decoded for member, _text in docs)


@pytest.mark.parametrize("layout", ["folder", "outer tar"])
def test_owt_documents_come_out_whole_one_per_end_of_text_token(layout, owt_folder, owt_tar, owt_texts, prepare_data,
                                                                read_documents):
    _, data = prepare_data(owt_folder if layout == "folder" else owt_tar)
    train, val = read_documents(data, "train"), read_documents(data, "val")
    assert data.meta["split_mode"] == "document"
    ids = np.concatenate(data.split("train") + data.split("val"))
    assert int((ids == data.tokenizer.eot_id).sum()) == len(owt_texts) == 120
    assert sorted(train + val) == sorted(owt_texts)


def test_document_split_puts_no_document_in_both_train_and_val(owt_folder, prepare_data, read_documents):
    _, data = prepare_data(owt_folder)
    train, val = read_documents(data, "train"), read_documents(data, "val")
    assert val and train and not set(train) & set(val)
    assert data.meta["splits"]["val"]["documents"] == len(val)


def test_identical_documents_always_share_a_split(tmp_path, prepare_data, read_documents):
    for i in range(150):
        (tmp_path / "docs").mkdir(exist_ok=True)
        (tmp_path / "docs" / f"{i:03d}.txt").write_text(f"document number {i % 50}\n" * 5)
    _, data = prepare_data(tmp_path / "docs", val_fraction=0.3)
    train, val = read_documents(data, "train"), read_documents(data, "val")
    assert len(train) + len(val) == 150 and val and train
    assert not set(train) & set(val)


def test_an_outer_tar_and_a_folder_of_its_archives_give_the_same_shards(owt_folder, owt_tar, prepare_data,
                                                                        folder_bytes):
    _, a = prepare_data(owt_folder)
    _, b = prepare_data(owt_tar)

    def shards(d):
        return {k: v for k, v in folder_bytes(d.path).items() if k.endswith(".bin")}

    assert shards(a) == shards(b)


def test_the_same_inputs_and_options_give_byte_identical_output(owt_folder, prepare_data, folder_bytes):
    _, a = prepare_data(owt_folder)
    _, b = prepare_data(owt_folder)
    assert folder_bytes(a.path) == folder_bytes(b.path)


def test_one_and_two_workers_give_byte_identical_output(owt_tar, tmp_path, prepare_data, folder_bytes):
    (tmp_path / "extra.txt").write_text(UNICODE * 10)
    _, a = prepare_data(owt_tar, tmp_path / "extra.txt", workers=1, max_vocab=300)
    _, b = prepare_data(owt_tar, tmp_path / "extra.txt", workers=2, max_vocab=300)
    assert folder_bytes(a.path) == folder_bytes(b.path)


def test_small_shards_hold_the_same_tokens_as_one_big_shard(owt_folder, prepare_data):
    _, one = prepare_data(owt_folder)
    _, many = prepare_data(owt_folder, shard_tokens=5000)
    assert len(many.meta["splits"]["train"]["shards"]) > 3
    for split in ("train", "val"):
        assert all(len(s) <= 5000 for s in many.split(split))
        assert np.array_equal(np.concatenate(one.split(split)), np.concatenate(many.split(split)))


def test_meta_records_sources_counts_and_options(owt_folder, prepare_data, owt_texts):
    summary, data = prepare_data(owt_folder)
    meta = data.meta
    assert [s["documents"] for s in meta["sources"]] == [40, 40, 40]
    assert all(len(s["sha256"]) == 64 for s in meta["sources"])
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 120
    assert meta["splits"]["train"]["characters"] + meta["splits"]["val"]["characters"] == sum(map(len, owt_texts))
    assert summary.text_bytes == sum(len(t.encode()) for t in owt_texts)
    assert meta["options"]["val_fraction"] == 0.1


def test_a_leading_byte_order_mark_is_not_part_of_the_text(tmp_path, prepare_data, read_documents):
    (tmp_path / "bom.txt").write_bytes("\ufeffhello world, this is text\n".encode() * 10)
    _, data = prepare_data(tmp_path / "bom.txt")
    (train,), (val,) = read_documents(data, "train"), read_documents(data, "val")
    assert train + val == ("\ufeffhello world, this is text\n" * 10)[1:]


# -- any scale: documents of any length stream through in pieces ----------------------------
def big_corpus(folder, big: str) -> None:
    """150 small documents (enough to split by document), `big` as one file, as a member of
    a tar (after small ones) and as a gzip-compressed member of an archive of archives."""
    import gzip
    import lzma

    from tests.helpers import tar_bytes

    folder.mkdir()
    for i in range(150):
        (folder / f"small{i:03d}.txt").write_text(f"small document {i} " * (1 + i % 7))
    (folder / "big.txt").write_text(big, encoding="utf-8", newline="")
    members = [("a.txt", b"a small member"), ("big.txt", big.encode()), ("z.txt", "ünïcode member".encode())]
    (folder / "docs.tar").write_bytes(tar_bytes(members))
    inner = lzma.compress(tar_bytes([("big.txt.gz", gzip.compress(big[::-1].encode()))]))
    (folder / "aoa.tar").write_bytes(tar_bytes([("one.xz", inner), ("two.xz", lzma.compress(tar_bytes(members[:1])))]))


@pytest.mark.parametrize("workers", [1, 2])
def test_documents_larger_than_every_buffer_are_encoded_exactly_as_if_whole(tmp_path, prepare_data, folder_bytes,
                                                                            read_documents, monkeypatch, workers):
    from data_prep.passes import pass1_read as scan
    from data_prep.read import tar

    big = (UNICODE + "a line of filler text\n" * 10) * 400  # about 70,000 characters
    big_corpus(tmp_path / "corpus", big)
    _, whole = prepare_data(tmp_path / "corpus", out=tmp_path / "whole", workers=workers, max_vocab=300)
    # now every buffer is far smaller than the big document: it is read, decoded, hashed,
    # counted, stored and encoded in many pieces, and archive members are streamed
    monkeypatch.setattr(decode, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(scratch_module, "BATCH_CHARS", 3000)
    monkeypatch.setattr(tar, "INLINE_MEMBER", 1000)
    monkeypatch.setattr(scan, "SPILL_MEMBER", 2000)
    _, pieces = prepare_data(tmp_path / "corpus", out=tmp_path / "pieces", workers=workers, max_vocab=300)
    assert folder_bytes(whole.path) == folder_bytes(pieces.path)
    assert whole.meta["split_mode"] == "document"
    docs = read_documents(pieces, "train") + read_documents(pieces, "val")
    assert docs.count(big) == 2 and big[::-1] in docs


def test_a_compressed_stream_that_expands_a_thousandfold_streams_through_in_bounded_memory(tmp_path, prepare_data,
                                                                                           monkeypatch):
    import gzip
    import tracemalloc

    from tests.helpers import tar_bytes

    monkeypatch.setattr(scratch_module, "BATCH_CHARS", 1 << 20)

    def peak_memory(size: int) -> int:
        """The most memory held at once while preparing a tar holding a gzip of `size` a's."""
        bomb = gzip.compress(b"a" * size, 9)
        assert len(bomb) * 500 < size
        (tmp_path / f"{size}.tar").write_bytes(tar_bytes([("a.txt.gz", bomb)]))
        tracemalloc.start()
        try:
            _, data = prepare_data(tmp_path / f"{size}.tar")  # one worker: it all runs in this process
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert data.meta["splits"]["train"]["characters"] + data.meta["splits"]["val"]["characters"] == size
        return peak

    # the fixed part (character count tables over all of Unicode, buffers) is the same for
    # both; what would grow with the document must not
    # both longer than the characters a document's split is hashed on (HASH_CHARS), so both
    # are written as they come once the first 4 M characters have decided it
    small, large = peak_memory(10_000_000), peak_memory(50_000_000)
    assert large < small + 10_000_000, (f"{small / 1e6:.0f} MB held at once for a 10 MB document, "
                                        f"{large / 1e6:.0f} MB for 50 MB")


def test_ten_thousand_tiny_files_in_one_folder_are_each_a_document(tmp_path, prepare_data):
    folder = tmp_path / "tiny"
    folder.mkdir()
    for i in range(10_000):
        (folder / f"{i:05d}.txt").write_text(f"tiny {i}")
    _, data = prepare_data(folder, workers=2)
    assert sum(data.meta["splits"][s]["documents"] for s in ("train", "val")) == 10_000
    assert len(data.meta["sources"]) == 10_000


def test_what_the_main_process_keeps_does_not_grow_with_the_documents(tmp_path, prepare_data):
    import tracemalloc

    from tests.helpers import tar_bytes

    def main_process_peak(n_docs: int) -> int:
        path = tmp_path / f"{n_docs}.tar"
        path.write_bytes(tar_bytes([(f"{i}.txt", b"doc %d" % i) for i in range(n_docs)]))
        tracemalloc.start()
        try:
            prepare_data(path, workers=2)  # the workers read; this process only keeps count
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = main_process_peak(3_000), main_process_peak(30_000)
    assert large < small + 1_000_000, f"{small / 1e6:.1f} MB for 3,000 documents, {large / 1e6:.1f} MB for 30,000"


def test_an_output_folder_inside_the_input_folder_is_not_read_back_as_input(tmp_path, prepare_data, folder_bytes):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"{i}.txt").write_text(f"text number {i}\n" * 40)
    _, first = prepare_data(corpus, out=corpus / "data")
    before = folder_bytes(corpus / "data")
    _, second = prepare_data(corpus, out=corpus / "data", force=True)
    assert folder_bytes(corpus / "data") == before
    _, elsewhere = prepare_data(corpus, out=corpus / "other")  # an earlier output is no input either
    assert [s["path"] for s in elsewhere.meta["sources"]] == [str(corpus / f"{i}.txt") for i in range(3)]


def test_a_killed_runs_unfinished_output_is_removed_at_the_next_start(tmp_path, prepare_data):
    (tmp_path / "a.txt").write_text("some text to prepare\n" * 50)
    partial = tmp_path / f".data.partial-{dead_pid()}"
    (partial / "work").mkdir(parents=True)
    (partial / "work" / "0000000.cp").write_bytes(b"x" * 1000)
    prepare_data(tmp_path / "a.txt", out=tmp_path / "data")
    assert not partial.exists()
    assert (tmp_path / "data" / "meta.json").is_file()


def test_an_output_whose_name_is_near_the_length_limit_is_written_replaced_and_cleaned_after(tmp_path, prepare_data,
                                                                                             folder_bytes):
    # the folders beside it (.OUT.partial-PID, .OUT.old-PID) would pass the limit of 255 bytes
    (tmp_path / "a.txt").write_text("some text to prepare\n" * 50)
    out = tmp_path / ("é" * 127)  # 254 bytes
    prepare_data(tmp_path / "a.txt", out=out)
    before = folder_bytes(out)
    prepare_data(tmp_path / "a.txt", out=out, force=True)
    assert folder_bytes(out) == before
    partial = tmp_path / f".{beside_stem(out)}.partial-{dead_pid()}"  # as a killed run would leave it
    partial.mkdir()
    prepare_data(tmp_path / "a.txt", out=out, force=True)
    assert [p.name for p in tmp_path.iterdir() if p.name != "a.txt"] == [out.name]


def test_a_second_run_into_an_output_another_run_is_writing_is_refused(tmp_path, prepare_data):
    # whichever finished last would replace the other's output, --force or not
    (tmp_path / "a.txt").write_text("some text to prepare\n" * 50)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".data.partial-{running.pid}"  # another run's, still going
        live.mkdir()
        with pytest.raises(DataError, match=f"another process \\(pid {running.pid}\\) is writing .*data"):
            prepare_data(tmp_path / "a.txt", out=tmp_path / "data", force=True)
    finally:
        running.kill()
        running.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "a.txt"]


def test_a_folder_made_at_the_output_during_a_run_is_kept(tmp_path, prepare_data, monkeypatch):
    (tmp_path / "a.txt").write_text("some text to prepare\n" * 50)
    out = tmp_path / "data"
    real = prepare_module._prepare_into

    def and_the_user_writes_there_meanwhile(*args, **kwargs):
        summary = real(*args, **kwargs)
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
        return summary

    monkeypatch.setattr(prepare_module, "_prepare_into", and_the_user_writes_there_meanwhile)
    with pytest.raises(DataError, match="already exists"):
        prepare_data(tmp_path / "a.txt", out=out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "data"]


def test_an_output_that_is_the_current_folder_is_refused(tmp_path, prepare_data, monkeypatch):
    # replacing it would leave the shell in a deleted folder
    (tmp_path / "a.txt").write_text("some text to prepare\n" * 50)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for out in (".", tmp_path):  # the folder itself, and one holding it
        with pytest.raises(DataError, match="is, or holds, the current folder"):
            prepare_data(tmp_path / "a.txt", out=out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "here"]


def test_an_output_that_is_the_vocab_from_base_is_refused_even_with_force(tmp_path, prepare_data, folder_bytes):
    (tmp_path / "a.txt").write_text("some text to prepare\n" * 50)
    prepare_data(tmp_path / "a.txt", out=tmp_path / "base")
    before = folder_bytes(tmp_path / "base")
    with pytest.raises(DataError, match="would replace the input"):
        prepare_data(tmp_path / "a.txt", out=tmp_path / "base", force=True, vocab_from=str(tmp_path / "base"))
    assert folder_bytes(tmp_path / "base") == before


def test_a_failed_run_ends_its_own_workers_and_no_other_process(tmp_path, prepare_data, monkeypatch):
    import multiprocessing
    import time

    ended = []
    terminate = multiprocessing.process.BaseProcess.terminate
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "terminate", lambda p: ended.append(p.pid) or terminate(p))
    other = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,))  # a caller's own
    other.start()
    try:
        (tmp_path / "a.txt").write_text("x")  # too small to split: fails after pass 1's workers ran
        with pytest.raises(DataError, match="too small to split"):
            prepare_data(tmp_path / "a.txt", workers=2)
        assert other.pid not in ended and other.is_alive()
    finally:
        other.kill()
        other.join()


def test_an_output_that_is_an_input_is_refused_even_with_force(tmp_path, prepare_data, folder_bytes):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text to prepare\n" * 50)
    before = folder_bytes(corpus)
    for out in (corpus, tmp_path):  # the input itself, and a folder holding it
        with pytest.raises(DataError, match="would replace the input"):
            prepare_data(corpus, out=out, force=True)
    assert folder_bytes(corpus) == before


def test_an_output_a_killed_run_had_moved_aside_is_put_back(tmp_path, prepare_data, folder_bytes):
    (tmp_path / "a.txt").write_text("some text to prepare\n" * 50)
    prepare_data(tmp_path / "a.txt", out=tmp_path / "data")
    before = folder_bytes(tmp_path / "data")
    os.replace(tmp_path / "data", tmp_path / f".data.old-{dead_pid()}")  # killed between the two renames of the swap
    with pytest.raises(DataError, match="already exists"):
        prepare_data(tmp_path / "a.txt", out=tmp_path / "data")
    assert folder_bytes(tmp_path / "data") == before
    assert not list(tmp_path.glob(".data.*"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names an open file through /proc")
def test_every_file_of_the_output_reaches_the_disk_before_the_rename(tmp_path, prepare_data, monkeypatch):
    # a rename that a power cut keeps, over files it does not, would leave shards of zeros
    from plumbing import output_folder

    synced, unsynced_at_rename = set(), []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src, dst):
        if ".partial-" in str(src):
            unsynced_at_rename.extend(str(p) for p in Path(src).rglob("*") if p.is_file() and str(p) not in synced)
            unsynced_at_rename.extend([] if str(src) in synced else [str(src)])
        real_replace(src, dst)

    monkeypatch.setattr(output_folder.os, "fsync", fsync)
    monkeypatch.setattr(output_folder.os, "replace", replace)
    (tmp_path / "a.txt").write_text("some text to prepare\n" * 50)
    prepare_data(tmp_path / "a.txt", out=tmp_path / "data")
    assert (tmp_path / "data" / "meta.json").is_file() and unsynced_at_rename == []


def test_a_long_document_stored_as_a_file_and_as_a_tar_member_lands_in_one_split(tmp_path, prepare_data,
                                                                                 read_documents, monkeypatch):
    """Its split is hashed on its first characters however it is read: a file in pieces, a
    member whole (here with pieces and the hashed prefix made small, so short texts stand
    in for documents of many megabytes)."""
    from data_prep.read import utf8
    from tests.helpers import tar_bytes

    monkeypatch.setattr(utf8, "CHUNK_BYTES", 1 << 11)
    monkeypatch.setattr(scratch_module, "HASH_CHARS", 1000)
    rng = np.random.default_rng(0)
    # 120 documents: split by document
    texts = ["".join(rng.choice(list(string.ascii_lowercase + " "), 5000)) + "\n" for _ in range(60)]
    (tmp_path / "corpus").mkdir()
    for i, text in enumerate(texts):
        (tmp_path / "corpus" / f"{i}.txt").write_text(text)
    (tmp_path / "corpus" / "all.tar").write_bytes(tar_bytes([(f"{i}.txt", t.encode()) for i, t in enumerate(texts)]))
    _, data = prepare_data(tmp_path / "corpus", val_fraction=0.5)
    train, val = set(read_documents(data, "train")), set(read_documents(data, "val"))
    assert train | val == set(texts) and not train & val  # each text in one split, both copies with it
