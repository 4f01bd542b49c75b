"""Header fields as plain values: reading them as a server reads them, and replacing them.

Headers are kept as received: a tuple of (name, value) lines, in order, with their spelling and
repeated lines. Names compare case-insensitively (RFC 9110 §5.1).

Values are read the way the upstream reads them, not the way they look: mitmproxy keeps a folded
line (obs-fold) inside the value as CRLF and a space, where every Go server unfolds it, and
kube-apiserver trims each list element with Go's `strings.TrimSpace`, which trims far more than
SP and HTAB (facts §1, §6). Reading less would let an entry the upstream sees slip past us.
"""

from __future__ import annotations

import re

#: A request's or response's header lines, as received.
Headers = tuple[tuple[str, str], ...]

PROTOCOL_HEADER = "Sec-WebSocket-Protocol"


def header_values(headers: Headers, name: str) -> list[str]:
    """The value of every line of one header, in order."""
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


def header_index(headers: Headers) -> dict[str, list[str]]:
    """The values of every header by lower-cased name, read in one pass."""
    index: dict[str, list[str]] = {}
    for key, value in headers:
        index.setdefault(key.lower(), []).append(value)
    return index


#: What Go's strings.TrimSpace trims: unicode.IsSpace, i.e. the ASCII spaces HTAB, LF, VT, FF,
#: CR and SP, then NEL, NBSP and the Unicode separators (category Z). A byte that is not UTF-8
#: arrives as a lone surrogate and is not among them, as it is not for Go.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

#: A line break that continues the header on the next line (RFC 9112 §5.2, obs-fold), with the
#: line's leading whitespace. mitmproxy keeps it as "\r\n "; a bare LF is accepted as well.
_OBS_FOLD = re.compile(r"\r?\n[ \t]+")


def unfold(value: str) -> str:
    """A header value with each obs-fold replaced by one SP, as a recipient must (RFC 9112 §5.2)."""
    return _OBS_FOLD.sub(" ", value) if "\n" in value else value


def is_folded(value: str) -> bool:
    return "\n" in value and _OBS_FOLD.search(value) is not None


def trim(element: str) -> str:
    """An element trimmed as Go's strings.TrimSpace trims it."""
    return element.strip(GO_SPACE)


def printable(value: str) -> str:
    """A value with each byte that was not UTF-8 (read as a lone surrogate) written as \\xNN: a
    string that can be encoded, saved (tnetstring, JSON) and printed."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def split_elements(values: list[str]) -> list[str]:
    """The comma-separated elements of a header's values, unfolded and trimmed as Go does, empty
    ones dropped."""
    return [trimmed for value in values for element in unfold(value).split(",") if (trimmed := trim(element))]


def header_elements(headers: Headers, name: str) -> list[str]:
    """The comma-separated elements of every line of one header."""
    return split_elements(header_values(headers, name))


def upgrades_to_websocket(upgrade_values: list[str]) -> bool:
    """Whether `Upgrade` names websocket; the token is case-insensitive (RFC 6455 §4.2.1)."""
    return any(element.lower() == "websocket" for element in split_elements(upgrade_values))


def is_websocket_upgrade(headers: Headers) -> bool:
    return upgrades_to_websocket(header_values(headers, "Upgrade"))


def replace_headers(headers: Headers, replacements: dict[str, list[str]]) -> Headers:
    """Replace every line of each header in `replacements` with its values (none: remove it).

    The first lines keep their place and spelling; extra values go at the end, in the order of
    `replacements`.
    """
    remaining = {name.lower(): list(values) for name, values in replacements.items()}
    result = []
    for line in headers:
        pending = remaining.get(line[0].lower())
        if pending is None:
            result.append(line)
        elif pending:
            result.append((line[0], pending.pop(0)))
    for name in replacements:
        result.extend((name, value) for value in remaining[name.lower()])
    return tuple(result)
