"""Stores: where workflows live. Pick one by URL with :func:`open_store`."""

from __future__ import annotations

from typing import Any

from .base import Store
from .urls import DatabaseURL, parse_database_url

__all__ = ["DatabaseURL", "Store", "open_store", "parse_database_url"]


def open_store(url: str, **options: Any) -> Store:
    """Open the store that ``url`` names: ``sqlite:///path.db``, ``sqlite:///:memory:`` or ``postgresql://…``.

    Drivers are imported lazily; a missing one raises MissingDependency naming the extra to install.
    """
    parsed = parse_database_url(url)
    if parsed.backend == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(parsed.target, url=url, **options)
    from .postgres import PostgresStore

    return PostgresStore(parsed.target, **options)
