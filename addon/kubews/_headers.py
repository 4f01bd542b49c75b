"""Header fields as plain values: reading them as a server reads them, and replacing them.

Headers are kept as received: a tuple of (name, value) lines, in order, with their spelling and
repeated lines. Names compare case-insensitively (RFC 9110 §5.1).
"""

from __future__ import annotations

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


def split_elements(values: list[str]) -> list[str]:
    """The comma-separated elements of a header's values, trimmed, empty ones dropped."""
    return [element.strip(" \t") for value in values for element in value.split(",") if element.strip(" \t")]


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
