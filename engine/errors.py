"""The one family of errors raised anywhere in the project, named by what went wrong, with no transport in them.

Each edge turns them into its own form in one place: service/problems.py (an HTTP status and problem+json),
extract's failed.csv rows and every CLI's single `error:` line. `detail` says what to fix; `facts` holds what a
program can act on (valid names, a limit, an input's index, seconds to wait before retrying).
"""

from __future__ import annotations

from typing import Any


class FeaturesError(Exception):
    """Root of the family: something this project refuses or cannot do, said in words a caller can act on."""

    def __init__(self, detail: str, **facts: Any):
        super().__init__(detail)
        self.detail = detail
        self.facts = facts

    def about(self, subject: str, **facts: Any) -> FeaturesError:
        """The same error, of the same kind, naming what it is about (e.g. "inputs[2] (cat.jpg)")."""
        error = FeaturesError.__new__(type(self))
        FeaturesError.__init__(error, f"{subject}: {self.detail}", **{**self.facts, **facts})
        return error


class InvalidInput(FeaturesError):
    """A request, option or argument that cannot work as given: fix it and send it again."""


class UnknownName(FeaturesError):
    """A model, layer or label set that does not exist; `facts["valid"]` lists what does."""


class TooLarge(FeaturesError):
    """Input beyond a limit of this deployment (`facts["limit"]`); smaller input would be served."""


class Unprocessable(FeaturesError):
    """Well-formed input that still cannot be processed: an undecodable image, a non-finite result."""


class Conflict(FeaturesError):
    """The request is fine but meets state that disagrees with it: an index built by another version of a model."""


class Unavailable(FeaturesError):
    """Not now: still loading, stopping or busy; the same input succeeds later (`facts["retry_after"]` seconds)."""


class Misconfigured(FeaturesError):
    """The deployment itself is wrong (settings, manifest, models folder): the operator must fix it."""
