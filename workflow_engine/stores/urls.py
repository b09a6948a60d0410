"""Database URLs: the scheme names the backend."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..config import unclean
from ..errors import ConfigurationError

_HELP = "use sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory: or postgresql://user@host:5432/dbname"


@dataclass(frozen=True)
class DatabaseURL:
    backend: str  # "sqlite" or "postgres"
    target: str  # a file path, ":memory:", or a libpq connection URL


#: A URL's scheme and its "://"; one found later (in a query, "?next=http://…") is none.
_WELL_FORMED = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
#: The scheme a mistyped URL starts with ("postgresql:" of "postgresql:app:pw@db/app").
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

#: Query parameters of a libpq URL that hold a secret.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def scheme_of(url: str) -> str | None:
    """The scheme of ``url``, lower case, if it starts with ``scheme://``; else None (mistyped)."""
    found = _WELL_FORMED.match(url)
    return found.group(1).lower() if found else None


def _split_query(url: str) -> tuple[str, str, str]:
    """(the URL before its query, "?" or "", the query)."""
    return url.partition("?")


def _masked_query(query: str) -> str:
    return "&".join(
        f"{key}=***" if key.lower() in _SECRET_PARAMETERS else part
        for part in query.split("&")
        for key in [part.partition("=")[0]]
    )


def secrets(url: str) -> list[str]:
    """The secrets ``url`` holds (its password, ``password=`` and ``sslpassword=`` values), as
    written and percent-decoded, longest first: what must never be shown."""
    found: list[str] = []
    well_formed = _WELL_FORMED.match(url)
    if well_formed:
        netloc = url[well_formed.end() :].partition("/")[0]
        credentials, at, _ = netloc.rpartition("@")
        if at:
            found.append(credentials.partition(":")[2])
    else:  # mistyped ("postgresql:app:pw@db/app"): what stands between its scheme and an "@"
        head = _split_query(url)[0]
        scheme = _SCHEME.match(head)
        credentials, at, _ = head[scheme.end() if scheme else 0 :].rpartition("@")
        if at:
            found.append(credentials.partition(":")[2] or credentials)
    for part in _split_query(url)[2].split("&"):
        key, _, value = part.partition("=")
        if key.lower() in _SECRET_PARAMETERS:
            found.append(value)
    found += [unquote(value) for value in found]
    return sorted({value for value in found if value}, key=len, reverse=True)


def shown(url: str) -> str:
    """``url`` as it may appear in a log or an error: a SQLite file's absolute path, no password."""
    scheme = scheme_of(url)
    rest = url.partition("://")[2] if scheme else ""
    if scheme == "sqlite" and rest.startswith("/") and rest[1:] != ":memory:":
        return f"sqlite:///{os.path.abspath(rest[1:])}"
    if scheme is None:  # mistyped: all that stands between its scheme and an "@" may be a password
        head, question, query = _split_query(url)
        before, at, after = head.rpartition("@")
        if at:
            prefix = _SCHEME.match(before)
            head = f"{prefix.group() if prefix else ''}***@{after}"
        return f"{head}{question}{_masked_query(query) if question else ''}"
    netloc, slash, tail = rest.partition("/")
    credentials, at, host = netloc.rpartition("@")
    if at and ":" in credentials:
        netloc = f"{credentials.split(':', 1)[0]}:***@{host}"
    path, question, query = tail.partition("?")
    if question:
        query = _masked_query(query)
    return f"{url[: len(url) - len(rest) - 3]}://{netloc}{slash}{path}{question}{query}"


def parse_database_url(url: str) -> DatabaseURL:
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"the database URL must be a non-empty string, got {url!r}; {_HELP}")
    if unclean(url):  # "sqlite:///app.db\r" would be another file, ":memory: " a file on disk
        text = url if url.lower().startswith("sqlite:") else shown(url)  # no password either way
        raise ConfigurationError(
            f"malformed database URL {text!r}: it has whitespace around it or a control character "
            f"in it; {_HELP}"
        )
    scheme = scheme_of(url)
    if scheme is None:
        raise ConfigurationError(f"malformed database URL {shown(url)!r}: it has no scheme; {_HELP}")
    rest = url.partition("://")[2]
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
        try:
            urlsplit(url)  # an unclosed IPv6 bracket, characters no URL may hold
        except ValueError:  # its message may quote the password: say nothing of the URL's text
            raise ConfigurationError(f"malformed PostgreSQL URL {shown(url)!r}; {_HELP}") from None
        # Anything else is libpq's to judge: several hosts for failover, no host (the local
        # socket, or PGHOST), a password with a '#' in it.
        return DatabaseURL("postgres", "postgresql://" + rest)
    raise ConfigurationError(f"unsupported database URL scheme {scheme!r}; {_HELP}")
