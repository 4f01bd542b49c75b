"""Keeping the real credentials of in-flight requests out of everything mitmproxy shows or saves.

A flow holds redacted values (see kubews.redact_header_value), except from the end of the `update`
hook that follows its last `request` hook (RevealBeforeSend) until the upstream's response
headers or an error: the window in which mitmproxy connects, writes the request upstream, and
runs no flow hook.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from mitmproxy import http

from .. import redact_header_value
from ._flows import set_headers, str_headers


class SecretKeeper:
    """The real values behind the redacted ones, per flow, until the request has gone upstream."""

    def __init__(self) -> None:
        # (lower-cased header name, redacted value) -> real value. Weak: a dropped flow takes its secrets.
        self._real: weakref.WeakKeyDictionary[http.HTTPFlow, dict[tuple[str, str], str]] = (
            weakref.WeakKeyDictionary()
        )

    def hide(self, flow: http.HTTPFlow) -> None:
        secrets = self._real.setdefault(flow, {})
        fields = []
        for name, value in str_headers(flow.request.headers):
            redacted = redact_header_value(name, value)
            if redacted != value:
                secrets[(name.lower(), redacted)] = value
            fields.append((name, redacted))
        set_headers(flow.request, tuple(fields))
        if not secrets:
            del self._real[flow]

    def reveal(self, flow: http.HTTPFlow) -> None:
        secrets = self._real.get(flow)
        if secrets:
            set_headers(
                flow.request,
                tuple((n, secrets.get((n.lower(), v), v)) for n, v in str_headers(flow.request.headers)),
            )

    def rehide(self, flow: http.HTTPFlow) -> None:
        if flow in self._real:
            self.hide(flow)

    def forget(self, flow: http.HTTPFlow) -> None:
        """Hide for good: the request has gone upstream, or never will."""
        self.rehide(flow)
        self._real.pop(flow, None)

    def forget_all(self) -> None:
        for flow in list(self._real):
            self.forget(flow)


class RevealBeforeSend:
    """Added last to mitmproxy's addon chain, so that the real values are back in the request
    only after every other addon (dumper, mitmweb's view, intercept, other scripts) has seen it.

    `send` is called for each flow at that moment, unless the flow was answered here.
    """

    name = "k8s_ws_reveal"

    def __init__(self, send: Callable[[http.HTTPFlow], None]) -> None:
        self._send = send
        self._due: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # A streamed request body means mitmproxy sends the headers right after this hook.
        if flow.request.stream:
            self._due.add(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        # An intercepted flow is sent once resumed: keep it redacted while a user looks at it.
        await flow.wait_for_resume()
        self._due.add(flow)

    def update(self, flows) -> None:
        # mitmproxy follows every flow hook with `update` (mitmweb broadcasts the flow then):
        # the end of this chain is the last code that runs before the request is written.
        for flow in flows:
            if flow in self._due:
                self._due.discard(flow)
                if flow.response is None and flow.error is None:  # else nothing goes upstream
                    self._send(flow)
