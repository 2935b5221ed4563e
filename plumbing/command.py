"""The one way every command fails: a single line on stderr, a non-zero exit, no traceback.

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)   # build_parser() returns a Parser
        return run_command("gpt-train", lambda: do_the_work(args))

Exit codes: 0 done; 1 an expected failure (a `UserError`, or an operating-system error
such as a full disk or a read-only folder); 2 a usage mistake (argparse); 130 Ctrl-C; 143
SIGTERM. A reader that goes away (`gpt-sample | head`) ends the command quietly; a command
whose product is files (gpt-prepare, gpt-train, gpt-export, gpt-plot) goes on without it.
Warnings are shown as one line each, `PROG: warning: ...`, while the command runs.

It lives in `plumbing`, below both packages, so that every command shares
it without `gpt-prepare` importing torch.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from typing import Callable

from .errors import UserError, first_line
from .output_folder import for_the_user


class Parser(argparse.ArgumentParser):
    """Usage mistakes are reported like every other error: one line, exit status 2."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def os_error_line(e: OSError) -> str:
    """An operating-system error in words: what failed, on which file."""
    where = f": {for_the_user(e.filename)}" if e.filename else ""  # a file of an unfinished output: the output
    return f"{e.strerror or first_line(e)}{where}"


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so Python's own flush at exit does not
    fail again with a second traceback."""
    silence(sys.stdout)


def silence(stream) -> None:
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both of the first two
        pass


class Terminated(BaseException):
    """SIGTERM, raised where the command is, so that it unwinds as for Ctrl-C and removes
    what it had half written (a BaseException: no `except Exception` swallows it)."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


class ReaderMayGo:
    """A text stream whose reader may go away (`gpt-prepare corpus | head`), or whose disk
    may fill behind a redirect, without stopping a command whose product is files: what it
    writes then is dropped, not an error (as gpt-train's `progress.tolerant` does for its
    lines)."""

    def __init__(self, stream):
        self.stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self.stream.write(text)
            except OSError:
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except OSError:
                self.gone = True

    def __getattr__(self, name):
        return getattr(self.stream, name)


def run_command(prog: str, work: Callable[[], int | None], interrupted: str | None = "interrupted",
                makes_files: bool = False) -> int:
    """Run `work()` and turn every expected failure into one line and an exit code.
    `interrupted`: what Ctrl-C (or SIGTERM) says (None: nothing, for a command the user
    stops on purpose). `makes_files`: the command's product is files, not its output, so
    it goes on when its output or messages can no longer be written (else a reader that
    goes away ends it, quietly: `gpt-sample | head`)."""
    take_ctrl_c()
    streams = sys.stdout, sys.stderr
    encoding_errors = []  # each stream's own setting, put back after
    for stream in streams:
        errors = getattr(stream, "errors", None)
        if escape_unencodable(stream):
            encoding_errors.append((stream, errors))
    if makes_files:
        sys.stdout, sys.stderr = ReaderMayGo(sys.stdout), ReaderMayGo(sys.stderr)
    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        previous = None
    try:
        return _run_command(prog, work, interrupted)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if makes_files:
            for wrapped in (sys.stdout, sys.stderr):
                if isinstance(wrapped, ReaderMayGo) and wrapped.gone:
                    silence(wrapped.stream)  # Python's own flush at exit would fail again
            sys.stdout, sys.stderr = streams
        for stream, errors in encoding_errors:
            try:
                stream.reconfigure(errors=errors)  # flushes first: a reader gone, a disk full
            except (OSError, ValueError):
                pass


def take_ctrl_c() -> None:
    """From here Ctrl-C is a KeyboardInterrupt, which the command answers: until now an
    installed command's entry point ended the process on it (see gpt/entry_points.py)."""
    if getattr(signal.getsignal(signal.SIGINT), "while_starting", False):
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except ValueError:  # not the main thread, which keeps its handler
            pass


def escape_unencodable(stream) -> bool:
    """Make `stream` write what its encoding cannot as backslash escapes: a file name or a
    text outside ASCII on a terminal whose encoding is ASCII (PYTHONIOENCODING=ascii, or the C
    locale without Python's UTF-8 mode) is then a line with an escape in it, not a
    UnicodeEncodeError's traceback. Returns whether the stream was changed (False for one that
    cannot be)."""
    try:
        stream.reconfigure(errors="backslashreplace")
    except (AttributeError, ValueError, OSError):  # not a text file of Python's own, or already closed
        return False
    return True


def _run_command(prog: str, work: Callable[[], int | None], interrupted: str | None) -> int:

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        try:
            print(f"{prog}: warning: {message}", file=sys.stderr)
        except OSError:
            pass

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return work() or 0
    except UserError as e:
        return fail(prog, str(e), 1)
    except KeyboardInterrupt:
        return fail(prog, interrupted, 130) if interrupted else 130
    except Terminated:
        return (fail(prog, f"stopped by SIGTERM; {interrupted}", 128 + signal.SIGTERM) if interrupted
                else 128 + signal.SIGTERM)
    except BrokenPipeError:
        silence_stdout()
        return 0
    except MemoryError:
        return fail(prog, "out of memory", 1)
    except OSError as e:
        code = fail(prog, os_error_line(e), 1)
        try:
            sys.stdout.flush()
        except OSError:  # standard output itself failed (a full disk behind a redirect)
            silence_stdout()
        return code


def command(prog: str, build_parser: Callable[[], argparse.ArgumentParser],
            work: Callable[[argparse.Namespace], int | None], interrupted: str | None = "interrupted",
            makes_files: bool = False) -> Callable[[list[str] | None], int]:
    """A command's `main(argv)`: parse the arguments, then `work(args)` through run_command."""

    def main(argv: list[str] | None = None) -> int:
        args = build_parser().parse_args(argv)
        return run_command(prog, lambda: work(args), interrupted, makes_files)

    return main


def fail(prog: str, message: str, code: int) -> int:
    try:
        print(f"{prog}: error: {message}", file=sys.stderr)
    except OSError:
        pass
    return code
