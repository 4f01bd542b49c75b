"""kubews.mitm._tlsbuffers: OpenSSL may free the buffers of idle TLS connections (bench/README.md, "Memory")."""

import asyncio

import pytest
from mitmproxy import connection, tls
from mitmproxy.test import taddons
from OpenSSL import SSL

from kubews.mitm._hooks import K8sWs
from kubews.mitm._tlsbuffers import ReleaseTlsBuffers


def tls_data(context: SSL.Context | None) -> tls.TlsData:
    data = tls.TlsData(connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2)), context=None)
    if context is not None:
        data.ssl_conn = SSL.Connection(context)  # what mitmproxy's TlsConfig has made by then
    return data


def mode(ssl_conn: SSL.Connection) -> int:
    """A connection's OpenSSL mode: SSL_set_mode with no bit adds nothing and returns it."""
    return SSL._lib.SSL_set_mode(ssl_conn._ssl, 0)


@pytest.mark.parametrize("hook", ["tls_start_client", "tls_start_server"])
def test_the_connection_releases_its_buffers_and_the_shared_context_is_left_alone(hook):
    context = SSL.Context(SSL.TLS_METHOD)
    data = tls_data(context)  # the context has made a connection: pyOpenSSL >= 25 refuses to change it now
    getattr(ReleaseTlsBuffers(), hook)(data)
    assert mode(data.ssl_conn) & SSL.MODE_RELEASE_BUFFERS
    assert not mode(SSL.Connection(context)) & SSL.MODE_RELEASE_BUFFERS  # other connections of the context: untouched


def test_a_hook_without_a_connection_is_left_alone():
    data = tls_data(None)  # another addon declined TLS, or took it over
    ReleaseTlsBuffers().tls_start_client(data)
    assert data.ssl_conn is None


def test_the_addon_runs_it_after_every_addon_loaded_before_it_and_removes_it_when_done():
    addon = K8sWs()
    with taddons.context(addon) as tctx:

        async def scenario():
            addon.running()
            try:
                chain = tctx.master.addons.chain
                assert chain.index(addon._tls_buffers) > chain.index(addon)
            finally:
                addon.done()
            assert addon._tls_buffers not in tctx.master.addons.chain

        asyncio.run(scenario())
