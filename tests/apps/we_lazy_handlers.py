"""A handler module that loads its handlers lazily (PEP 562), one of which needs a missing package."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "send_report":
        import we_missing_pdf_library  # type: ignore[import-not-found]  # noqa: F401
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
