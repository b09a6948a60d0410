"""Integrations with web frameworks, each behind its own extra.

- :mod:`workflow_engine.contrib.flask`: REST endpoints, an OpenAPI document and an
  HTML page for Flask (``pip install ".[flask]"`` in a checkout).
"""
