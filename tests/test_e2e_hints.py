"""Every failure shape of docs/protocol.md §1–4, through a real mitmdump in front of the strict
test server: each gets its hint in mitmdump's output (interface.md §5; that the hint is a WARNING
is tested with the addon's own hooks in test_hints.py), and no token reaches the output.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socketserver
import ssl
import threading
import time

import pytest
from websockets.asyncio.client import connect

from fake_rancher import DEAD, HEALTHY, LOCAL, PENDING
from helpers import BROWSER_UA, HEADLAMP_EXEC_PROTOCOLS, PAGE_ORIGIN, SCOPED_TOKEN, TOKEN, secret_forms, standard_entry
from mitmdump_harness import Mitmdump

pytestmark = pytest.mark.e2e  # a mitmdump process, the test server and a stub server

RULES = """\
rules:
  - name: keep-entry
    hosts: ["*"]
    paths: ["/k8s/clusters/*/api/v1/namespaces/keep-entry/*"]
    auth: subprotocol
    origin: match-host
  - name: keep-origin
    hosts: ["*"]
    paths: ["/k8s/clusters/*/api/v1/namespaces/keep-origin/*"]
  - name: both
    hosts: ["*"]
    paths: ["/k8s/clusters/*/api/v1/namespaces/both/*"]
    auth: both
    origin: match-host
  - name: no-origin
    hosts: ["*"]
    paths: ["/k8s/clusters/*/api/v1/namespaces/no-origin/*"]
    origin: remove
  - name: rancher
    hosts: ["*"]
    paths: ["/k8s/clusters/*/api/*"]
    origin: match-host
  - name: apiserver
    hosts: ["*"]
    paths: ["/api/*"]
"""
# A hop between the proxy and the API server that does not pass WebSockets (facts §6).
DROP_UPGRADE = """\
class DropUpgrade:
    def request(self, flow):
        if "/namespaces/drop-upgrade/" in flow.request.path:
            del flow.request.headers["Upgrade"]
            del flow.request.headers["Connection"]

addons = [DropUpgrade()]
"""


class _WrongProtocolHandler(socketserver.StreamRequestHandler):
    """Accepts every upgrade with a protocol nobody offers."""

    def handle(self):
        key = ""
        while (line := self.rfile.readline().decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            if name.lower() == "sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.wfile.write(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n".encode()
        )


@pytest.fixture(scope="module")
def wrong_protocol_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _WrongProtocolHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, pki):
    workdir = tmp_path_factory.mktemp("hints")
    (workdir / "rules.yaml").write_text(RULES)
    (workdir / "drop_upgrade.py").write_text(DROP_UPGRADE)
    with Mitmdump(
        workdir,
        rules=workdir / "rules.yaml",
        upstream_ca=pki.ca_cert,
        args=("-s", str(workdir / "drop_upgrade.py")),
    ) as mitmdump:
        yield mitmdump
        output = mitmdump.output()
    for token in (TOKEN, SCOPED_TOKEN):
        for form in secret_forms(token):
            assert form not in output


def handshake(proxy, url, protocols, *, token=TOKEN, authorization=None, user_agent=BROWSER_UA, origin=PAGE_ORIGIN):
    """A browser-like WebSocket handshake through the proxy; whatever the outcome, its hint is logged."""
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    headers = {"Authorization": f"Bearer {authorization}"} if authorization else {}

    async def attempt():
        try:
            async with connect(
                url,
                subprotocols=[*protocols, *([standard_entry(token)] if token else [])],
                additional_headers=headers,
                user_agent_header=user_agent,
                origin=origin,
                proxy=proxy.url,
                ssl=context if url.startswith("wss:") else None,
                open_timeout=10,
            ):
                pass
        except Exception:
            pass  # refused: the proxy's log says why

    start = len(proxy.output())
    asyncio.run(attempt())
    return start


def hint_line(proxy, start, who, status):
    """The hint that mitmdump logged, after offset start, for a handshake that `who` handled."""
    deadline = time.monotonic() + 10
    while True:
        output = proxy.output()[start:]
        lines = [line for line in output.splitlines() if f"k8s_ws: {who} " in line and f": upstream {status}: " in line]
        if lines:
            return lines[0]
        assert time.monotonic() < deadline, f"no hint by {who} for {status} in:\n{output}"
        time.sleep(0.05)


def pods(rancher, cluster=HEALTHY, namespace="default"):
    return f"wss://{rancher.host}/k8s/clusters/{cluster}/api/v1/namespaces/{namespace}"


# --- Rancher's 401 (facts §4) -------------------------------------------------------------------


def test_token_left_in_subprotocol(proxy, rancher):
    start = handshake(proxy, f"{pods(rancher, namespace='keep-entry')}/pods/p/exec?stdout=1", HEADLAMP_EXEC_PROTOCOLS)
    line = hint_line(proxy, start, "rule 'keep-entry'", "401")
    assert "never the bearer entry" in line and "set auth: header in rule 'keep-entry'" in line


def test_no_token_on_local(proxy, rancher):
    start = handshake(proxy, f"{pods(rancher, LOCAL)}/pods/p/log?follow=true", ["base64.binary.k8s.io"], token=None)
    line = hint_line(proxy, start, "rule 'rancher'", "401")
    assert '"not authorized"' in line and "got no token" in line


def test_cluster_scoped_token_elsewhere(proxy, rancher):
    start = handshake(proxy, f"{pods(rancher, LOCAL)}/pods/p/log?follow=true", ["base64.binary.k8s.io"], token=SCOPED_TOKEN)
    line = hint_line(proxy, start, "rule 'rancher'", "401")
    assert "Rancher refused the token" in line and "scoped to a cluster other than 'local'" in line


# --- 403 --------------------------------------------------------------------------------------


def test_origin_not_allowed_names_the_rule_field(proxy, rancher):
    start = handshake(proxy, f"{pods(rancher, namespace='keep-origin')}/pods/p/exec?stdout=1", HEADLAMP_EXEC_PROTOCOLS)
    line = hint_line(proxy, start, "rule 'keep-origin'", "403")
    assert f"Origin ({PAGE_ORIGIN})" in line and f"Host ({rancher.host})" in line
    assert "set origin: match-host in rule 'keep-origin'" in line


def test_origin_not_allowed_without_a_rule(proxy, rancher):
    start = handshake(
        proxy, f"wss://{rancher.host}/k8s/proxy/{HEALTHY}/api/v1/namespaces/default/pods/p/exec?stdout=1", HEADLAMP_EXEC_PROTOCOLS
    )
    line = hint_line(proxy, start, "no rule", "403")
    assert f"add one for {rancher.host} with origin: match-host" in line


def test_no_supported_protocol(proxy, rancher):
    start = handshake(proxy, f"{pods(rancher)}/pods/p/exec?stdout=1", ["base64.binary.k8s.io"])
    line = hint_line(proxy, start, "rule 'rancher'", "403")
    assert "none of the offered protocols" in line and "exec takes one of" in line and "v4.channel.k8s.io" in line


def test_watch_without_origin(proxy, rancher):
    start = handshake(proxy, f"{pods(rancher, namespace='no-origin')}/pods?watch=1", ["base64.binary.k8s.io"])
    line = hint_line(proxy, start, "rule 'no-origin'", "403")
    assert "watch that has no Origin" in line and "origin: match-host" in line


# --- 400 --------------------------------------------------------------------------------------


def test_watch_with_the_entry_left(proxy, rancher):
    start = handshake(proxy, f"{pods(rancher, namespace='both')}/pods?watch=1", ["base64.binary.k8s.io"])
    line = hint_line(proxy, start, "rule 'both'", "400")
    assert "exactly one protocol" in line and "<bearer entry>" in line and "set auth: header in rule 'both'" in line


def test_a_hop_that_drops_upgrade(proxy, rancher):
    start = handshake(proxy, f"{pods(rancher, namespace='drop-upgrade')}/pods/p/exec?stdout=1", HEADLAMP_EXEC_PROTOCOLS)
    line = hint_line(proxy, start, "rule 'rancher'", "400")
    assert '"Upgrade request required"' in line and "dropped the Upgrade" in line


# --- Rancher's cluster errors (facts §4) ----------------------------------------------------------


@pytest.mark.parametrize(
    "cluster, status, meaning",
    [
        pytest.param(DEAD, 502, "cannot reach cluster 'c-m-dead'", id="dead"),
        pytest.param("c-m-unknown", 404, "knows no cluster 'c-m-unknown'", id="unknown"),
        pytest.param(PENDING, 503, "'c-m-pending' is not available", id="pending"),
    ],
)
def test_cluster_errors(proxy, rancher, cluster, status, meaning):
    start = handshake(proxy, f"{pods(rancher, cluster)}/pods/p/log?follow=true", ["base64.binary.k8s.io"])
    assert meaning in hint_line(proxy, start, "rule 'rancher'", status)


# --- the 101 and TLS --------------------------------------------------------------------------


def test_101_with_a_protocol_the_client_did_not_offer(proxy, wrong_protocol_server):
    start = handshake(proxy, f"ws://{wrong_protocol_server}/api/v1/namespaces/default/pods/p/log", ["base64.binary.k8s.io"])
    line = hint_line(proxy, start, "rule 'apiserver'", "101")
    assert "chose protocol 'v5.channel.k8s.io', which the client did not offer" in line


def test_untrusted_upstream_certificate(tmp_path, rancher, pki):
    (tmp_path / "rules.yaml").write_text(RULES)
    with Mitmdump(tmp_path, rules=tmp_path / "rules.yaml") as untrusting:
        start = handshake(untrusting, f"{pods(rancher)}/pods/p/log?follow=true", ["base64.binary.k8s.io"])
        line = hint_line(untrusting, start, "rule 'rancher'", "error")
    assert "not trusted" in line and "ssl_verify_upstream_trusted_ca" in line
