"""Idle TLS connections without OpenSSL's record buffers.

OpenSSL gives every TLS connection a read buffer and a write buffer of about 17 KiB each, and keeps
them for as long as the connection is open, unless SSL_MODE_RELEASE_BUFFERS is set: then it frees
each one as soon as it is empty, and takes a new one for the next record. A stream k8s-ws handled
is idle most of its life (a shell waiting for a key, a quiet log, a watch between events), and it
has two TLS connections when both of its sides speak TLS (a browser's wss to the proxy, the
proxy's https to Rancher): the mode takes about 40 KiB off each open session there
(bench/README.md, "Memory"), and costs nothing measurable in throughput or handshakes.

mitmproxy's TlsConfig, which runs after the scripts in the addon chain, makes the pyOpenSSL
connection in its `tls_start_*` hooks, from a context it caches and shares (mitmproxy/net/tls.py).
So the companion below is added last, at `running` (as RevealBeforeSend is), and sets the mode on
each new connection, never on the shared context: pyOpenSSL 25 and later refuse to change a
context that has made a connection ("Context has already been used"). pyOpenSSL has no public
call for a connection's mode, so this uses its binding of OpenSSL, `SSL._lib.SSL_set_mode`, and
the connection's `_ssl` (both in pyOpenSSL 24 to 26); where either is missing, the buffers are
kept as without k8s-ws and nothing else changes. It applies to every TLS connection of the
process, handled or not: the mode changes no byte on the wire.
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
    if data.ssl_conn is None:  # another addon may have declined TLS, or taken it over
        return
    try:
        openssl, connection = SSL._lib, data.ssl_conn._ssl
    except AttributeError:  # a pyOpenSSL without them: OpenSSL keeps its buffers, as without k8s-ws
        return
    openssl.SSL_set_mode(connection, openssl.SSL_MODE_RELEASE_BUFFERS)
