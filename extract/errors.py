"""The batch edge's own errors, members of the project's one family (engine/errors.py).

The CLI (extract/__main__.py) turns any FeaturesError into its one `error:` line: exit status 1 for Unavailable
(the run could not go on; rerun to resume), 2 for every other kind (what was asked cannot work as given).
"""

from engine.errors import InvalidInput, Misconfigured, Unavailable


class UsageError(InvalidInput):
    """Bad arguments (no inputs, an out dir holding another job, a wrong API key): exit status 2."""


class ExtractError(Unavailable):
    """The run could not go on (server unreachable, Ray failed); what is done is kept for a rerun: exit status 1."""


class MissingExtra(Misconfigured):
    """A feature of the `extract` extra (progress bar, Parquet, Ray, --server) whose package is not installed."""
