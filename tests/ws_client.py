"""A WebSocket client for the end-to-end tests: opens one handshake, reads a few messages, and
returns what happened (status, chosen protocol, messages, or the refusal's body)."""

from __future__ import annotations

import asyncio

import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from helpers import BROWSER_UA, PAGE_ORIGIN


class Outcome:
    def __init__(self, status, protocol=None, messages=(), body=b"", headers=None):
        self.status, self.protocol, self.messages, self.body, self.headers = status, protocol, list(messages), body, headers

    def __repr__(self):
        return f"Outcome({self.status}, {self.protocol!r}, {self.messages[:3]!r}, {self.body[:200]!r})"


async def open_async(
    url, protocols, *, user_agent=BROWSER_UA, origin=PAGE_ORIGIN, headers=(), ssl_context=None, proxy=None, messages=2, **connection
):
    """A browser-like handshake (its User-Agent and a foreign Origin unless told), then up to
    `messages` messages. `connection`: more of websockets' connect() arguments (sock, server_hostname)."""
    kwargs = dict(
        subprotocols=protocols or None,
        additional_headers=list(headers),
        user_agent_header=user_agent,
        origin=origin,
        open_timeout=10,
        max_size=None,
        proxy=proxy,
        **connection,
    )
    if ssl_context is not None:
        kwargs["ssl"] = ssl_context
    try:
        async with connect(url, **kwargs) as ws:
            received = []
            try:
                for _ in range(messages):
                    received.append(await asyncio.wait_for(ws.recv(), 10))
            except websockets.ConnectionClosed:
                pass
            return Outcome(101, ws.subprotocol, received)
    except InvalidStatus as e:
        return Outcome(e.response.status_code, body=e.response.body, headers=e.response.headers)


def open_ws(*args, **kwargs) -> Outcome:
    return asyncio.run(open_async(*args, **kwargs))
