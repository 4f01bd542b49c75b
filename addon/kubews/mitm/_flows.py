"""From mitmproxy's flows to the core's plain values, and back."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import RegularMode, ReverseMode, UpstreamMode

from .. import Destination, Handshake, Headers, printable, split_target

#: Modes in which mitmproxy itself chose the destination from the proxy's own configuration or
#: from where the client asked it to connect; elsewhere (transparent, WireGuard, local...) the
#: Host header and SNI are only the client's word.
_PROXY_CHOSEN_DESTINATION = (RegularMode, ReverseMode, UpstreamMode)


def str_headers(headers: http.Headers) -> Headers:
    # surrogateescape, as mitmproxy decodes headers: any byte survives the round trip.
    return tuple((k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for k, v in headers.fields)


def set_headers(message: http.Message, headers: Headers) -> None:
    message.headers.fields = tuple(
        (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape")) for k, v in headers
    )


def request_path(flow: http.HTTPFlow) -> str:
    """The request's path, query left out: what log lines may show."""
    return split_target(flow.request.path)[0]


def handshake(flow: http.HTTPFlow, *, ssl_insecure: bool) -> Handshake:
    return Handshake(
        destinations=_destinations(flow, ssl_insecure),
        port=flow.request.port,
        path=request_path(flow),
        headers=str_headers(flow.request.headers),
        scheme=flow.request.scheme,
        host_header=flow.request.host_header or "",
    )


def _destinations(flow: http.HTTPFlow, ssl_insecure: bool) -> tuple[Destination, ...]:
    # request.host is where mitmproxy connects: the CONNECT or absolute-form target, the
    # reverse-mode upstream, or the original destination address in transparent mode.
    names = [Destination(flow.request.host, verified=True)]
    if not isinstance(flow.client_conn.proxy_mode, _PROXY_CHOSEN_DESTINATION):
        if flow.request.scheme == "https" and flow.client_conn.sni:
            # mitmproxy verifies the upstream certificate against this name unless ssl_insecure.
            names.append(Destination(flow.client_conn.sni, verified=not ssl_insecure))
        if flow.request.host_header:
            host, _ = url.parse_authority(flow.request.host_header, check=False)
            names.append(Destination(host, verified=False))
    return tuple(names)


def answer(flow: http.HTTPFlow, status: int, body: str) -> None:
    """Answer the client here: nothing goes upstream."""
    flow.response = http.Response.make(status, body.encode(), {"Content-Type": "text/plain"})


#: How a flow whose handshake failed is marked in mitmproxy's and mitmweb's flow lists.
FAILED_MARKER = ":warning:"


def flag(flow: http.HTTPFlow, why: str) -> None:
    """Mark a flow whose handshake failed and say why in its comment, where mitmweb and the
    console show it. A user's own marker and comment stay; ours is added to the comment."""
    if not flow.marked:
        flow.marked = FAILED_MARKER
    why = printable(why)  # a hint may quote a header byte that is not UTF-8: -w must still save it
    if why not in flow.comment:
        flow.comment = f"{flow.comment}\n{why}" if flow.comment else why
