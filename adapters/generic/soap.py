"""``soap-upstream``: POST the SOAP envelope (and its SwA attachments) to the provider's SOAP endpoint.

Options (``services[].options`` in server.yaml):

``url``
    The provider information system's SOAP endpoint (``http://`` or ``https://``).
``timeout``
    Seconds to wait for its answer (default 30).

The request is sent as X-Road provider systems expect it from their security server: the envelope as the client
sent it (with its X-Road headers), ``SOAPAction: ""``, and, when the client attached files, the same SwA
``multipart/related`` message.  The provider's answer (a response envelope echoing the headers, a SOAP fault, or a
multipart answer with attachments) is returned unchanged; the server proxy checks and signs it as it does for a
``url`` backend.  Like ``http-upstream`` this is :class:`security_server.backends.HttpBackend` underneath
(see :mod:`adapters.generic.http`).
"""

from __future__ import annotations

from adapters.base import AdapterContext, register
from adapters.generic.http import DEFAULT_TIMEOUT_S, UpstreamAdapter, parse_timeout, parse_url
from bridge.message import Protocol

__all__ = ["SoapUpstream", "factory"]


class SoapUpstream(UpstreamAdapter):
    """``soap-upstream``: SOAP requests forwarded to the provider information system's endpoint."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__("soap-upstream", Protocol.SOAP, url, timeout_s)


def factory(context: AdapterContext) -> SoapUpstream:
    """Make the ``soap-upstream`` adapter from its options (``url``, ``timeout``)."""
    return SoapUpstream(parse_url("soap-upstream", context.options), parse_timeout("soap-upstream", context.options))


register("soap-upstream", factory)
