"""Database URLs: the scheme names the backend."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ConfigurationError

_HELP = "use sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory: or postgresql://user@host:5432/dbname"


@dataclass(frozen=True)
class DatabaseURL:
    backend: str  # "sqlite" or "postgres"
    target: str  # a file path, ":memory:", or a libpq connection URL


def shown(url: str) -> str:
    """``url`` as it may appear in a log or an error: a SQLite file's absolute path, no password."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() == "sqlite" and rest.startswith("/") and rest[1:] != ":memory:":
        return f"sqlite:///{os.path.abspath(rest[1:])}"
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    credentials, at, host = netloc.rpartition("@")
    if at and ":" in credentials:
        netloc = f"{credentials.split(':', 1)[0]}:***@{host}"
    path, question, query = tail.partition("?")
    if question:
        query = "&".join(
            f"{key}=***" if key.lower() == "password" else part
            for part in query.split("&")
            for key in [part.partition("=")[0]]
        )
    return f"{scheme}://{netloc}{slash}{path}{question}{query}"


def parse_database_url(url: str) -> DatabaseURL:
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"the database URL must be a non-empty string, got {url!r}; {_HELP}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(f"malformed database URL {url!r}: it has no scheme; {_HELP}")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigurationError(f"malformed SQLite URL {url!r}: expected sqlite:///<path>; {_HELP}")
        path = rest[1:]
        if "?" in path or "#" in path:
            raise ConfigurationError(
                f"malformed SQLite URL {url!r}: query strings are not supported; {_HELP}"
            )
        return DatabaseURL("sqlite", path)
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        if not parts.hostname and "host=" not in (parts.query or ""):
            raise ConfigurationError(f"malformed PostgreSQL URL: it names no host; {_HELP}")
        return DatabaseURL("postgres", "postgresql://" + rest)
    raise ConfigurationError(f"unsupported database URL scheme {scheme!r}; {_HELP}")
