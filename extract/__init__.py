"""Batch extraction of whole image collections: `python -m extract` or `extract.run(...)`."""

from extract.errors import ExtractError, UsageError
from extract.job import run

__all__ = ["ExtractError", "UsageError", "run"]
