"""Bad input: what is skipped and counted, what fails (always, or under --strict), and
that a failed run leaves the output folder as it was."""
import os
import tarfile

import pytest

from data_prep import DataError
from data_prep.passes import pass2_char as encode_module
from data_prep.prepare import PrepareOptions, prepare
from tests.helpers import assert_one_line_error, owt_archive_bytes, run_cli, tar_bytes

GOOD = "good text that is long enough to split into train and val\n" * 20


@pytest.fixture
def good_folder(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"good{i}.txt").write_text(f"{i}: {GOOD}")
    return folder


def test_a_full_disk_while_reading_stops_the_run_instead_of_skipping_the_input(tmp_path, good_folder):
    # pass 1 writes each input's code points to scratch; failing to write is no fault of
    # the input, which must not be skipped as unreadable while the run goes on
    rng = __import__("random").Random(0)
    (good_folder / "big.txt").write_text("".join(rng.choice("abcdefgh \n") for _ in range(600_000)))
    r = run_cli("data_prep.cli", good_folder, "--out", tmp_path / "out", "--quiet", file_size_limit=200_000)
    assert_one_line_error(r, "gpt-prepare", f"cannot write {tmp_path / 'out'}: File too large")  # not its work file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


@pytest.mark.parametrize("tokenizer", [[], ["--tokenizer", "bpe", "--vocab-size", "300"]])
def test_a_full_disk_while_writing_the_shards_is_one_line_naming_the_file(tmp_path, good_folder, tokenizer):
    rng = __import__("random").Random(0)
    for i in range(4):  # each unit's scratch fits the limit; the shards (2 bytes a token) do not
        (good_folder / f"big{i}.txt").write_text("".join(rng.choice("abcdefgh \n") for _ in range(120_000)))
    r = run_cli("data_prep.cli", good_folder, "--out", tmp_path / "out", "--quiet", *tokenizer, file_size_limit=300_000)
    assert_one_line_error(r, "gpt-prepare", f"cannot write {tmp_path / 'out'}: File too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_in_a_folder_is_skipped_with_a_warning_and_one_given_is_refused(tmp_path, good_folder, prepare_data):
    # both passes read each input from its start, and opening a pipe nobody writes to waits forever
    os.mkfifo(good_folder / "pipe")
    with pytest.warns(UserWarning, match="skipped .*pipe: a pipe or a device, not a file"):
        _, data = prepare_data(good_folder)
    assert [s["path"] for s in data.meta["sources"]] == [str(good_folder / f"good{i}.txt") for i in range(3)]
    with pytest.raises(DataError, match="pipe is a pipe or a device, not a file.*save its content to a file first"):
        prepare_data(good_folder / "pipe")


def test_a_prepared_data_folder_given_as_input_is_refused_as_such(good_folder, tmp_path, prepare_data):
    prepare_data(good_folder, out=tmp_path / "data")
    with pytest.raises(DataError, match="data is a prepared data folder .*not a corpus: give the text"):
        prepare_data(tmp_path / "data", out=tmp_path / "again")


def test_an_input_path_that_does_not_exist_is_an_error(tmp_path, prepare_data):
    with pytest.raises(DataError, match="input path does not exist: .*missing.txt"):
        prepare_data(tmp_path / "missing.txt")
    (tmp_path / "data" / "made").mkdir(parents=True)  # an output folder there already: the typo is said first
    with pytest.raises(DataError, match="input path does not exist: .*missing.txt"):
        prepare_data(tmp_path / "missing.txt", out=tmp_path / "data")


def test_an_empty_folder_is_an_error(tmp_path, prepare_data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no input files found"):
        prepare_data(tmp_path / "empty")


def test_a_corpus_of_empty_files_is_an_error(tmp_path, prepare_data):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt.gz").write_bytes(__import__("gzip").compress(b""))
    with pytest.raises(DataError, match="no text found"):
        prepare_data(tmp_path / "a.txt", tmp_path / "b.txt.gz")


def test_a_corpus_too_small_to_split_is_an_error(tmp_path, prepare_data):
    (tmp_path / "tiny.txt").write_text("abc")
    with pytest.raises(DataError, match="too small to split"):
        prepare_data(tmp_path / "tiny.txt")


@pytest.mark.parametrize("option, value", [("val_fraction", 1.5), ("max_vocab", 1), ("min_char_count", 0),
                                           ("shard_tokens", 0), ("workers", -1), ("workers", 100_000)])
def test_an_invalid_option_is_an_error_naming_it(tmp_path, prepare_data, option, value):
    (tmp_path / "t.txt").write_text(GOOD)
    with pytest.raises(DataError, match="--" + option.replace("_", "-")):
        prepare_data(tmp_path / "t.txt", **{option: value})


def test_a_binary_file_among_good_ones_is_skipped_with_a_warning_and_counted(good_folder, prepare_data, read_documents):
    (good_folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    summary, data = prepare_data(good_folder)
    assert data.meta["skipped"]["files"] == 1
    assert any("image.png: binary content" in w for w in summary.warnings)
    assert sum(map(len, read_documents(data, "train") + read_documents(data, "val"))) == 3 * len(f"0: {GOOD}")


@pytest.mark.parametrize("name, head, says", [("c.zst", b"\x28\xb5\x2f\xfd", "zstd-compressed"),
                                              ("z.zip", b"PK\x03\x04", "a zip archive")])
def test_a_compressed_format_gpt_prepare_does_not_read_is_named_even_without_nul_bytes(good_folder, prepare_data,
                                                                                      name, head, says):
    (good_folder / name).write_bytes(head + b"no NUL byte follows" * 10)
    summary, data = prepare_data(good_folder)
    assert data.meta["skipped"]["files"] == 1
    assert any(f"{name}: {says}, a format not read here" in w for w in summary.warnings), summary.warnings


def test_a_binary_file_fails_under_strict(good_folder, prepare_data):
    (good_folder / "image.png").write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(DataError, match="image.png: binary content.*--strict"):
        prepare_data(good_folder, strict=True)


def test_a_binary_file_alone_is_an_error_that_says_why(tmp_path, prepare_data):
    (tmp_path / "blob.bin").write_bytes(b"\x00" * 1000)
    with pytest.raises(DataError, match="no text found.*blob.bin: binary content"):
        prepare_data(tmp_path / "blob.bin")


def test_invalid_utf8_is_replaced_and_counted(tmp_path, prepare_data, read_documents):
    (tmp_path / "bad.txt").write_bytes(GOOD.encode() + b"caf\xe9 \xff\xfe ok " + GOOD.encode())
    summary, data = prepare_data(tmp_path / "bad.txt")
    assert data.meta["skipped"]["invalid_utf8_replaced"] == 3
    (train,), (val,) = read_documents(data, "train"), read_documents(data, "val")
    assert train + val == GOOD + "caf\ufffd \ufffd\ufffd ok " + GOOD


def test_invalid_utf8_in_an_archive_member_is_replaced_and_counted(tmp_path, prepare_data):
    (tmp_path / "docs.tar").write_bytes(tar_bytes([("a.txt", GOOD.encode() + b"\xff"), ("b.txt", GOOD.encode())]))
    _, data = prepare_data(tmp_path / "docs.tar")
    assert data.meta["skipped"]["invalid_utf8_replaced"] == 1


def test_invalid_utf8_fails_under_strict(tmp_path, prepare_data):
    (tmp_path / "bad.txt").write_bytes(GOOD.encode() + b"\xff")
    with pytest.raises(DataError, match="bad.txt: invalid UTF-8"):
        prepare_data(tmp_path / "bad.txt", strict=True)


def corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x55 for b in data[middle : middle + 16]) + data[middle + 16 :]


def test_a_corrupt_xz_file_among_good_ones_is_skipped_and_counted(owt_folder, owt_archives, prepare_data,
                                                                   whole_documents):
    bad = owt_folder / "urlsf_subset00-2_data.xz"
    bad.write_bytes(corrupt(bad.read_bytes()))
    summary, data = prepare_data(owt_folder)
    assert data.meta["skipped"]["files"] == 1
    assert any("urlsf_subset00-2_data.xz" in w for w in summary.warnings)
    expected = sorted(t for name, docs in owt_archives.items() if "-2_" not in name for _m, t in docs)
    assert whole_documents(data) == expected


def test_a_corrupt_xz_file_fails_under_strict(owt_folder, prepare_data):
    bad = owt_folder / "urlsf_subset00-2_data.xz"
    bad.write_bytes(corrupt(bad.read_bytes()))
    with pytest.raises(DataError, match="urlsf_subset00-2_data.xz.*--strict"):
        prepare_data(owt_folder, strict=True)


@pytest.mark.parametrize("tar_format", ["gnu", "pax with long names"])
def test_a_corrupt_archive_inside_an_outer_tar_is_skipped_alone(tmp_path, owt_archives, prepare_data, whole_documents,
                                                                tar_format):
    folder = "openwebtext" if tar_format == "gnu" else "openwebtext/" + "ünïcode-folder-name-" * 8
    members = [(f"{folder}/{name}", owt_archive_bytes(docs)) for name, docs in sorted(owt_archives.items())]
    members[1] = (members[1][0], corrupt(members[1][1]))
    fmt = tarfile.GNU_FORMAT if tar_format == "gnu" else tarfile.PAX_FORMAT
    (tmp_path / "openwebtext.tar").write_bytes(tar_bytes(members, format=fmt, folders=(folder,)))
    summary, data = prepare_data(tmp_path / "openwebtext.tar")
    assert data.meta["skipped"]["members"] == 1
    assert any("urlsf_subset00-2_data.xz" in w for w in summary.warnings)
    expected = sorted(t for name, docs in owt_archives.items() if "-2_" not in name for _m, t in docs)
    assert whole_documents(data) == expected


@pytest.mark.parametrize("name", ["docs.tar", "docs.tar.xz"])
def test_a_truncated_archive_among_good_files_is_skipped_and_counted(good_folder, prepare_data, name):
    raw = tar_bytes([(f"m{i}.txt", GOOD.encode() * 3) for i in range(4)])
    if name.endswith(".xz"):
        raw = __import__("lzma").compress(raw)
    (good_folder / name).write_bytes(raw[: len(raw) * 2 // 3])
    summary, data = prepare_data(good_folder)
    assert data.meta["skipped"]["files"] == 1
    assert any(name in w and "truncated" in w for w in summary.warnings)
    assert data.meta["splits"]["train"]["documents"] == 3


def metadata_then_member(kind: bytes, size: int, data: bytes) -> bytes:
    """A tar whose first entry is a long-name ("L") or pax ("x") header of the given size
    field and content, then a text member."""
    info = tarfile.TarInfo("././@Metadata")
    info.type, info.size = kind, size
    raw = info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)
    return raw + tar_bytes([("m.txt", GOOD.encode())])


@pytest.mark.parametrize("name,raw", [
    ("pax.tar", metadata_then_member(tarfile.XHDTYPE, 16, b"0 path=never.txt")),  # a record length that never moves on
    ("pax2.tar", metadata_then_member(tarfile.XHDTYPE, 16, b"x path=never.txt")),
    ("long.tar", metadata_then_member(tarfile.GNUTYPE_LONGNAME, 2**80, b"")),  # a name no memory could hold
])
def test_a_tar_with_impossible_metadata_is_skipped_as_corrupt(good_folder, prepare_data, name, raw):
    (good_folder / name).write_bytes(raw)
    summary, data = prepare_data(good_folder)
    assert data.meta["skipped"]["files"] == 1
    assert any(name in w and "corrupt tar archive" in w for w in summary.warnings), summary.warnings


def test_a_truncated_archive_fails_under_strict(good_folder, prepare_data):
    raw = tar_bytes([("m.txt", GOOD.encode() * 3)])
    (good_folder / "docs.tar").write_bytes(raw[:700])
    with pytest.raises(DataError, match="docs.tar.*truncated"):
        prepare_data(good_folder, strict=True)


def test_a_link_to_a_folder_inside_an_input_is_not_followed_and_said(good_folder, tmp_path, prepare_data,
                                                                     read_documents):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "more.txt").write_text(GOOD)
    (good_folder / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.warns(UserWarning, match="skipped .*linked: a link to a folder, not followed "
                                         r"\(give it as an input to read it\)"):
        _, data = prepare_data(good_folder)
    assert all("more.txt" not in s["path"] for s in data.meta["sources"])


def test_a_file_reached_twice_is_read_once_and_said(good_folder, prepare_data):
    _, once = prepare_data(good_folder)
    first = sorted(good_folder.iterdir())[0]
    os.link(first, good_folder / "hard-link.txt")
    (good_folder / "soft-link.txt").symlink_to(first.name)
    with pytest.warns(UserWarning, match=r"read once: .*hard-link.txt is .*good0.txt again \(given twice, inside a "
                                         r"folder also given, or a link\); 7 more like it"):
        _, again = prepare_data(good_folder, first, good_folder)
    assert [s["path"] for s in again.meta["sources"]] == [s["path"] for s in once.meta["sources"]]
    assert again.meta["splits"] == once.meta["splits"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists folders whatever their permissions")
def test_a_folder_that_cannot_be_listed_is_skipped_with_a_warning(good_folder, prepare_data):
    locked = good_folder / "locked"
    locked.mkdir()
    (locked / "x.txt").write_text(GOOD)
    locked.chmod(0o311)  # entered, not listed
    try:
        with pytest.warns(UserWarning, match="skipped the folder .*locked: Permission denied"):
            prepare_data(good_folder)
        locked.chmod(0)  # neither
        with pytest.warns(UserWarning, match="skipped the folder .*locked: Permission denied"):
            prepare_data(good_folder)
    finally:
        locked.chmod(0o755)


def test_a_file_that_cannot_be_opened_is_skipped_and_counted(good_folder, prepare_data):
    # a dangling link is listed like a file but cannot be opened, even by root
    (good_folder / "gone.txt").symlink_to(good_folder / "deleted-meanwhile.txt")
    summary, data = prepare_data(good_folder)
    assert data.meta["skipped"]["files"] == 1
    assert [w for w in summary.warnings if "gone.txt" in w] == [
        f"skipped {good_folder / 'gone.txt'}: unreadable (No such file or directory)"]


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="root reads files whatever their permissions; covered by the dangling-link test")
def test_a_file_without_read_permission_is_skipped_and_counted(good_folder, prepare_data):
    locked = good_folder / "locked.txt"
    locked.write_text(GOOD)
    locked.chmod(0)
    summary, data = prepare_data(good_folder)
    assert data.meta["skipped"]["files"] == 1
    assert any("locked.txt" in w and "permission denied" in w for w in summary.warnings)


def test_a_binary_member_inside_an_archive_is_skipped_and_counted_as_a_member(tmp_path, prepare_data, read_documents):
    (tmp_path / "docs.tar").write_bytes(tar_bytes([("a.txt", GOOD.encode()), ("b.bin", b"\x00\x01" * 100),
                                                   ("c.txt", GOOD.encode())]))
    summary, data = prepare_data(tmp_path / "docs.tar")
    assert data.meta["skipped"] == {"files": 0, "members": 1, "invalid_utf8_replaced": 0}
    assert any("docs.tar::b.bin" in w for w in summary.warnings)
    assert len(read_documents(data, "train")) == 2


@pytest.mark.parametrize("layout", ["tar", "tar of archives"])
def test_member_names_that_climb_out_or_are_absolute_create_no_files(tmp_path, prepare_data, read_documents, layout):
    (tmp_path / "work" / "deep").mkdir(parents=True)
    target_abs = tmp_path / "absolute-target.txt"
    names = ["../../escaped.txt", "../escaped2.txt", str(target_abs), "/escaped3.txt"]
    inner = tar_bytes([(n, f"text of {n}\n".encode() * 10) for n in names])
    archive = tmp_path / "work" / "deep" / "evil.tar"
    archive.write_bytes(inner if layout == "tar" else tar_bytes([("a.tar.xz", __import__("lzma").compress(inner))]))
    before = {p for p in tmp_path.rglob("*")}
    cwd = os.getcwd()
    os.chdir(tmp_path / "work" / "deep")
    try:
        _, data = prepare_data(archive, out=tmp_path / "out")
    finally:
        os.chdir(cwd)
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p == tmp_path / "out" or tmp_path / "out" in p.parents for p in created)
    assert not target_abs.exists() and not os.path.exists("/escaped3.txt")
    texts = read_documents(data, "train") + read_documents(data, "val")
    assert "".join(texts).count("text of ../../escaped.txt") == 10


def test_an_existing_output_folder_is_refused_without_force_and_left_untouched(good_folder, tmp_path, prepare_data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="already exists.*--force"):
        prepare_data(good_folder, out=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"


def test_an_existing_empty_output_folder_is_used(good_folder, tmp_path, prepare_data):
    (tmp_path / "out").mkdir()
    _, data = prepare_data(good_folder, out=tmp_path / "out")
    assert (tmp_path / "out" / "meta.json").exists()


def test_force_replaces_an_existing_output_folder(good_folder, tmp_path, prepare_data):
    out = tmp_path / "out"
    prepare_data(good_folder, out=out)
    (out / "mine.bin").write_bytes(b"old")  # put there by the user: not replaced with the folder
    with pytest.raises(DataError, match="also holds what it did not write: mine.bin"):
        prepare_data(good_folder, out=out, force=True)
    assert (out / "mine.bin").read_bytes() == b"old"
    (out / "mine.bin").unlink()
    prepare_data(good_folder, out=out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train_0000.bin", "val_0000.bin"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def fail_in_pass_two(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(encode_module, "encode_unit", broken)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_midway_leaves_no_output_and_no_partial_folder(good_folder, tmp_path, monkeypatch, workers):
    fail_in_pass_two(monkeypatch)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare([good_folder], tmp_path / "out", PrepareOptions(workers=workers, progress=False))
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_a_failure_midway_removes_the_folders_it_made_above_the_output(good_folder, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "mine.txt").write_text("kept")
    fail_in_pass_two(monkeypatch)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare([good_folder], tmp_path / "a" / "b" / "c" / "out", PrepareOptions(workers=1, progress=False))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["mine.txt"]  # b and c are gone, a was there before


def test_a_failure_midway_leaves_a_previous_output_intact(good_folder, tmp_path, monkeypatch, prepare_data,
                                                          folder_bytes):
    out = tmp_path / "out"
    prepare_data(good_folder, out=out)
    before = folder_bytes(out)
    fail_in_pass_two(monkeypatch)
    with pytest.raises(RuntimeError):
        prepare([good_folder], out, PrepareOptions(workers=1, progress=False, force=True, val_fraction=0.2))
    assert folder_bytes(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_file_name_that_is_not_utf8_is_recorded_with_backslash_escapes(good_folder, prepare_data):
    bad_name = os.fsdecode(b"bad\xff.txt")
    (good_folder / bad_name).write_text(GOOD)
    (good_folder / os.fsdecode(b"blob\xfe.bin")).write_bytes(b"\x00" * 100)
    summary, data = prepare_data(good_folder)
    paths = [s["path"] for s in data.meta["sources"]]
    assert str(good_folder / "bad\\xff.txt") in paths
    assert any("blob\\xfe.bin: binary content" in w for w in summary.warnings)
    assert "\\xff" in (data.path / "meta.json").read_text(encoding="utf-8")


def test_a_read_only_output_location_is_one_clear_error_naming_the_folder(good_folder, tmp_path, monkeypatch):
    import errno
    import pathlib

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    with pytest.raises(DataError, match=r"cannot write the output folder .*out: Read-only file system"):
        prepare([good_folder], tmp_path / "out", PrepareOptions(workers=1, progress=False))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("force", [False, True])
def test_a_regular_file_as_output_is_refused_even_with_force(good_folder, tmp_path, prepare_data, force):
    out = tmp_path / "out"
    out.write_text("my notes")
    with pytest.raises(DataError, match="is a file, not a folder"):
        prepare_data(good_folder, out=out, force=force)
    assert out.read_text() == "my notes"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_replacing_an_output_leaves_no_old_folder_behind(good_folder, tmp_path, prepare_data):
    out = tmp_path / "out"
    for _ in range(2):
        prepare_data(good_folder, out=out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "corpus") == ["out"]
