"""Expected failures, shared by every stage and every command.

`UserError` is the base of every exception whose message is meant for the user as it is:
bad input, bad files on disk, an option that does not make sense. Command-line layers
(`plumbing.command`) turn it into a single line on stderr and a non-zero exit; library
users can catch it without also catching programming errors. Each stage has its own
subclass (`data_prep.errors.DataError`; checkpoints, configs, devices, training and
sampling in `gpt`).
"""
from __future__ import annotations

import os


class UserError(Exception):
    """A failure the user can act on: the message says what and, where it can, what to do."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to many lines),
    or its type's name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_version(found, supported: int, what: str, error: type[Exception] = UserError) -> None:
    """Refuse a file written in a newer format than this toolkit reads."""
    try:
        version = int(found or 0)
    except (TypeError, ValueError):
        raise error(f"{what} has a format version that is no number ({found!r}): the file is damaged") from None
    if version > supported:
        raise error(f"{what} has format version {found}, newer than this toolkit reads ({supported}); "
                    "upgrade the toolkit")


CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)}  # a newline in a name would break a one-line message


def display_name(path: "os.PathLike | str") -> str:
    """The path as text that can be written anywhere, on one line: bytes of a file name that
    are not UTF-8 (Python carries them as lone surrogates, which no UTF-8 file accepts) and
    control characters such as a newline become backslash escapes such as \\xff and \\x0a."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").translate(CONTROL)
