"""Generic adapters: put an existing system behind a security server without writing code.

* ``http-upstream`` (:mod:`adapters.generic.http`) — forwards REST requests to the provider system's URL;
* ``soap-upstream`` (:mod:`adapters.generic.soap`) — POSTs SOAP envelopes (and SwA attachments) to its endpoint;
* ``sql`` (:mod:`adapters.generic.sql`) — publishes read-only, parameterised SELECTs as REST GET services.

Each is declared in the ``korpu.adapters`` entry-point group (setup.cfg), so a security server finds it by name
without importing this package first; importing it also registers all three in-process (:func:`adapters.base.register`).
Options and examples: docs/adapters.md.
"""

from __future__ import annotations

from adapters.generic import http, soap, sql

__all__ = ["http", "soap", "sql"]
