"""What every ``ngstore`` subcommand shares: exit statuses, one-line errors, progress,
readable numbers, argument parsing, and opening a store for a command.

Exit status (docs/operations.md §1): 0 success; 1 the checked thing is unsound; 2 usage
errors; 3 the store could not be opened (not a store, locked, needs recovery); 4 the
command failed while working; 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .directory import Directory
from .errors import (
    CorruptionError,
    FormatVersionError,
    NgStoreError,
    NotAStoreError,
    QuotaExceededError,
    StorageError,
    StoreLockedError,
)
from .fileio import DEFAULT_IO
from .layout import DATA_FILE

EXIT_OK = 0
EXIT_UNSOUND = 1
EXIT_USAGE = 2
EXIT_CANNOT_OPEN = 3
EXIT_FAILED = 4
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error the command reports as one line: ``message``, a ``hint``, an exit ``code``."""

    def __init__(self, message: str, hint: str | None = None, code: int = EXIT_FAILED, *,
                 where: str = "ngstore") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code
        self.where = where

    def line(self) -> str:
        text = " ".join(self.message.split())   # one line, whatever the message held
        if self.hint:
            text += f" (hint: {' '.join(self.hint.split())})"
        return f"{self.where}: {text}"


def fmt_bytes(n: float, *, exact: bool = True) -> str:
    """``"40 bytes"``, ``"1.05 MiB (1,101,004 bytes)"`` (``exact=False``: ``"1.05 MiB"``):
    readable, and exact where it counts."""
    n = int(n)
    if n < 1024:
        return f"{n} byte{'s' if n != 1 else ''}"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" + (f" ({n:,} bytes)" if exact else "")
    raise AssertionError("unreachable")


def fmt_positions(first: int, last: int) -> str:
    """A range of log positions: ``"positions 1..6"``, ``"position 7"``, or, for an empty
    range, ``"none (the next record will be position 5529)"``."""
    if last < first:
        return f"none (the next record will be position {first:,})"
    if last == first:
        return f"position {first:,}"
    return f"positions {first:,}..{last:,}"


class Progress:
    """Progress of a command's steps on stderr: a tqdm bar when stderr is a terminal, plain
    ``step i/n: name`` lines otherwise (a log file or a CI console gets readable lines, not
    bar redraws), nothing when ``quiet``."""

    def __init__(self, what: str, names: Sequence[str], quiet: bool = False) -> None:
        self.what = what
        self.total = len(names)
        self.quiet = quiet
        self.done = 0
        self.bar: Any = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=what, unit="step", leave=False, file=sys.stderr)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.bar is not None:
            self.bar.set_postfix_str(name)
        elif not self.quiet:
            print(f"{self.what}: step {self.done + 1}/{self.total}: {name}", file=sys.stderr, flush=True)
        result = fn()
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        return result

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def store_error(path: str, exc: NgStoreError, *, doing: str = "open") -> CliError:
    """The one-line error (and exit code) for a store that cannot be opened."""
    if isinstance(exc, StorageError):  # a full disk, a read-only file system, ...: exit 4
        return storage_cli_error(exc)
    if isinstance(exc, StoreLockedError):
        pid = _writer_pid(path)
        who = f"a live writer (pid {pid})" if pid else "another writer"
        return CliError(f"{path} is held by {who}: {doing} needs the store to itself",
                        "stop that process first, or use a read-only command (info, check, serve, "
                        "blackbox)", EXIT_CANNOT_OPEN)
    if isinstance(exc, NotAStoreError):
        return CliError(f"cannot {doing} {path}: {exc}",
                        "give a new or empty directory, or an ngstore store" if doing == "stress" else
                        "give the directory of an ngstore store (it holds a file named NGSTORE)",
                        EXIT_CANNOT_OPEN)
    if isinstance(exc, FormatVersionError):
        return CliError(f"cannot {doing} {path}: {exc}", "upgrade ngstore", EXIT_CANNOT_OPEN)
    if isinstance(exc, CorruptionError) and (exc.path or "").endswith(DATA_FILE):
        return CliError(f"cannot {doing} {path}: {exc}",
                        "LMDB's data file is damaged and the log cannot rebuild it: restore the "
                        "store from a backup (docs/operations.md §4.4)", EXIT_UNSOUND)
    if isinstance(exc, CorruptionError):
        return CliError(f"cannot {doing} {path}: {exc}",
                        f"run `ngstore wal verify {path}`, then `ngstore recover {path} --mode salvage` "
                        "or restore a backup (docs/operations.md §4.3)", EXIT_UNSOUND)
    if isinstance(exc, QuotaExceededError):
        return CliError(f"{doing} {path}: {exc}", "raise max_tokens / max_bytes", EXIT_FAILED)
    text = str(exc)
    hint = None
    if "needs recovery" in text:
        hint = f"run `ngstore recover {path}` (or open the store once for writing)"
    return CliError(f"cannot {doing} {path}: {text}", hint, EXIT_CANNOT_OPEN)


def storage_cli_error(exc: StorageError) -> CliError:
    """An error of the store's files (``errors.StorageError``): what failed and the
    store's state, its "what to do" as the hint; exit 4 (an OS error)."""
    return CliError(exc.summary(), exc.hint, EXIT_FAILED)


def _writer_pid(path: str) -> str | None:
    return Directory(path, DEFAULT_IO).live_writer_pid()


def open_store(path: str, **kw: Any) -> Any:
    """``ngstore.open(path, create=False, **kw)``, its errors as one-line ``CliError`` objects."""
    import ngstore

    if not DEFAULT_IO.exists(path):
        raise CliError(f"{path} does not exist", "give the directory of an ngstore store",
                       EXIT_CANNOT_OPEN)
    try:
        return ngstore.open(path, create=False, **kw)
    except NgStoreError as exc:
        raise store_error(path, exc) from exc


def positive_int(text: str) -> int:
    """An integer >= 1; ``1_000_000`` and ``1e6`` are accepted."""
    try:
        v = int(text.replace("_", ""))
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not f.is_integer():
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        v = int(f)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


class Formatter(argparse.HelpFormatter):
    """Descriptions wrapped line by line (indented lines, the examples, kept as written), and
    ``(default: X)`` added to every argument that has a meaningful default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return "\n".join(line if line.startswith("  ") or not line else
                         textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                         for line in text.splitlines())

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) \
                or action.default == [] or not (action.option_strings or action.nargs == "?"):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse, with every usage error as one line and a hint (never the usage block)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(message, f"`{self.prog} --help` lists the arguments", EXIT_USAGE,
                       where=self.prog)


def add_path(p: argparse.ArgumentParser, what: str = "the store directory") -> None:
    p.add_argument("path", metavar="PATH", help=what)


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, print the full traceback (also: NGSTORE_DEBUG=1)")
