"""Idle TLS connections without OpenSSL's record buffers.

OpenSSL gives every TLS connection a read buffer and a write buffer of about 17 KiB each, and keeps
them for as long as the connection is open, unless SSL_MODE_RELEASE_BUFFERS is set: then it frees
each one as soon as it is empty, and takes a new one for the next record. A stream k8s-ws handled
is idle most of its life (a shell waiting for a key, a quiet log, a watch between events), and it
has two TLS connections when both of its sides speak TLS (a browser's wss to the proxy, the
proxy's https to Rancher): the mode takes about 40 KiB off each open session there
(bench/README.md, "Memory"), and costs nothing measurable in throughput or handshakes.

mitmproxy's TlsConfig, which runs after the scripts in the addon chain, makes an SSL context per
certificate and settings once and caches it (mitmproxy/net/tls.py, lru_cache), and makes each
connection from one. So the companion below is added last, at `running` (as RevealBeforeSend is),
and sets the mode on the context of each new connection: every connection made from that context
afterwards has it (pyOpenSSL offers no way to set it on the connection itself). It applies to
every TLS connection of the process, handled or not: the mode changes no byte on the wire.
"""

from __future__ import annotations

from mitmproxy import tls
from OpenSSL import SSL


class ReleaseTlsBuffers:
    name = "k8s_ws_release_tls_buffers"

    def tls_start_client(self, data: tls.TlsData) -> None:
        _release(data)

    def tls_start_server(self, data: tls.TlsData) -> None:
        _release(data)


def _release(data: tls.TlsData) -> None:
    if data.ssl_conn is not None:  # another addon may have declined TLS, or taken it over
        data.ssl_conn.get_context().set_mode(SSL.MODE_RELEASE_BUFFERS)
