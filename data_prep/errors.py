"""gpt-prepare's expected failure (`DataError`), and its files that fail to be written."""
from __future__ import annotations

from contextlib import contextmanager

from plumbing.errors import UserError, first_line
from plumbing.output_folder import for_the_user


class DataError(UserError):
    """Bad input or bad files on disk: the message is meant for the user as it is."""


@contextmanager
def writing(path):
    """Turns a failure to write one of the command's own files (a full disk, a file size
    limit) into a DataError naming the file. gpt-prepare reads its inputs in the same code,
    and an OSError there is the input's fault, which would skip the input, where a failed
    write must stop the run."""
    try:
        yield
    except OSError as e:
        raise DataError(f"cannot write {for_the_user(path)}: {e.strerror or first_line(e)}") from None
