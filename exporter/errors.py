"""The one error type of the exporter: its message is the single line the CLI prints before exiting."""

import difflib
from collections.abc import Iterable


class ExportError(Exception):
    """Bad input or a failed check; the message says what to fix."""


def unknown_name(kind: str, name: str, valid: Iterable[str], where: str) -> ExportError:
    """An error for a name that does not exist, suggesting the nearest valid ones."""
    valid = list(valid)
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return ExportError(f"unknown {kind} {name!r}{hint} ({where} lists all {len(valid)})")
