"""A WebSocket handshake as the rules see it: plain values the addon and the CLI build."""

from __future__ import annotations

from dataclasses import dataclass

from ._headers import Headers


@dataclass(frozen=True)
class Destination:
    """A name the request's destination goes by, and whether it is more than the client's word."""

    name: str
    verified: bool


@dataclass(frozen=True)
class Handshake:
    """What the rules need to know of a request."""

    destinations: tuple[Destination, ...]  # names to match the rules' hosts against
    port: int  # the destination port
    path: str  # the request path, query excluded
    headers: Headers  # as received: order, case and repeated lines kept
    scheme: str  # "https" when the upstream connection is TLS, else "http"
    host_header: str  # the Host header as it goes upstream
