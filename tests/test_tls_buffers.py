"""kubews.mitm._tlsbuffers: OpenSSL may free the buffers of idle TLS connections (bench/README.md, "Memory")."""

import asyncio

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


def test_connections_made_from_a_context_it_saw_release_their_buffers():
    client, server = SSL.Context(SSL.TLS_METHOD), SSL.Context(SSL.TLS_METHOD)
    companion = ReleaseTlsBuffers()
    companion.tls_start_client(tls_data(client))
    companion.tls_start_server(tls_data(server))
    assert client.set_mode(0) & SSL.MODE_RELEASE_BUFFERS  # set_mode(0) adds nothing and says the mode
    assert server.set_mode(0) & SSL.MODE_RELEASE_BUFFERS


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
