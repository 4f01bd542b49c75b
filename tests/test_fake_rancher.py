"""Tests of the test server itself: it must be as strict as docs/protocol.md ("§n")."""

import asyncio
import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from fake_rancher import DEAD, HEALTHY, LOCAL, ORIGIN_DENIED, PENDING, FakeServer
from helpers import (
    BEARER_PREFIX,
    BROWSER_UA,
    DASH_UNDERSCORE_TOKEN,
    KUBECONFIG_TOKEN,
    PLUS_TOKEN,
    SCOPED_TOKEN,
    TOKEN,
    TOKENS,
    VECTORS,
    b64std,
    b64url,
    base64url_entry,
    standard_entry,
)

pytestmark = pytest.mark.e2e  # a real server on a socket, and real clients

KUBECTL_UA = "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"
AUTH = ("Authorization", f"Bearer {TOKEN}")
H = f"/k8s/clusters/{HEALTHY}"
POD = "/api/v1/namespaces/default/pods/p"
EXEC, ATTACH, LOG = f"{POD}/exec?command=sh&stdout=1", f"{POD}/attach?stdout=1", f"{POD}/log?follow=true"
WATCH, PORTFORWARD = "/api/v1/pods?watch=1", f"{POD}/portforward?ports=8080"
V4, V5 = "v4.channel.k8s.io", "v5.channel.k8s.io"
RANCHER_JSON_401 = b'{"type":"error","status":"401","message":"must authenticate"}'
STATUS_401 = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized",
              "reason": "Unauthorized", "code": 401}
SUCCESS = b'{"metadata":{},"status":"Success"}'


def upgrade(*protocol_lines: str) -> list[tuple[str, str]]:
    return [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")] + [("Sec-WebSocket-Protocol", p) for p in protocol_lines]


# The servers are conftest's (pki, rancher, apiserver: one of each per module).
@pytest.fixture(autouse=True)
def fresh_records(request):
    """Each test sees only its own requests in the records of the servers it uses."""
    for name in ("rancher", "apiserver"):
        if name in request.fixturenames:
            request.getfixturevalue(name).clear()


def tls_client(server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server.pki.ca_cert)


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes  # for a 101: what came after the head in the first read
    first_read: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def exchange(server, target: str, headers=(), *, host: str | None = None) -> Answer:
    """One GET whose header lines go out exactly as given (after Host), and its answer."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    if server.pki:
        sock = tls_client(server).wrap_socket(sock, server_hostname="localhost")
    with sock:
        lines = [f"GET {target} HTTP/1.1", f"Host: {host or server.host}", *(f"{k}: {v}" for k, v in headers)]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = first_read = sock.recv(1 << 20)
        while b"\r\n\r\n" not in data:
            data += sock.recv(1 << 20)
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        answer = Answer(int(status_line.split()[1]), [tuple(h.split(": ", 1)) for h in header_lines], body, first_read)
        if answer.status != 101:
            if answer.header("Transfer-Encoding") == "chunked":
                while not answer.body.endswith(b"0\r\n\r\n"):
                    answer.body += sock.recv(1 << 20)
                size, _, rest = answer.body.partition(b"\r\n")
                answer.body = rest[:int(size, 16)]
            else:
                while len(answer.body) < int(answer.header("Content-Length")):
                    answer.body += sock.recv(1 << 20)
        return answer


def ws(server, target: str, headers=(), *, subprotocols=None, origin=None, user_agent=None, **options):
    return connect(server.url.replace("http", "ws", 1) + target, ssl=tls_client(server) if server.pki else None,
                   additional_headers=list(headers), subprotocols=subprotocols, origin=origin,
                   user_agent_header=user_agent, proxy=None, open_timeout=5, **options)


async def receive(conn, n: int) -> list:
    return [await asyncio.wait_for(conn.recv(), 5) for _ in range(n)]


async def stays_open(conn) -> bool:
    try:
        await asyncio.wait_for(conn.recv(), 0.2)
    except TimeoutError:
        return True
    return False


def assert_rancher_headers(answer: Answer, authenticated: bool) -> None:
    assert answer.header("X-Api-Cattle-Auth") == str(authenticated).lower()
    assert answer.header("X-Content-Type-Options") == "nosniff"
    assert answer.header("Cache-Control") == "no-cache, no-store, must-revalidate"


# --- tokens and certificates ---

def test_tokens():
    chromium = VECTORS["chromium-156-headlamp-exec"]
    assert TOKEN == chromium["token"]
    assert chromium["headers"][-1][1].endswith(standard_entry(TOKEN))
    assert dict(chromium["headers"])["User-Agent"] == BROWSER_UA
    assert "-" in b64url(DASH_UNDERSCORE_TOKEN) and "_" in b64url(DASH_UNDERSCORE_TOKEN)
    assert "+" in b64std(PLUS_TOKEN) and "/" not in b64std(PLUS_TOKEN)
    assert b64std(KUBECONFIG_TOKEN, pad=True).endswith("==")
    assert len(TOKENS) == 5 and all(":" in t for t in TOKENS)


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"], ids=["by name", "by address"])
def test_certificate_and_alpn(rancher, name):
    context = tls_client(rancher)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with context.wrap_socket(socket.create_connection(("127.0.0.1", rancher.port)), server_hostname=name) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"  # HTTP/2 cannot carry a 101 (§6)


# --- Rancher front (§4) ---

ORIGIN_CASES = [
    # User-Agent lines, Origin lines ({host}: the Host sent), Host sent (None: the server's), expected
    pytest.param([BROWSER_UA], ["https://evil.example"], None, 403, id="browser, other origin"),
    pytest.param([BROWSER_UA], ["https://{host}"], None, 101, id="browser, origin names the host"),
    pytest.param([BROWSER_UA], ["http://{host}"], None, 101, id="browser, origin names the host over http"),  # the scheme is ignored
    pytest.param([BROWSER_UA], [], None, 101, id="browser, no origin"),  # no Origin passes
    pytest.param([BROWSER_UA], ["https://{host}", "https://evil.example"], None, 403, id="browser, second origin line other"),  # every line
    pytest.param([BROWSER_UA], ["https://{host}", "http://{host}"], None, 101, id="browser, two origin lines naming the host"),
    pytest.param([BROWSER_UA], ["null"], None, 403, id="browser, origin null"),
    pytest.param([BROWSER_UA], ["https://127.0.0.1:443"], "127.0.0.1", 403, id="browser, origin with port 443, host without"),
    pytest.param([BROWSER_UA], ["https://127.0.0.1"], "127.0.0.1:443", 403, id="browser, origin without port, host with 443"),
    pytest.param([BROWSER_UA], ["https://127.0.0.1"], "127.0.0.1", 101, id="browser, origin and host without port"),
    pytest.param(["curl/8", "x MOZILLA y"], ["https://evil.example"], None, 403, id="mozilla on a second UA line, any case"),
    pytest.param([KUBECTL_UA], ["https://evil.example"], None, 101, id="kubectl, other origin"),  # not a browser
    pytest.param([], ["https://evil.example"], None, 101, id="no user agent, other origin"),
]


@pytest.mark.parametrize("agents, origins, host, expected", ORIGIN_CASES)
def test_origin_check(rancher, agents, origins, host, expected):
    sent_host = host or rancher.host
    headers = upgrade(V4) + [AUTH] + [("User-Agent", ua) for ua in agents] + \
        [("Origin", o.format(host=sent_host)) for o in origins]
    answer = exchange(rancher, H + EXEC, headers, host=host)
    assert answer.status == expected
    if expected == 403:
        assert answer.body == (b'{"Code":{"Code":"PermissionDenied","Status":403},'
                               b'"Message":"origin not allowed","Cause":null,"FieldName":""}')
        assert answer.header("Content-Type") == "application/json"
        assert_rancher_headers(answer, authenticated=False)


def test_origin_check_comes_first_and_only_on_upgrades(rancher):
    browser = [("User-Agent", BROWSER_UA), ("Origin", "https://evil.example")]
    assert exchange(rancher, H + EXEC, upgrade(V4) + browser).status == 403  # before authentication
    connection_list = [("Connection", "keep-alive"), ("Connection", "foo, Upgrade")] + upgrade(V4)[1:]
    assert exchange(rancher, H + EXEC, connection_list + [AUTH] + browser).status == 403  # any Connection token
    assert exchange(rancher, H + "/api/v1", [AUTH] + browser).status == 200  # not an upgrade


def basic(token: str, encode) -> tuple[str, str]:
    return "Authorization", "Basic " + encode(token, pad=True)


AUTH_CASES = [
    # cluster, headers, expected status (401 bodies: JSON on downstream clusters, text on local)
    pytest.param(HEALTHY, [AUTH], 200, id="bearer"),
    pytest.param(HEALTHY, [("Authorization", f"bearer {KUBECONFIG_TOKEN}")], 200, id="bearer in lower case"),
    pytest.param(HEALTHY, [("Authorization", f"Bearer  {TOKEN}")], 401, id="bearer, two spaces"),  # exactly one space
    pytest.param(HEALTHY, [("Authorization", f"Token {TOKEN}")], 401, id="scheme Token"),
    pytest.param(HEALTHY, [("Authorization", "Bearer token-abcde:wrong")], 401, id="bearer, unknown token"),
    pytest.param(HEALTHY, [basic(DASH_UNDERSCORE_TOKEN, b64url)], 200, id="basic, base64url"),
    pytest.param(HEALTHY, [basic(DASH_UNDERSCORE_TOKEN, b64std)], 200, id="basic, standard base64"),
    pytest.param(HEALTHY, [("Cookie", f"R_SESS={TOKEN}")], 200, id="R_SESS cookie"),
    pytest.param(HEALTHY, [("Cookie", "theme=dark"), ("Cookie", f"a=1; R_SESS={PLUS_TOKEN}")], 200,
                 id="R_SESS in a second cookie line"),
    pytest.param(HEALTHY, [("Authorization", "Bearer nope"), ("Cookie", f"R_SESS={TOKEN}")], 401,
                 id="R_SESS beside a wrong bearer"),  # R_SESS: no Authorization
    pytest.param(HEALTHY, [("X-Api-Auth-Header", f"Bearer {TOKEN}")], 401, id="X-Api-Auth-Header"),
    pytest.param(HEALTHY, [], 401, id="no credentials"),
    pytest.param(HEALTHY, [("Authorization", f"Bearer {SCOPED_TOKEN}")], 200, id="scoped token on its cluster"),
    pytest.param(DEAD, [("Authorization", f"Bearer {SCOPED_TOKEN}")], 401,
                 id="scoped token on another cluster"),  # scoped to c-m-healthy
    pytest.param(LOCAL, [("Authorization", f"Bearer {SCOPED_TOKEN}")], 401, id="scoped token on local"),
    pytest.param(LOCAL, [], 401, id="local, no credentials"),
    pytest.param(LOCAL, [("Cookie", f"R_SESS={KUBECONFIG_TOKEN}")], 200, id="local, R_SESS cookie"),
    pytest.param("c-m-unknown", [], 401, id="unknown cluster, no credentials"),  # authentication comes before the cluster lookup
    pytest.param("c-m-unknown", [("Authorization", f"Bearer {SCOPED_TOKEN}")], 401, id="unknown cluster, scoped token"),
]


@pytest.mark.parametrize("cluster, headers, expected", AUTH_CASES)
def test_rancher_authentication(rancher, cluster, headers, expected):
    answer = exchange(rancher, f"/k8s/clusters/{cluster}/api/v1", headers)
    assert answer.status == expected
    assert_rancher_headers(answer, authenticated=expected == 200)
    if expected == 401 and cluster == LOCAL:
        assert (answer.body, answer.header("Content-Type")) == (b"not authorized", "text/plain; charset=utf-8")
    elif expected == 401:
        assert (answer.body, answer.header("Content-Type")) == (RANCHER_JSON_401, "application/json")


def test_rancher_ignores_the_token_element(rancher):
    """The Chromium vector, pointed at this server: Rancher reads no token from Sec-WebSocket-Protocol."""
    vector = VECTORS["chromium-156-headlamp-exec"]
    headers = [(k, f"http://{rancher.host}" if k == "Origin" else v) for k, v in vector["headers"] if k != "Host"]
    target = H + vector["request"].split()[1]
    refused = exchange(rancher, target, headers)
    assert (refused.status, refused.body) == (401, RANCHER_JSON_401)
    accepted = exchange(rancher, target, headers + [AUTH])
    # Rancher forwards the list unchanged; the apiserver skips the element it does not support.
    assert (accepted.status, accepted.header("Sec-WebSocket-Protocol")) == (101, vector["server_chose"])
    assert [r.status for r in rancher.records] == [401, 101]


CLUSTER_CASES = [
    # target, upgrade, status, body (None: checked below)
    pytest.param(f"/k8s/clusters/c-m-unknown{EXEC}", True, 404,
                 b'{"type":"error","status":"404","code":"NotFound",'
                 b'"message":"clusters.management.cattle.io \\"c-m-unknown\\" not found"}', id="unknown, upgrade"),
    pytest.param(f"/k8s/clusters/{PENDING}/api/v1", False, 503, None, id="pending"),
    pytest.param(f"/k8s/clusters/{PENDING}{EXEC}", True, 503, None, id="pending, upgrade"),
    pytest.param(f"/k8s/clusters/{DEAD}{EXEC}", True, 502, b"", id="dead, upgrade"),  # tunnel down: empty 502 on upgrades
    pytest.param(f"/k8s/clusters/{DEAD}/api/v1", False, 500, None, id="dead"),
    pytest.param(f"/k8s/proxy/{HEALTHY}/api/v1", False, 200, None, id="healthy via /k8s/proxy"),
    pytest.param(f"/k8s/clusters/{LOCAL}{EXEC}", True, 101, b"\x82\x01\x01\x82\x11\x01hello from exec\n",
                 id="local, upgrade"),
]


@pytest.mark.parametrize("target, is_upgrade, status, body", CLUSTER_CASES)
def test_clusters(rancher, target, is_upgrade, status, body):
    answer = exchange(rancher, target, (upgrade(V4) if is_upgrade else []) + [AUTH])
    assert answer.status == status
    assert_rancher_headers(answer, authenticated=True)
    if body is not None:
        assert answer.body == body
    if status == 503:
        assert json.loads(answer.body)["code"] == "ClusterUnavailable"
    if status == 500:
        assert answer.body and answer.header("Content-Type").startswith("text/plain")


# --- the plain kube-apiserver's token element (§1) ---

NOT_UTF8 = BEARER_PREFIX + base64.urlsafe_b64encode(b"\xff\xfe:x").decode().rstrip("=")

KUBE_AUTH_CASES = [
    # Sec-WebSocket-Protocol lines, Authorization, expected status
    pytest.param([f"{V4}, {base64url_entry(TOKEN)}"], None, 101, id="entry last"),
    pytest.param([f"{base64url_entry(TOKEN)}, {V4}"], None, 101, id="entry first"),
    pytest.param([f"{V4},{base64url_entry(DASH_UNDERSCORE_TOKEN)}"], None, 101,
                 id="base64url with dash and underscore"),  # true base64url, '-' and '_'
    pytest.param([f"{V4}, {standard_entry(PLUS_TOKEN)}"], None, 401, id="standard base64 with plus"),  # '+' is not base64url
    pytest.param([f"{V4}, {base64url_entry(PLUS_TOKEN)}"], None, 101, id="base64url of the plus token"),
    pytest.param([f"{V4}, {BEARER_PREFIX + b64std(KUBECONFIG_TOKEN, pad=True)}"], None, 401, id="padded"),  # padding
    pytest.param([f"{V4}, {base64url_entry(KUBECONFIG_TOKEN)}"], None, 101, id="unpadded"),
    pytest.param([f"{V4}, {BEARER_PREFIX}"], None, 401, id="empty entry"),  # an empty token is no token
    pytest.param([f"{V4}, {BEARER_PREFIX}"], AUTH, 101, id="empty entry, Authorization"),
    pytest.param([f"{V4}, {base64url_entry(TOKEN)}, {base64url_entry(TOKEN)}"], None, 401,
                 id="two entries"),  # multiple tokens
    pytest.param([f"{V4}, {base64url_entry(TOKEN)}", base64url_entry(KUBECONFIG_TOKEN)], None, 401,
                 id="two entries on two lines"),  # every line is read
    pytest.param([f"{V4}, {BEARER_PREFIX}", base64url_entry(TOKEN)], None, 401,
                 id="empty entry and an entry on two lines"),  # an empty one counts too
    pytest.param([V4, base64url_entry(TOKEN)], None, 101, id="entry on a line of its own"),
    pytest.param([base64url_entry(TOKEN)], None, 401, id="entry alone"),  # missing additional subprotocol
    pytest.param([f"{V4}, Base64url.bearer.authorization.k8s.io.{b64url(TOKEN)}"], None, 401,
                 id="prefix in another case"),  # prefix case-sensitive
    pytest.param([f"{V4}, {NOT_UTF8}"], None, 401, id="not UTF-8"),
    pytest.param([f"{V4}, {base64url_entry('token-zzzzz:unknown')}"], None, 401, id="unknown token"),
    pytest.param([f"  {V4} ,\t{base64url_entry(TOKEN)}  "], None, 101, id="elements with spaces and tabs"),  # elements are trimmed
    pytest.param([V4], None, 401, id="no credentials"),
    pytest.param([V4], AUTH, 101, id="Authorization"),
    pytest.param([V4], ("Authorization", f"Bearer  {TOKEN}"), 401,
                 id="Authorization, two spaces"),  # SplitN on one space: an empty token
    pytest.param([f"{V4}, {base64url_entry(TOKEN)}, {base64url_entry(TOKEN)}"], AUTH, 101,
                 id="two entries, Authorization"),  # Authorization first: elements unread
    pytest.param([f"{V4}, {base64url_entry(TOKEN)}"], ("Authorization", "Bearer wrong"), 101,
                 id="entry, wrong Authorization"),  # then the element
]


@pytest.mark.parametrize("lines, authorization, expected", KUBE_AUTH_CASES)
def test_apiserver_token_element(apiserver, lines, authorization, expected):
    answer = exchange(apiserver, EXEC, upgrade(*lines) + ([authorization] if authorization else []))
    assert answer.status == expected
    if expected == 401:
        assert json.loads(answer.body) == STATUS_401 and answer.header("Content-Type") == "application/json"
    else:
        assert answer.header("Sec-WebSocket-Protocol") == V4  # never the token element
    assert answer.header("X-Api-Cattle-Auth") is None


@pytest.mark.parametrize("authorization, status, subprotocol", [
    # the element is removed before the watch sees the list
    pytest.param(None, 101, "base64.binary.k8s.io", id="entry only"),
    # Authorization authenticated first: the element stays, two protocols
    pytest.param(AUTH, 400, None, id="entry and Authorization"),
])
def test_apiserver_watch_with_token_element(apiserver, authorization, status, subprotocol):
    headers = upgrade(f"base64.binary.k8s.io, {base64url_entry(TOKEN)}")
    headers += [("Origin", "http://console")] + ([authorization] if authorization else [])
    answer = exchange(apiserver, WATCH, headers)
    assert (answer.status, answer.header("Sec-WebSocket-Protocol")) == (status, subprotocol)


def test_apiserver_plain_requests(apiserver):
    assert exchange(apiserver, "/api/v1", [("Sec-WebSocket-Protocol", f"{V4}, {base64url_entry(TOKEN)}")]).status == 401
    assert exchange(apiserver, "/api/v1", [AUTH]).status == 200
    unknown = exchange(apiserver, "/apis/nothing", [AUTH])
    assert unknown.status == 404 and json.loads(unknown.body)["reason"] == "NotFound"


# --- subprotocols and endpoints behind Rancher (§2) ---

SELECTION_CASES = [
    # target, protocol lines, status, chosen
    pytest.param(EXEC, ["v3.channel.k8s.io, v4.channel.k8s.io, channel.k8s.io"], 101, V4,
                 id="exec, the first supported"),  # the first supported
    pytest.param(EXEC, [f"{V5},{V4}"], 101, V5, id="exec, v5 before v4"),
    pytest.param(EXEC, ["base64.channel.k8s.io"], 101, "base64.channel.k8s.io", id="exec, base64.channel"),
    pytest.param(EXEC, [f"{base64url_entry(TOKEN)}, {V4}"], 101, V4,
                 id="exec, entry skipped"),  # Rancher forwards the element; it is skipped
    pytest.param(ATTACH, ["v4.base64.channel.k8s.io"], 101, "v4.base64.channel.k8s.io", id="attach, v4.base64"),
    pytest.param(EXEC, ["v2.channel.k8s.io"], 403, None, id="exec, v2 only"),
    pytest.param(EXEC, [], 403, None, id="exec, nothing offered"),
    pytest.param(EXEC, ["v2.channel.k8s.io", V4], 403, None,
                 id="exec, v4 on a second line"),  # negotiation reads the first line only (Header.Get)
    pytest.param(LOG, [], 101, None, id="log, nothing offered"),
    pytest.param(LOG, [f"base64.binary.k8s.io, {base64url_entry(TOKEN)}"], 101, "base64.binary.k8s.io",
                 id="log, base64.binary and entry"),
    pytest.param(LOG, [V4], 403, None, id="log, v4"),
    pytest.param(PORTFORWARD, [V5], 403, None, id="portforward, v5"),
    pytest.param(PORTFORWARD, [f"{V5}, {V4}"], 101, V4, id="portforward, v5 and v4"),
    pytest.param(WATCH, ["anything.example"], 101, "anything.example", id="watch, echoed"),  # no negotiation: echoed
    pytest.param(WATCH, [], 101, None, id="watch, nothing offered"),
    pytest.param(WATCH, [f"base64.binary.k8s.io, {base64url_entry(TOKEN)}"], 400, None,
                 id="watch, entry left"),  # a leftover element breaks watch
    pytest.param(WATCH, ["a,"], 400, None, id="watch, an empty element"),
]


@pytest.mark.parametrize("target, lines, status, chosen", SELECTION_CASES)
def test_subprotocol_selection(rancher, target, lines, status, chosen):
    answer = exchange(rancher, H + target, upgrade(*lines) + [AUTH, ("Origin", "http://console")])
    assert (answer.status, answer.header("Sec-WebSocket-Protocol")) == (status, chosen)
    if status != 101:
        assert answer.body == b""
    assert (rancher.records[-1].status, rancher.records[-1].subprotocol) == (status, chosen)


@pytest.mark.parametrize("origin", [None, "null"], ids=["no origin", "origin null"])
def test_watch_needs_an_origin(rancher, origin):
    headers = upgrade("base64.binary.k8s.io") + [AUTH] + ([("Origin", origin)] if origin else [])
    answer = exchange(rancher, H + WATCH, headers)
    assert (answer.status, answer.body) == (403, b"")


@pytest.mark.parametrize("headers, status", [
    pytest.param([("Sec-WebSocket-Version", "8")], 400, id="version 8"),
    pytest.param([("Sec-WebSocket-Key", "")], 400, id="empty key"),
])
def test_websocket_handshake_errors(rancher, headers, status):
    names = {k for k, _ in headers}
    answer = exchange(rancher, H + EXEC, [h for h in upgrade(V4) if h[0] not in names] + headers + [AUTH])
    assert answer.status == status


def test_streams_need_an_upgrade(rancher):
    for target in (EXEC, ATTACH, PORTFORWARD):
        answer = exchange(rancher, H + target, [AUTH])
        assert answer.status == 400 and b"Upgrade request required" in answer.body  # §6
    log = exchange(rancher, H + LOG, [AUTH])
    assert (log.status, log.header("Transfer-Encoding"), log.body) == (200, "chunked", b"line 1\nline 2\nline 3\n")
    watch = exchange(rancher, H + WATCH, [AUTH])
    assert watch.status == 200 and json.loads(watch.body)["type"] == "ADDED"


def test_exec_v5(rancher):
    async def scenario():
        async with ws(rancher, H + EXEC, [AUTH], subprotocols=[V5, V4]) as conn:
            assert conn.subprotocol == V5
            assert await receive(conn, 3) == [b"\x01", b"\x01hello from exec\n", b"\x03" + SUCCESS]
            with pytest.raises(ConnectionClosedOK):
                await conn.recv()
            assert conn.close_code == 1000
    asyncio.run(scenario())


def test_exec_before_v4_sends_no_status(rancher):
    async def scenario():
        async with ws(rancher, H + EXEC, [AUTH], subprotocols=["channel.k8s.io"]) as conn:
            assert await receive(conn, 2) == [b"\x01", b"\x01hello from exec\n"]
            with pytest.raises(ConnectionClosedOK):
                await conn.recv()
    asyncio.run(scenario())


def test_exec_base64_stdin_echo(rancher):
    async def scenario():
        async with ws(rancher, H + EXEC + "&stdin=1", [AUTH], subprotocols=["v4.base64.channel.k8s.io"]) as conn:
            assert await receive(conn, 2) == ["1", "1" + base64.b64encode(b"hello from exec\n").decode()]
            await conn.send("0" + base64.b64encode(b"ls\n").decode())
            assert await receive(conn, 1) == ["1" + base64.b64encode(b"ls\n").decode()]
            assert await stays_open(conn)  # v4 has no way to close stdin: the client closes
    asyncio.run(scenario())


def test_exec_v5_stdin_large_echo_resize_and_close(rancher):
    big = os.urandom(1 << 20) + b"x" * (2 << 20)
    async def scenario():
        async with ws(rancher, H + f"{POD}/exec?command=sh&stdin=true&stdout=true&tty=true", [AUTH],
                      subprotocols=[V5], max_size=None) as conn:
            await receive(conn, 2)
            await conn.send(b"\x04" + b'{"Width":80,"Height":24}')  # resize: ignored
            await conn.send(b"\x00" + big)
            assert await receive(conn, 1) == [b"\x01" + big]
            await conn.send(b"\xff\x00")  # v5: close stdin
            assert await receive(conn, 1) == [b"\x03" + SUCCESS]
            with pytest.raises(ConnectionClosedOK):
                await conn.recv()
    asyncio.run(scenario())


def test_attach_is_exec(rancher):
    async def scenario():
        async with ws(rancher, H + ATTACH, [AUTH], subprotocols=[V4]) as conn:
            assert await receive(conn, 3) == [b"\x01", b"\x01hello from exec\n", b"\x03" + SUCCESS]
    asyncio.run(scenario())


@pytest.mark.parametrize("protocols, expected", [
    pytest.param(["binary.k8s.io"], [b"", b"line 1\n", b"line 2\n", b"line 3\n"], id="binary"),
    pytest.param(None, [b"", b"line 1\n", b"line 2\n", b"line 3\n"], id="nothing offered"),
    pytest.param(["base64.binary.k8s.io"], ["", "bGluZSAxCg==", "bGluZSAyCg==", "bGluZSAzCg=="], id="base64"),
])
def test_log_follow(rancher, protocols, expected):
    async def scenario():
        async with ws(rancher, H + LOG, [AUTH], subprotocols=protocols) as conn:
            assert await receive(conn, 4) == expected
            assert await stays_open(conn)
    asyncio.run(scenario())


def test_watch(rancher):
    async def scenario():
        async with ws(rancher, H + WATCH, [AUTH], subprotocols=["base64.binary.k8s.io"], origin="http://c") as conn:
            (event,) = await receive(conn, 1)
            assert isinstance(event, str)  # JSON text, not base64, whatever protocol was echoed
            assert json.loads(event)["object"]["kind"] == "Pod"
            assert await stays_open(conn)
    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", [V4, "v4.base64.channel.k8s.io"], ids=["v4", "v4.base64"])
def test_portforward(rancher, protocol):
    text = "base64" in protocol
    def frame(channel, data):
        return str(channel) + base64.b64encode(data).decode() if text else bytes([channel]) + data
    async def scenario():
        async with ws(rancher, H + f"{POD}/portforward?ports=8080,9090", [AUTH], subprotocols=[protocol]) as conn:
            ports = [(8080).to_bytes(2, "little")] * 2 + [(9090).to_bytes(2, "little")] * 2
            assert await receive(conn, 4) == [frame(c, p) for c, p in enumerate(ports)]
            await conn.send(frame(2, b"GET / HTTP/1.0\r\n\r\n"))
            assert await receive(conn, 1) == [frame(2, b"GET / HTTP/1.0\r\n\r\n")]
    asyncio.run(scenario())


def test_permessage_deflate(rancher):
    data = b"\x00" + b"compressible " * 100_000
    async def scenario():
        async with ws(rancher, H + EXEC + "&stdin=1", [AUTH], subprotocols=[V4], max_size=None) as conn:
            assert conn.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
            await receive(conn, 2)
            await conn.send(data)
            assert await receive(conn, 1) == [b"\x01" + data[1:]]
    asyncio.run(scenario())
    plain = exchange(rancher, H + EXEC, upgrade(V4) + [AUTH])
    assert plain.header("Sec-WebSocket-Extensions") is None


@pytest.mark.parametrize("target, origin, frames", [
    pytest.param(EXEC, [], b"\x82\x01\x01\x82\x11\x01hello from exec\n", id="exec"),
    pytest.param(LOG, [], b"\x82\x00\x82\x07line 1\n\x82\x07line 2\n\x82\x07line 3\n", id="log"),
    pytest.param(WATCH, [("Origin", "http://console")], b"\x81", id="watch"),
])
def test_101_and_first_frames_in_one_write(rancher, target, origin, frames):
    # Over TLS a read returns at most one record, and each write makes its own record.
    answer = exchange(rancher, H + target, upgrade(V4 if target == EXEC else "binary.k8s.io") + [AUTH] + origin)
    assert answer.status == 101
    assert answer.first_read.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and answer.body.startswith(frames)


def test_plain_http(pki):
    with FakeServer() as server:
        assert server.url == f"http://{server.host}"
        answer = exchange(server, H + EXEC, upgrade(V4) + [AUTH])
        assert answer.status == 101 and answer.body.startswith(b"\x82\x01\x01\x82\x11\x01hello from exec\n")
        browser = [("User-Agent", BROWSER_UA), ("Origin", "https://evil.example")]
        assert exchange(server, H + EXEC, upgrade(V4) + [AUTH] + browser).status == 403


# --- records ---

def test_records_keep_headers_as_sent(rancher):
    headers = upgrade("a") + [("sec-websocket-protocol", f"{V4}, b"), ("X-Test", "1"), ("x-TEST", "2"), AUTH]
    exchange(rancher, H + EXEC + "&x=1", headers)
    (record,) = rancher.wait_for_records(1)
    assert record.headers == (("Host", rancher.host), *headers)
    assert (record.method, record.target, record.path) == ("GET", H + EXEC + "&x=1", H + EXEC.split("?")[0])
    assert record.header("x-test") == "1, 2" and record.header_lines("X-TEST") == ["1", "2"]
    assert record.header("Sec-WebSocket-Protocol") == f"a, {V4}, b" and record.header("absent") is None
    assert (record.status, record.subprotocol, record.body) == (403, None, b"")  # "a" alone is on line one


def test_records_refused_requests(rancher):
    exchange(rancher, H + EXEC, upgrade(V4) + [("User-Agent", BROWSER_UA), ("Origin", "http://evil")])
    exchange(rancher, H + EXEC, upgrade(V4) + [AUTH])
    first, second = rancher.records
    assert (first.status, first.body) == (403, json.dumps(ORIGIN_DENIED, separators=(",", ":")).encode())
    assert (second.status, second.subprotocol, second.body) == (101, V4, b"")
    rancher.records.clear()  # a copy
    assert len(rancher.records) == 2
    rancher.clear()
    assert rancher.records == []
    with pytest.raises(TimeoutError):
        rancher.wait_for_records(1, timeout=0.05)


# --- robustness and lifecycle ---

def test_disconnects_and_garbage_harm_nothing(rancher, caplog):
    context = tls_client(rancher)
    def connection():
        return context.wrap_socket(socket.create_connection(("127.0.0.1", rancher.port)), server_hostname="localhost")
    socket.create_connection(("127.0.0.1", rancher.port)).close()  # before the TLS handshake
    with connection() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHo")  # mid-head
    with connection() as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    with connection() as sock:  # mid-stream, no close frame
        sock.sendall(f"GET {H}{LOG} HTTP/1.1\r\nHost: {rancher.host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 101 ")
    assert exchange(rancher, H + "/api/v1", [AUTH]).status == 200
    assert not [r for r in caplog.records if r.levelno >= 30]


def test_start_and_stop(pki):
    started = time.monotonic()
    server = FakeServer(rancher=False, pki=pki).start()
    assert time.monotonic() - started < 0.5
    async def scenario():
        async with ws(server, LOG, [AUTH], subprotocols=["binary.k8s.io"]) as conn:
            await receive(conn, 4)
            await asyncio.to_thread(server.stop)  # with a stream open
            with pytest.raises(ConnectionClosed):  # not a timeout: the stop ended the stream
                await asyncio.wait_for(conn.recv(), 5)
    asyncio.run(scenario())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)


def test_command_line(tmp_path):
    with subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_rancher.py")),
                           "--tls-dir", str(tmp_path)], stdout=subprocess.PIPE, text=True) as process:
        try:
            printed = dict(process.stdout.readline().split() for _ in range(4))
            assert printed["url"].startswith("https://127.0.0.1:") and printed["cluster"] == printed["url"] + H
            assert (printed["ca"], printed["token"]) == (str(tmp_path / "ca.pem"), TOKEN)
        finally:
            process.terminate()


# --- real clients against it ---

def test_python_kubernetes_client(rancher):
    kubernetes = pytest.importorskip("kubernetes")
    from kubernetes.stream import stream
    configuration = kubernetes.client.Configuration()
    configuration.host, configuration.ssl_ca_cert = rancher.url + H, rancher.pki.ca_cert
    configuration.api_key = {"authorization": f"Bearer {TOKEN}"}
    with kubernetes.client.ApiClient(configuration) as client:
        output = stream(kubernetes.client.CoreV1Api(client).connect_get_namespaced_pod_exec, "p", "default",
                        command=["echo"], stderr=True, stdin=False, stdout=True, tty=False)
    assert output == "hello from exec\n"
    record = rancher.records[-1]
    assert (record.status, record.subprotocol, record.header("Origin")) == (101, V5, rancher.url)
    assert record.header("User-Agent") is None


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl")
def test_kubectl(rancher, tmp_path):
    (tmp_path / "config").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": rancher.url + H,
                                               "certificate-authority": rancher.pki.ca_cert}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "default"}}]}))
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "config"), HOME=str(tmp_path))
    def kubectl(*args):
        result = subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout
    assert kubectl("get", "pods").split()[:3] == ["NAME", "AGE", "p"]
    assert kubectl("exec", "p", "--", "echo") == "hello from exec\n"
    assert kubectl("logs", "-f", "p") == "line 1\nline 2\nline 3\n"
    exec_record = next(r for r in rancher.records if "/exec" in r.path)
    assert (exec_record.subprotocol, exec_record.header("Origin")) == (V5, None)
    assert exec_record.header("User-Agent").startswith("kubectl/")
