"""Path patterns and the normalisation guard (policies/paths.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import ConfigError
from policies.paths import compile_pattern, path_problem

SEGMENT = st.text(alphabet="abcxyz019-_~", min_size=1, max_size=6)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/persons/*", "/persons/123", True),
        ("/persons/*", "/persons/123/docs", False),
        ("/persons/*", "/persons", False),
        ("/persons/*", "/persons/", False),
        ("/persons/**", "/persons", True),
        ("/persons/**", "/persons/", True),
        ("/persons/**", "/persons/1/docs", True),
        ("/persons/**", "/personsX", False),
        ("/persons/**", "/other/persons", False),
        ("/persons/123", "/persons/123", True),
        ("/persons/123", "/persons/1234", False),
        ("/persons/123", "/Persons/123", False),
        ("/persons/*/docs", "/persons/7/docs", True),
        ("/persons/*/docs", "/persons/7/photo", False),
        ("/**/photo", "/photo", True),
        ("/**/photo", "/persons/7/photo", True),
        ("/**/photo", "/persons/7/photo/x", False),
        ("/a/**/b/**/c", "/a/b/c", True),
        ("/a/**/b/**/c", "/a/x/y/b/z/c", True),
        ("/a/**/b/**/c", "/a/x/c/b", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/", "/", True),
        ("/", "/x", False),
        ("/files/%c3%bc", "/files/%C3%BC", True),
    ],
)
def test_pattern_matching(pattern: str, path: str, expected: bool) -> None:
    """The grammar: literal segments exact, '*' exactly one non-empty segment, '**' zero or more anywhere."""
    assert compile_pattern(pattern).matches(path) is expected


def test_patterns_are_compiled_once() -> None:
    """compile_pattern caches: the same text gives the same compiled object (decisions never recompile)."""
    assert compile_pattern("/cache/me/*") is compile_pattern("/cache/me/*")


def test_consecutive_double_stars_collapse() -> None:
    """'/a/**/**' means the same as '/a/**' (and takes the fast prefix path)."""
    pattern = compile_pattern("/a/**/**")
    assert [pattern.matches(p) for p in ("/a", "/a/b/c", "/ab")] == [True, True, False]


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("persons/*", "does not start with '/'"),
        ("/files/report-*", "'*' may only be a whole segment"),
        ("/a/../b", "dot-segment"),
        ("/a//b", "empty segment"),
        ("/a%2Fb", "encoded character %2F"),
        ("/a?x=1", "query or fragment"),
        ("/a/%zz", "does not start a %XX escape"),
    ],
)
def test_malformed_patterns_are_rejected(pattern: str, fragment: str) -> None:
    """Patterns outside the grammar raise ConfigError saying what is wrong, instead of matching literally."""
    with pytest.raises(ConfigError) as info:
        compile_pattern(pattern)
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/persons/../admin", "dot-segment '..'"),
        ("/persons/./x", "dot-segment '.'"),
        ("/persons/%2e%2e/admin", "dot-segment '%2e%2e'"),
        ("/persons/%2E./admin", "dot-segment '%2E.'"),
        ("/a%2Fb", "encoded character %2F"),
        ("/a%2fb", "encoded character %2F"),
        ("/a%5Cb", "encoded character %5C"),
        ("/a%00b", "encoded character %00"),
        ("/a\x00b", "NUL"),
        ("/a\\b", "backslash"),
        ("/a//b", "empty segment"),
        ("/a?b=1", "query or fragment"),
        ("a/b", "does not start with '/'"),
        ("", "does not start with '/'"),
    ],
)
def test_unnormalised_paths_are_reported(path: str, fragment: str) -> None:
    """path_problem names what makes a path unsafe to match."""
    problem = path_problem(path)
    assert problem is not None
    assert fragment in problem


@pytest.mark.parametrize("path", ["/", "/persons", "/persons/", "/persons/...", "/persons/.hidden", "/a%25b", "/a.b"])
def test_normalised_paths_pass(path: str) -> None:
    """Dots that are not whole dot-segments, a trailing slash and other escapes are fine."""
    assert path_problem(path) is None


@given(
    before=st.lists(SEGMENT, max_size=4),
    after=st.lists(SEGMENT, max_size=4),
    dots=st.sampled_from(["..", ".", "%2e%2e", "%2E%2E", ".%2e", "%2e", "%2E."]),
)
def test_any_dot_segment_is_reported(before: list[str], after: list[str], dots: str) -> None:
    """Property: a dot-segment (literal or percent-encoded) anywhere in a path is always caught."""
    path = "/" + "/".join([*before, dots, *after])
    problem = path_problem(path)
    assert problem is not None
    assert "dot-segment" in problem


@given(
    segments=st.lists(SEGMENT, min_size=0, max_size=8),
    pattern_segments=st.lists(st.sampled_from(["a", "*", "**"]), min_size=1, max_size=5),
)
def test_general_matcher_agrees_with_a_reference(segments: list[str], pattern_segments: list[str]) -> None:
    """Property: the greedy matcher agrees with a plain recursive definition of the grammar."""

    def reference(tokens: list[str], segs: list[str]) -> bool:
        if not tokens:
            return not segs
        head, rest = tokens[0], tokens[1:]
        if head == "**":
            return any(reference(rest, segs[i:]) for i in range(len(segs) + 1))
        if not segs:
            return False
        if head == "*":
            return segs[0] != "" and reference(rest, segs[1:])
        return head == segs[0] and reference(rest, segs[1:])

    pattern = "/" + "/".join(pattern_segments)
    path = "/" + "/".join(segments)
    collapsed: list[str] = []
    for tok in pattern_segments:
        if not (tok == "**" and collapsed and collapsed[-1] == "**"):
            collapsed.append(tok)
    assert compile_pattern(pattern).matches(path) == reference(collapsed, path[1:].split("/"))
