"""The Python `kubernetes` client, which already works against Rancher (it sends Authorization),
through mitmdump with the shipped rules.yaml, in reverse and in regular mode, in front of the
strict Rancher-like test server over TLS: `stream()` exec (a WebSocket, via websocket-client) and a
log request (urllib3).

How the client reaches the proxy, as of kubernetes 37.0.2:
- reverse mode: `Configuration.host` is the proxy's URL (plain http, so ws:// for stream()).
- regular mode: `Configuration.proxy` is the proxy's URL and `ssl_ca_cert` mitmproxy's CA. The REST
  calls use urllib3's ProxyManager (CONNECT); `stream()` passes the proxy to websocket-client as
  http_proxy_host/port (kubernetes/stream/ws_client.py, websocket_proxycare), which also CONNECTs.
  The client trusts only mitmproxy's CA there, so a request that bypassed the proxy would fail.
- websocket-client, unlike the REST path, also reads NO_PROXY/no_proxy from the environment when
  `Configuration.no_proxy` is unset: with 127.0.0.1 listed there, stream() would go direct while
  the REST calls go through the proxy. The tests clear those variables.

The server must record the client's Authorization, User-Agent and protocol list unchanged: each
request is compared, header for header, with the same call made straight to the server.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from fake_rancher import HEALTHY
from helpers import TOKEN, VECTORS, interactive_exec

pytestmark = pytest.mark.e2e  # mitmdump processes and the test server

VECTOR = VECTORS["python-kubernetes-37.0.2-stream"]
VOLATILE = {"sec-websocket-key"}


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def core_api(host: str, *, ca: str | None = None, proxy: str | None = None) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = host
    configuration.api_key = {"authorization": "Bearer " + TOKEN}
    if ca is not None:
        configuration.ssl_ca_cert = ca
    if proxy is not None:
        configuration.proxy = proxy
    return client.CoreV1Api(client.ApiClient(configuration))


@pytest.fixture(scope="module")
def apis(rancher, reverse, regular, pki):
    """The same client configured three ways: straight to Rancher, and through each proxy."""
    cluster = f"/k8s/clusters/{HEALTHY}"
    return {
        "direct": core_api(rancher.url + cluster, ca=pki.ca_cert),
        "reverse": core_api(reverse.url + cluster),
        "regular": core_api(rancher.url + cluster, ca=str(regular.ca_cert), proxy=regular.url),
    }


def only_record(server, namespace: str):
    records = [r for r in server.records if f"/namespaces/{namespace}/" in r.target]
    assert len(records) == 1, f"expected one request for {namespace}, the server saw {records}"
    return records[0]


def comparable(record, *skip: str):
    """The headers as received, the volatile ones (and those in skip) replaced by their name only."""
    drop = VOLATILE | {s.lower() for s in skip}
    return [(name, None if name.lower() in drop else value) for name, value in record.headers]


@pytest.mark.parametrize("mode", ["reverse", "regular"], ids=["reverse", "regular"])
def test_stream_exec_works_and_reaches_the_server_unchanged(request, apis, rancher, mode):
    namespace = f"py-exec-{mode}"
    assert interactive_exec(apis["direct"], f"{namespace}-direct") == "hello from exec\nping\n"
    assert interactive_exec(apis[mode], namespace) == "hello from exec\nping\n"
    # The addon saw the upgrade (its INFO line names the path, contract §5): it went through the proxy.
    request.getfixturevalue(mode).wait_for_output(f"/namespaces/{namespace}/pods/p/exec")

    sent, record = only_record(rancher, f"{namespace}-direct"), only_record(rancher, namespace)
    assert record.status == 101 and record.subprotocol == "v5.channel.k8s.io"
    # What the client sends (handshakes.yaml): lower-case names, protocols joined without a space, no UA.
    vector = dict(VECTOR["headers"])
    assert ("authorization", vector["authorization"].replace("kc-token", TOKEN)) in sent.headers
    assert ("sec-websocket-protocol", vector["sec-websocket-protocol"]) in sent.headers
    assert sent.header_lines("User-Agent") == []
    # ...and it reached the server unchanged: Authorization, User-Agent (none), the protocol list.
    for name in ("Authorization", "User-Agent", "Sec-WebSocket-Protocol"):
        assert record.header_lines(name) == sent.header_lines(name)
    if mode == "regular":
        # CONNECT: the client names the server itself, and its Origin already matches the Host.
        assert comparable(record) == comparable(sent)
    else:
        # Reverse: the client named the proxy; mitmproxy sets Host to the upstream, and the shipped
        # rule's origin: match-host makes the client's Origin (http://<proxy>) name that Host.
        assert comparable(record, "Host", "Origin") == comparable(sent, "Host", "Origin")
        assert record.header_lines("Host") == [rancher.host]
        assert record.header_lines("Origin") == [f"https://{rancher.host}"]
        assert sent.header_lines("Origin") == [f"https://{rancher.host}"]


@pytest.mark.parametrize("mode", ["reverse", "regular"], ids=["reverse", "regular"])
def test_log_request_works_and_reaches_the_server_unchanged(apis, rancher, mode):
    namespace = f"py-log-{mode}"
    assert apis["direct"].read_namespaced_pod_log("p", f"{namespace}-direct", follow=True) == "line 1\nline 2\nline 3\n"
    assert apis[mode].read_namespaced_pod_log("p", namespace, follow=True) == "line 1\nline 2\nline 3\n"
    sent, record = only_record(rancher, f"{namespace}-direct"), only_record(rancher, namespace)
    assert record.status == 200 and record.target.endswith("/pods/p/log?follow=true")
    assert record.header_lines("authorization") == [f"Bearer {TOKEN}"]
    assert record.header_lines("User-Agent") == sent.header_lines("User-Agent") == [f"OpenAPI-Generator/{client.__version__}/python"]
    skip = () if mode == "regular" else ("Host",)  # reverse mode sets Host to the upstream
    assert comparable(record, *skip) == comparable(sent, *skip)
    if mode == "reverse":
        assert record.header_lines("Host") == [rancher.host]
