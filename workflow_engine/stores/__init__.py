"""Stores: where workflows live. Pick one by URL with :func:`open_store`."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .base import Store
from .urls import DatabaseURL, parse_database_url, shown

#: The keyword options each backend's store takes, through :func:`open_store`.
_OPTIONS = {"sqlite": ("busy_timeout", "create"), "postgres": ("pool_size", "connect_timeout", "create")}

__all__ = ["DatabaseURL", "Store", "open_store", "parse_database_url"]


def open_store(url: str, **options: Any) -> Store:
    """Open the store that ``url`` names: ``sqlite:///path.db``, ``sqlite:///:memory:`` or ``postgresql://…``.

    ``options`` are the store's own: ``busy_timeout`` for SQLite; ``pool_size`` and
    ``connect_timeout`` for PostgreSQL; ``create`` for both (default True: the first use creates
    the schema, and the SQLite file, where there are none; False: a database without our tables
    raises ConfigurationError instead, and is left as it was). Pending migrations run on first
    use either way. Another option raises ConfigurationError naming those.
    Drivers are imported lazily; a missing one raises MissingDependency naming the extra to install.
    """
    parsed = parse_database_url(url)
    known = _OPTIONS[parsed.backend]
    unknown = sorted(set(options) - set(known))
    if unknown:
        name = "SQLite" if parsed.backend == "sqlite" else "PostgreSQL"
        raise ConfigurationError(
            f"{', '.join(map(repr, unknown))}: not an option of a {name} store, which takes "
            f"{', '.join(known[:-1])} and {known[-1]} (the database URL is {shown(url)})"
        )
    if parsed.backend == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(parsed.target, url=url, **options)
    from .postgres import PostgresStore

    return PostgresStore(parsed.target, **options)
