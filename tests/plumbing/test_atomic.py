"""Files written whole or not at all: what a failed write leaves and says."""
import pytest

from plumbing.atomic import atomic_write_bytes


@pytest.mark.parametrize("given_as", [str, lambda p: p])
def test_a_write_that_cannot_start_names_the_file_asked_for_not_its_temporary(tmp_path, given_as):
    path = tmp_path / "no_such_folder" / "picture.png"
    with pytest.raises(FileNotFoundError) as failed:
        atomic_write_bytes(given_as(path), lambda f: f.write(b"x"))
    assert str(failed.value.filename) == str(path)  # not .picture.png.tmp-PID
    assert not path.parent.exists()


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"the old text")

    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as failed:
        atomic_write_bytes(path, fail)
    assert failed.value.filename == str(path)
    assert path.read_bytes() == b"the old text" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_on_a_read_only_file_system_the_first_error_is_said_naming_the_file(tmp_path, monkeypatch):
    """There even removing the temporary fails (EROFS): that second error must not hide the first."""
    path = tmp_path / "picture.png"

    def refused(self, missing_ok=False):
        raise OSError(30, "Read-only file system", str(self))

    def fail(f):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(type(path), "unlink", refused)
    with pytest.raises(OSError) as failed:
        atomic_write_bytes(path, fail)
    assert failed.value.filename == str(path)
