"""Nearest-neighbour search over extracted vectors, layer by layer: open_index(target) picks the back end."""

from __future__ import annotations

from engine.vector_index.base import CollectionSpec, Neighbour, VectorIndex, Writer

__all__ = ["CollectionSpec", "Neighbour", "VectorIndex", "Writer", "open_index"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_index(target: str) -> VectorIndex:
    """A folder (the embedded back end) or a postgresql:// URL (PostgreSQL with pgvector)."""
    if str(target).startswith(POSTGRES_SCHEMES):
        from engine.vector_index.pgvector import PgVectorIndex

        return PgVectorIndex(str(target))
    from engine.vector_index.embedded import EmbeddedIndex

    return EmbeddedIndex(target)
