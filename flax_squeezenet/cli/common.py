"""What the `squeezenet-*` commands share: one-line usage errors, argument types, quiet libraries."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn

from flax_squeezenet.storage import files
from flax_squeezenet.storage.download import DownloadError

USAGE_ERROR = 2  # argparse's status for a bad command line


class UsageError(ValueError):
    """A command line that asks for something impossible, found before any work: status `USAGE_ERROR`."""


USAGE_ERRORS = (UsageError, files.OutputPathError)  # what a command reports with status USAGE_ERROR
COMMAND_ERRORS = (OSError, ValueError, ImportError, DownloadError)  # what a command reports in one line


def report_error(prog: str, error: Exception) -> int:
    """Print `error` as the command's one line on stderr; its exit status: `USAGE_ERROR` or 1."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return USAGE_ERROR if isinstance(error, USAGE_ERRORS) else 1


def parse_with_config_overrides(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, list[str]]:
    """`parser`'s arguments and the `--config.key=value` overrides among `argv`; any other unknown argument
    is a usage error."""
    args, overrides = parser.parse_known_args(argv)
    unknown = [arg for arg in overrides if not arg.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, overrides


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr ("PROG: error: ...") and status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def positive_int(text: str) -> int:
    """`text` as an integer >= 1, else an argparse error saying so."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def quiet_library_logs() -> None:
    """Keep Orbax's (absl's) warnings off stderr, where a command prints only its own line.

    Orbax warns before it fails on a damaged checkpoint, which the command then reports itself
    (tests/test_cli_errors.py::test_damaged_checkpoint_is_one_line).
    """
    logging.getLogger("absl").setLevel(logging.ERROR)
