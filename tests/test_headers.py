"""kubews._headers: header lines read as a server reads them (interface §4), and replaced in place."""

import pytest

import kubews as core
from helpers import UPGRADES
from kubews._headers import is_folded, unfold


@pytest.mark.parametrize(
    "lines, elements",
    [
        pytest.param(["a, b"], ["a", "b"], id="comma and space"),
        pytest.param(["a,b"], ["a", "b"], id="comma only"),
        pytest.param(["  a ,\tb  ,  "], ["a", "b"], id="spaces and tabs trimmed"),
        pytest.param(["a", "b, c"], ["a", "b", "c"], id="several lines, in order"),
        pytest.param(["a,,b"], ["a", "b"], id="empty element dropped"),
        pytest.param([], [], id="no line"),
        pytest.param(["a,\r\n b"], ["a", "b"], id="folded line, as mitmproxy keeps it"),
        pytest.param(["a,\r\n\t b"], ["a", "b"], id="folded line with a tab"),
        pytest.param(["a,\n b"], ["a", "b"], id="folded with a bare LF"),
        pytest.param(["a\r\n b"], ["a b"], id="a fold inside an element is a space"),
        pytest.param(["\xa0a,\x0bb\x0c, \u3000c\u2028"], ["a", "b", "c"], id="NBSP VT FF and Unicode spaces trimmed"),
        pytest.param(["\ra,\x85b"], ["a", "b"], id="CR and NEL trimmed"),
        pytest.param(["\x1ca, \u200bb"], ["\x1ca", "\u200bb"], id="what Python strips but Go does not"),
        pytest.param(["\udcffa"], ["\udcffa"], id="a byte that is not UTF-8 is no space"),
    ],
)
def test_header_elements(lines, elements):
    headers = tuple(("Sec-WebSocket-Protocol", line) for line in lines)
    assert core.header_elements(headers, "sec-websocket-protocol") == elements


def test_header_values_and_index_ignore_the_names_case():
    headers = (("Origin", "a"), ("X", "1"), ("origin", "b"))
    assert core.header_values(headers, "ORIGIN") == ["a", "b"]
    assert core.header_index(headers) == {"origin": ["a", "b"], "x": ["1"]}


def test_replace_headers_keeps_position_and_spelling():
    headers = (("host", "h"), ("user-agent", "a"), ("X", "1"), ("User-Agent", "b"))
    assert core.replace_headers(headers, {"User-Agent": ["c"]}) == (("host", "h"), ("user-agent", "c"), ("X", "1"))
    assert core.replace_headers(headers, {"User-Agent": []}) == (("host", "h"), ("X", "1"))
    assert core.replace_headers(headers, {"Origin": ["o"]}) == (*headers, ("Origin", "o"))
    assert core.replace_headers(headers, {"user-agent": ["c", "d", "e"]}) == (
        ("host", "h"), ("user-agent", "c"), ("X", "1"), ("User-Agent", "d"), ("user-agent", "e"),
    )


@pytest.mark.parametrize("lines, upgrade", UPGRADES)
def test_is_websocket_upgrade(lines, upgrade):
    assert core.is_websocket_upgrade(tuple(("Upgrade", line) for line in lines)) is upgrade


# Go's unicode.IsSpace, written out from Unicode's White_Space property (facts §1).
GO_TRIM_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


@pytest.mark.parametrize("space", [pytest.param(c, id=f"U+{ord(c):04X}") for c in GO_TRIM_SPACE])
def test_every_space_go_trims_is_trimmed(space):
    assert core.header_elements((("P", f"{space}a{space},{space}b"),), "P") == ["a", "b"]


@pytest.mark.parametrize(
    "value, unfolded",
    [
        pytest.param("a,\r\n b", "a, b", id="CRLF SP"),
        pytest.param("a,\r\n \t  b", "a, b", id="CRLF and several blanks"),
        pytest.param("a\r\n b\r\n\tc", "a b c", id="two folds"),
        pytest.param("a, b", "a, b", id="no fold"),
    ],
)
def test_unfold(value, unfolded):
    assert unfold(value) == unfolded
    assert is_folded(value) is (value != unfolded)


@pytest.mark.parametrize(
    "value, shown",
    [
        pytest.param("v4.channel.k8s.io", "v4.channel.k8s.io", id="ASCII"),
        pytest.param("caf\xe9", "caf\xe9", id="UTF-8 kept"),
        pytest.param("v4\udcff", "v4\\xff", id="a byte that is not UTF-8 shown as \\xff"),
    ],
)
def test_printable(value, shown):
    assert core.printable(value) == shown
    shown.encode("utf-8")  # can be saved and printed
