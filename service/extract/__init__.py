"""Batch extraction of whole image collections: `python -m service.extract` or `service.extract.run(...)`."""

from service.extract.errors import ExtractError, UsageError
from service.extract.job import run

__all__ = ["ExtractError", "UsageError", "run"]
