"""kubews._headers: header lines read as a server reads them (interface §4), and replaced in place."""

import pytest

import kubews as core
from helpers import UPGRADES


@pytest.mark.parametrize(
    "lines, elements",
    [
        pytest.param(["a, b"], ["a", "b"], id="comma and space"),
        pytest.param(["a,b"], ["a", "b"], id="comma only"),
        pytest.param(["  a ,\tb  ,  "], ["a", "b"], id="spaces and tabs trimmed"),
        pytest.param(["a", "b, c"], ["a", "b", "c"], id="several lines, in order"),
        pytest.param(["a,,b"], ["a", "b"], id="empty element dropped"),
        pytest.param([], [], id="no line"),
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
