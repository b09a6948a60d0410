"""``WorkflowEngineFlask``: the Flask extension that mounts the API (and, optionally, the page)."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, request
from werkzeug.exceptions import Forbidden, HTTPException, RequestEntityTooLarge, default_exceptions

from ...engine import WorkflowEngine
from ...errors import ConfigurationError
from . import api, ui
from .errors import ApiError, json_error
from .state import EXTENSION_KEY, AuthHook, State, VoterHook, state


class WorkflowEngineFlask:
    """REST endpoints for a :class:`~workflow_engine.WorkflowEngine`, as a Flask extension.

    >>> WorkflowEngineFlask(app, engine, url_prefix="/api", ui=True)

    or, with an app factory, ``ext = WorkflowEngineFlask(engine=engine)`` and later
    ``ext.init_app(app)``. ``auth(request)`` runs before every request to these
    endpoints (and the page) and raises to refuse it. ``voter(request)`` names the council
    member the caller votes as (None: the caller may not vote); without it, a vote names its
    voter itself, and anyone let in may cast any member's vote. ``ui=True`` also serves the
    HTML page at ``/workflows``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        engine: WorkflowEngine | None = None,
        *,
        url_prefix: str = "/api",
        auth: AuthHook | None = None,
        voter: VoterHook | None = None,
        max_body_bytes: int = 1_000_000,
        ui: bool = False,
    ) -> None:
        if not isinstance(url_prefix, str) or (url_prefix and not url_prefix.startswith("/")):
            raise ConfigurationError(f"url_prefix must be empty or start with '/', got {url_prefix!r}")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
            raise ConfigurationError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
        if auth is not None and not callable(auth):
            raise ConfigurationError("auth must be a callable auth(request) -> None, or None")
        if voter is not None and not callable(voter):
            raise ConfigurationError("voter must be a callable voter(request) -> str | None, or None")
        self.engine = engine
        self.url_prefix = url_prefix.rstrip("/")
        self.auth = auth
        self.voter = voter
        self.max_body_bytes = max_body_bytes
        self.ui = bool(ui)
        if ui and (self.url_prefix in ("", "/workflows") or self.url_prefix.startswith("/workflows/")):
            raise ConfigurationError(
                f"ui=True needs a url_prefix outside /workflows, got {url_prefix!r}: the page is served "
                "at /workflows, and the API's routes would sit among its own (use /api, say)"
            )
        if app is not None:
            self.init_app(app, engine)

    def init_app(self, app: Flask, engine: WorkflowEngine | None = None) -> None:
        """Register the endpoints on ``app``, backed by ``engine`` (or the one given to the constructor)."""
        engine = engine if engine is not None else self.engine
        if not isinstance(engine, WorkflowEngine):
            raise ConfigurationError("WorkflowEngineFlask needs an engine: init_app(app, engine)")
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError("WorkflowEngineFlask is already registered on this app")
        app.extensions[EXTENSION_KEY] = State(
            engine=engine,
            url_prefix=self.url_prefix,
            auth=self.auth,
            voter=self.voter,
            max_body_bytes=self.max_body_bytes,
            ui=self.ui,
        )
        bp = api.blueprint(_before_request)
        app.register_blueprint(bp, url_prefix=self.url_prefix or None)
        engine.add_listener(api.note_created)
        if self.ui:
            page = ui.blueprint(_before_request)
            app.register_blueprint(page, url_prefix="/workflows")
        if self.url_prefix:
            _json_for_routing_errors(app, self.url_prefix)


def _before_request() -> None:
    st = state()
    limit = st.max_body_bytes
    app_limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if isinstance(app_limit, int) and 0 <= app_limit < limit:  # the app's own limit, if smaller
        limit = app_limit
    size = request.content_length
    # A chunked body (no Content-Length) is read up to werkzeug's limit and no further, quietly: one
    # that fills it was cut. So it is read to one byte more than ours, whoever reads it first (an
    # auth hook that checks a signature, or the check below), which tells a body of exactly the
    # limit (accepted, as with a Content-Length) from a longer one.
    request.max_content_length = limit if size is not None else limit + 1
    if size is not None and size > limit:
        raise ApiError(413, "request_entity_too_large", f"the body is {size} bytes; the limit is {limit}")
    # A CORS preflight never carries credentials, and gets no data (Flask answers OPTIONS itself; a
    # CORS layer such as flask-cors adds its headers): refused, no browser app could ever call the API.
    preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    if st.auth is not None and not preflight:
        try:
            st.auth(request)
        except PermissionError as exc:
            raise Forbidden(str(exc) or None) from exc
    # Read here (once the caller is let in), for the API's JSON and the page's forms alike (werkzeug
    # parses a form from these cached bytes), so that neither acts on a cut body.
    if size is None:
        try:
            read = len(request.get_data(cache=True))
        except RequestEntityTooLarge:  # werkzeug's own refusal, for a stream that says it has ended
            read = limit + 1
        finally:
            request.max_content_length = limit
        if read > limit:
            raise ApiError(
                413, "request_entity_too_large", f"the body is over {limit} bytes; the limit is {limit}"
            )


def _json_for_routing_errors(app: Flask, prefix: str) -> None:
    """404 and 405 under the API prefix answer JSON too (they happen before any blueprint is chosen).

    Flask tries an app's handlers for a status code before its handlers for an exception class,
    so these are registered for the two codes themselves. Elsewhere they hand the error to what
    the app registered for that code before, or else, as Flask would have, to a handler for the
    exception's class (``HTTPException``, ``Exception``): the request's blueprints' first, then the
    app's, looked up at that moment (they may be registered later)."""
    specs = app.error_handler_spec
    spec = specs[None]

    def json_under_prefix(code: int) -> Any:
        previous = spec[code].get(default_exceptions[code])

        def handle(exc: HTTPException) -> Any:
            if request.blueprint is None and (
                request.path == prefix or request.path.startswith(prefix + "/")
            ):
                return json_error(exc)
            if previous is not None:
                return previous(exc)
            for name in (*request.blueprints, None):
                by_class = specs[name][None] if name in specs else {}
                for cls in type(exc).__mro__:
                    fallback = by_class.get(cls)
                    if fallback is not None:
                        return fallback(exc)
            return exc

        return handle

    for code in (404, 405):
        app.register_error_handler(code, json_under_prefix(code))
