"""REST path patterns for access rights, and the normalisation guard applied before any matching.

A pattern is an absolute path whose segments are matched one by one against the request path's segments::

    pattern   := "/" segment ("/" segment)*
    segment   := literal | "*" | "**"

* a **literal** segment matches a request segment that is exactly equal (case-sensitive, both in the canonical
  percent-encoded form the REST parser produces; ``%xx`` escapes in patterns are upper-cased when compiled so
  ``%c3%bc`` and ``%C3%BC`` are the same pattern);
* ``*`` matches exactly one **non-empty** segment;
* ``**`` matches zero or more segments of any content, and may appear anywhere (more than once, too).

``*`` inside a segment (``/files/report-*``) is not part of the grammar: such a pattern is rejected rather than
read literally, so nobody writes one believing it is a prefix match.  Patterns never contain a query string.

Examples: ``/persons/*`` matches ``/persons/123`` but neither ``/persons`` nor ``/persons/123/docs``;
``/persons/**`` matches ``/persons``, ``/persons/`` and ``/persons/1/docs``; ``/**/photo`` matches every path
whose last segment is ``photo``.

Request paths are checked by :func:`path_problem` before they are matched.  A path carrying a dot-segment
(also percent-encoded, ``%2e%2e``), an encoded slash or backslash, a NUL, an empty interior segment (``//``) or
a query/fragment is *not normalised*; the engine denies it outright, because the upstream that finally serves the
request may resolve it differently from the pattern matcher (``/persons/../admin`` must never be judged as a
``/persons/**`` request).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

from bridge.errors import ConfigError

__all__ = ["PathPattern", "compile_pattern", "path_problem", "split_path"]

#: Marker tokens for the two wildcards (compared by identity in the matcher).
_ONE: Final = object()
_ANY: Final = object()

# Percent-escapes that, decoded by some upstream, would change the path's structure; compared lower-cased.
_ENCODED_SEPARATORS = ("%2f", "%5c", "%00")
_PERCENT_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


def path_problem(path: str) -> str | None:
    """Say why ``path`` is not a normalised absolute request path, or return ``None`` if it is.

    The checks are deliberately stricter than RFC 3986 normalisation requires: anything an upstream might decode
    into a different path structure is refused, so the engine fails closed instead of guessing.
    """
    if not path.startswith("/"):
        return "it does not start with '/'"
    if "\x00" in path:
        return "it contains a NUL character"
    if "\\" in path:
        return "it contains a backslash"
    if "?" in path or "#" in path:
        return "it contains a query or fragment"
    if "%" in path:
        lowered = path.lower()
        for escape in _ENCODED_SEPARATORS:
            if escape in lowered:
                return f"it contains the encoded character {escape.upper()}"
    segments = path[1:].split("/")
    # The last segment may be empty (a trailing slash); an empty one elsewhere is "//", which servers disagree on.
    for segment in segments[:-1]:
        if not segment:
            return "it contains an empty segment ('//')"
    for segment in segments:
        if _is_dot_segment(segment):
            return f"it contains the dot-segment {segment!r}"
    return None


def _is_dot_segment(segment: str) -> bool:
    # Only "." and ".." (in any mix of literal and %2E/%2e spelling) are dot-segments; "..." or ".hidden" are not.
    if len(segment) > 6 or ("." not in segment and "%" not in segment):
        return False
    return segment.lower().replace("%2e", ".") in (".", "..")


def split_path(path: str) -> list[str]:
    """The segments of an absolute path: ``/a/b`` gives ``["a", "b"]``, ``/`` gives ``[""]``."""
    return path[1:].split("/")


@dataclass(frozen=True, slots=True, eq=False)
class PathPattern:
    """A compiled path pattern; build it with :func:`compile_pattern` (cached), not directly.

    ``text`` is the canonical pattern (escapes upper-cased), used in decision explanations.
    """

    text: str
    _tokens: tuple[object, ...]
    # Strategy chosen at compile time so that the common shapes never walk segments:
    # "exact" (no wildcard), "prefix" (literals then one trailing "**"), or "general".
    _kind: str
    _prefix: str

    def matches(self, path: str) -> bool:
        """Whether the normalised request ``path`` matches this pattern.

        ``path`` must already have passed :func:`path_problem`; the engine guarantees that.
        """
        if self._kind == "exact":
            return path == self.text
        if self._kind == "prefix":
            # "/a/**" covers "/a" itself and everything below it, but not "/ab".
            prefix = self._prefix
            return path == prefix or path.startswith(prefix + "/") or (not prefix and path.startswith("/"))
        return _match_segments(self._tokens, split_path(path))

    def __repr__(self) -> str:
        return f"PathPattern({self.text!r})"


def _match_segments(tokens: tuple[object, ...], segments: list[str]) -> bool:
    """Greedy wildcard matching over segments, with backtracking to the last ``**`` only.

    This is the classic linear-space glob algorithm (``**`` plays the role of ``*`` over characters and ``*``
    that of ``?``); it runs in O(len(tokens) * len(segments)) at worst, so a hostile path cannot make it blow up
    the way a backtracking regex could.
    """
    t = s = 0
    star_t = -1
    star_s = 0
    n_tokens, n_segments = len(tokens), len(segments)
    while s < n_segments:
        if t < n_tokens:
            token = tokens[t]
            if token is _ANY:
                star_t, star_s = t, s
                t += 1
                continue
            if (token is _ONE and segments[s]) or token == segments[s]:
                t += 1
                s += 1
                continue
        if star_t >= 0:
            # Let the last "**" swallow one more segment and retry from just after it.
            star_s += 1
            s = star_s
            t = star_t + 1
            continue
        return False
    while t < n_tokens and tokens[t] is _ANY:
        t += 1
    return t == n_tokens


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> PathPattern:
    """Compile (once; results are cached) a path pattern, raising :class:`ConfigError` if it is malformed.

    Patterns must themselves be normalised paths (see :func:`path_problem`), may use ``*`` and ``**`` only as
    whole segments, and are canonicalised by upper-casing percent-escapes.
    """
    if not isinstance(pattern, str):
        raise ConfigError(f"path pattern must be a string, not {type(pattern).__name__}")
    canonical = _PERCENT_ESCAPE.sub(lambda m: m.group(0).upper(), pattern)
    if canonical.count("%") != len(_PERCENT_ESCAPE.findall(canonical)):
        raise ConfigError(f"path pattern {pattern!r} contains a '%' that does not start a %XX escape")
    problem = path_problem(canonical)
    if problem is not None:
        raise ConfigError(f"path pattern {pattern!r} is not a normalised path: {problem}")
    tokens: list[object] = []
    for segment in split_path(canonical):
        if segment == "*":
            tokens.append(_ONE)
        elif segment == "**":
            # Consecutive "**" mean the same as one; collapsing them keeps the matcher's worst case small.
            if not tokens or tokens[-1] is not _ANY:
                tokens.append(_ANY)
        elif "*" in segment:
            raise ConfigError(
                f"path pattern {pattern!r}: '*' may only be a whole segment ('*' or '**'), not part of {segment!r}"
            )
        else:
            tokens.append(segment)
    wildcards = [tok for tok in tokens if tok is _ONE or tok is _ANY]
    if not wildcards:
        kind, prefix = "exact", ""
    elif wildcards == [_ANY] and tokens[-1] is _ANY:
        kind = "prefix"
        literal = tokens[:-1]
        prefix = "/" + "/".join(str(tok) for tok in literal) if literal else ""
    else:
        kind, prefix = "general", ""
    return PathPattern(canonical, tuple(tokens), kind, prefix)
