"""A rule's stored token goes only to the destination the rule matched.

Another addon (`--map-remote`, a script) may send a request elsewhere after the rule applied; a
flow that carries a stored token is pinned to where it was bound then, and checked just before
it is sent.
"""

from __future__ import annotations

import weakref

from mitmproxy import http


def _destination(flow: http.HTTPFlow) -> tuple[str, str, int]:
    return flow.request.scheme, flow.request.host, flow.request.port


class Pins:
    def __init__(self) -> None:
        self._pinned: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[str, str, int]] = weakref.WeakKeyDictionary()

    def pin(self, flow: http.HTTPFlow) -> None:
        self._pinned[flow] = _destination(flow)

    def moved_from(self, flow: http.HTTPFlow) -> str | None:
        """The host a pinned flow was bound for, if it is now bound elsewhere; checked once."""
        pinned = self._pinned.pop(flow, None)
        if pinned is None or pinned == _destination(flow):
            return None
        return pinned[1]
