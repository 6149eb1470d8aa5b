"""Safe parsing of untrusted XML: the one way Körpü turns bytes from the network or disk into an lxml tree.

Every document Körpü accepts from outside (global configuration, the configuration anchor, and later SOAP
messages) goes through :func:`parse_xml`, which

* refuses documents larger than ``max_bytes`` *before* parsing, so a huge body never reaches libxml2;
* parses with entity resolution, DTD loading and network access switched off and ``huge_tree`` off (libxml2's
  own limits on text node size and nesting stay active);
* refuses any document that has a document type declaration at all (internal subset or external identifier) or
  an unexpanded entity reference, which closes XXE and entity-expansion ("billion laughs") attacks even where
  the parser would not have expanded anything: a protocol that has no use for DTDs has no reason to accept one;
* refuses trees nested deeper than ``max_depth`` elements.

Errors are raised as the :class:`~bridge.errors.KorpuError` subclass the caller passes in, so each protocol
reports them with its own fault code (``Server.MalformedGlobalConf`` for configuration, ``Server.InvalidAnchor``
for the anchor, a client fault for messages).  Messages are short and never echo document content.
"""

from __future__ import annotations

from typing import Any, cast

from lxml import etree

from bridge.errors import KorpuError

__all__ = ["DEFAULT_MAX_DEPTH", "parse_xml", "safe_parser", "schema_error"]

#: Default element nesting limit: far above what any Körpü format needs (global configuration nests 5 deep).
DEFAULT_MAX_DEPTH = 64


def safe_parser() -> etree.XMLParser:
    """A new lxml parser configured for untrusted input (no entities, DTDs, network or huge trees).

    Exposed so that libraries that re-parse a document themselves (signxml's verifier) can be given the same
    settings.  Comments and processing instructions are kept: they are harmless once no entity is expanded, and
    removing them would change what canonicalisation sees.
    """
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
    )


def parse_xml(
    data: bytes,
    *,
    max_bytes: int,
    error: type[KorpuError],
    max_depth: int = DEFAULT_MAX_DEPTH,
    what: str = "XML document",
) -> etree._Element:
    """Parse untrusted ``data`` and return the root element, or raise ``error``.

    ``what`` names the document in error messages (``"global configuration"``, ``"configuration anchor"``).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error(f"{what} must be bytes")
    # (1) Size cap first: nothing larger than the cap is ever handed to the parser.
    if len(data) > max_bytes:
        raise error(f"{what} is larger than {max_bytes} bytes")
    # (2) Parse with a hardened parser.  Any libxml2 failure (including its own limits) is a malformed document.
    try:
        root = etree.fromstring(bytes(data), parser=safe_parser())
    except etree.XMLSyntaxError as exc:
        raise error(f"{what} is not well-formed XML: {_first_line(exc)}") from None
    except ValueError as exc:  # lxml raises ValueError for e.g. unicode strings with encoding declarations.
        raise error(f"{what} cannot be parsed: {_first_line(exc)}") from None
    if root is None:  # Defensive: lxml returns None for some recoverable inputs with recover=True.
        raise error(f"{what} is empty")
    # (3) No document type declaration of any kind.
    docinfo = root.getroottree().docinfo
    doctype = str(getattr(docinfo, "doctype", "") or "")  # lxml-stubs do not declare DocInfo.doctype
    if doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise error(f"{what} must not contain a document type declaration (DOCTYPE)")
    # (4) No entity references survive (they could only come from a DTD, which is refused above; this is the
    #     belt to that pair of braces).
    for _entity in root.iter(etree.Entity):
        raise error(f"{what} must not contain entity references")
    # (5) Depth cap, counted with an explicit walk so that the check itself cannot recurse.
    depth = 0
    for event, _elem in etree.iterwalk(root, events=("start", "end")):
        if event == "start":
            depth += 1
            if depth > max_depth:
                raise error(f"{what} is nested deeper than {max_depth} elements")
        else:
            depth -= 1
    return root


def schema_error(schema: etree.XMLSchema) -> str:
    """The last validation error of ``schema`` as ``line N: message``, for error messages after validate()."""
    last = cast(Any, schema.error_log).last_error  # lxml-stubs do not declare _ErrorLog.last_error
    return f"line {last.line}: {last.message}"


def _first_line(exc: Exception) -> str:
    # libxml2 messages are single lines naming line and column; cap the length so a message never carries much.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
