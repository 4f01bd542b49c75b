"""End to end: real mitmdump processes with the addon, in front of the strict Rancher-like test
server over TLS (verification on), driven by `websockets` clients that replay the handshakes of
tests/data/handshakes.yaml.

Expectations come from docs/protocol.md (cited as facts §N), not from our code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import time

import pytest
from websockets.asyncio.client import connect

from fake_rancher import HEALTHY, LOCAL
from helpers import (
    BEARER_PREFIX,
    BROWSER_UA,
    DASH_UNDERSCORE_TOKEN,
    KUBECONFIG_TOKEN,
    PAGE_ORIGIN,
    TOKEN,
    VECTORS,
    base64url_entry,
    secret_forms,
    standard_entry,
)
from mitmdump_harness import ROOT, Mitmdump, Mitmweb
from ws_client import open_async, open_ws

pytestmark = pytest.mark.e2e  # mitmdump processes and the test server

CHROMIUM = VECTORS["chromium-156-headlamp-exec"]
CHROMIUM_HEADERS = dict(CHROMIUM["headers"])
EXEC_PROTOCOLS = [p.strip() for p in CHROMIUM_HEADERS["Sec-WebSocket-Protocol"].split(",")]
EXEC_QUERY = CHROMIUM["request"].split()[1].partition("?")[2]
assert CHROMIUM["token"] == TOKEN  # the test server knows the vector's token
assert CHROMIUM_HEADERS["User-Agent"] == BROWSER_UA  # the clients below send the vector's User-Agent

def exec_path(cluster: str = HEALTHY, namespace: str = "default") -> str:
    return f"/k8s/clusters/{cluster}/api/v1/namespaces/{namespace}/pods/p/exec?{EXEC_QUERY}"

# --- fixtures (pki, rancher, apiserver, reverse, regular: conftest.py) -------------------------


FIELD_RULES = """\
rules:
  - name: ua-remove
    hosts: ["127.0.0.1"]
    paths: ["/k8s/clusters/*/namespaces/ua-remove/*"]
    user_agent: remove
  - name: ua-string
    hosts: ["127.0.0.1"]
    paths: ["/k8s/clusters/*/namespaces/ua-string/*"]
    user_agent: "k8s-ws-test/1.0"
  - name: origin-remove
    hosts: ["127.0.0.1"]
    paths: ["/k8s/clusters/*/namespaces/origin-remove/*"]
    origin: remove
  - name: origin-keep
    hosts: ["127.0.0.1"]
    paths: ["/k8s/clusters/*/namespaces/origin-keep/*"]
    origin: keep
  - name: auth-replace
    hosts: ["127.0.0.1"]
    paths: ["/k8s/clusters/*/namespaces/auth-replace/*"]
    authorization: replace
    origin: match-host
  - name: auth-keep
    hosts: ["127.0.0.1"]
    paths: ["/k8s/clusters/*/namespaces/auth-keep/*"]
    authorization: keep
    origin: match-host
  - name: token-env
    hosts: ["127.0.0.1"]
    paths: ["/k8s/clusters/*/namespaces/token-env/*"]
    origin: match-host
    token: {env: K8S_WS_E2E_TOKEN}
  - name: token-file
    hosts: ["127.0.0.1:*"]
    paths: ["/k8s/clusters/*/namespaces/token-file/*"]
    origin: match-host
    token: {file: TOKEN_FILE}
  - name: token-unreadable
    hosts: ["127.0.0.1"]
    paths: ["/k8s/clusters/*/namespaces/token-unreadable/*"]
    token: {file: /nonexistent/k8s-ws-token}
  - name: other-host
    hosts: ["rancher.example.com"]
    paths: ["/k8s/clusters/*/namespaces/other-host/*"]
    origin: match-host
  - name: plain-apiserver
    hosts: ["127.0.0.1"]
    paths: ["/api/*"]
    auth: subprotocol
  - name: both
    hosts: ["127.0.0.1"]
    paths: ["/k8s/clusters/*/namespaces/both/*"]
    auth: both
    origin: match-host
"""

@pytest.fixture(scope="module")
def fields(tmp_path_factory, rancher, pki):
    """mitmdump in reverse mode in front of Rancher, with a rule per field under test."""
    workdir = tmp_path_factory.mktemp("fields")
    (workdir / "token").write_text(KUBECONFIG_TOKEN + "\n")
    rules = workdir / "rules.yaml"
    rules.write_text(FIELD_RULES.replace("TOKEN_FILE", str(workdir / "token")))
    env = {"K8S_WS_E2E_TOKEN": TOKEN}
    with Mitmdump(workdir, mode=f"reverse:{rancher.url}", rules=rules, upstream_ca=pki.ca_cert, env=env) as proxy:
        yield proxy

@pytest.fixture(scope="module")
def apiserver_proxy(tmp_path_factory, apiserver, pki):
    """mitmdump in reverse mode in front of a plain kube-apiserver, with the same field rules."""
    workdir = tmp_path_factory.mktemp("apiserver")
    rules = workdir / "rules.yaml"
    rules.write_text(FIELD_RULES.replace("TOKEN_FILE", "/nonexistent"))
    with Mitmdump(workdir, mode=f"reverse:{apiserver.url}", rules=rules, upstream_ca=pki.ca_cert) as proxy:
        yield proxy

@pytest.fixture
def client_ssl(pki):
    return ssl.create_default_context(cafile=pki.ca_cert)

# --- clients ----------------------------------------------------------------------------------

def latest(server, path_part):
    records = [r for r in server.records if path_part in r.target]
    assert records, f"the server saw no request for {path_part}"
    return records[-1]

def nothing_recorded(server, path_part):
    return not [r for r in server.records if path_part in r.target]

# --- the mission: the Chromium/Headlamp exec handshake ------------------------------------------

def assert_exec_worked(outcome, record, rancher):
    assert outcome.status == 101, outcome
    assert outcome.protocol == CHROMIUM["server_chose"]  # the vector's server chose v4.channel.k8s.io
    assert outcome.messages[1] == b"\x01hello from exec\n"  # stdout on channel 1 (facts §2)
    assert record.status == 101
    assert record.header_lines("Authorization") == [f"Bearer {TOKEN}"]
    assert BEARER_PREFIX not in (record.header("Sec-WebSocket-Protocol") or "")
    assert record.header("Sec-WebSocket-Protocol") == (
        "base64.binary.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io"
    )
    # Rancher's origin check passed: a browser User-Agent, and the Origin names the Host (facts §4)
    assert "Mozilla" in record.header("User-Agent")
    assert record.header_lines("Origin") == [f"https://{rancher.host}"] and record.header("Host") == rancher.host

def test_headlamp_exec_through_reverse_mode(reverse, rancher):
    path = exec_path(namespace="reverse-exec")
    outcome = open_ws(f"ws://127.0.0.1:{reverse.port}{path}", [*EXEC_PROTOCOLS[:-1], standard_entry(TOKEN)])
    assert_exec_worked(outcome, latest(rancher, "reverse-exec"), rancher)

def test_headlamp_exec_through_regular_mode_with_connect(regular, rancher):
    path = exec_path(namespace="regular-exec")
    context = ssl.create_default_context(cafile=regular.ca_cert)  # the client trusts mitmproxy's CA
    outcome = open_ws(f"wss://{rancher.host}{path}", [*EXEC_PROTOCOLS[:-1], standard_entry(TOKEN)], ssl_context=context, proxy=regular.url)
    assert_exec_worked(outcome, latest(rancher, "regular-exec"), rancher)

def test_the_vectors_entry_is_the_headlamp_encoding():
    assert EXEC_PROTOCOLS[-1] == standard_entry(TOKEN)

def test_the_same_handshake_straight_to_rancher_fails_as_rancher_makes_it_fail(rancher, client_ssl):
    url = f"wss://{rancher.host}{exec_path(namespace='direct')}"
    browser = open_ws(url, EXEC_PROTOCOLS, ssl_context=client_ssl)
    assert browser.status == 403 and json.loads(browser.body)["Message"] == "origin not allowed"  # facts §4
    scripted = open_ws(url, EXEC_PROTOCOLS, ssl_context=client_ssl, user_agent="curl/8.5.0")
    assert scripted.status == 401 and json.loads(scripted.body)["message"] == "must authenticate"
    assert scripted.headers["X-Api-Cattle-Auth"] == "false"

def test_watch_through_origin_match_host_returns_an_event(reverse, rancher):
    # Headlamp 0.34's watch: base64.binary.k8s.io plus the entry; the watch needs an Origin and
    # exactly one protocol left (facts §2).
    path = f"/k8s/clusters/{HEALTHY}/api/v1/namespaces/watch-ns/pods?watch=1"
    outcome = open_ws(f"ws://127.0.0.1:{reverse.port}{path}", ["base64.binary.k8s.io", standard_entry(TOKEN)], messages=1)
    assert outcome.status == 101 and outcome.protocol == "base64.binary.k8s.io"
    assert json.loads(outcome.messages[0])["type"] == "ADDED"
    assert latest(rancher, "watch-ns").header("Sec-WebSocket-Protocol") == "base64.binary.k8s.io"

def test_log_follow_and_local_cluster(reverse, rancher):
    path = f"/k8s/clusters/{LOCAL}/api/v1/namespaces/log-ns/pods/p/log?container=c&follow=true&timestamps=true"
    outcome = open_ws(f"ws://127.0.0.1:{reverse.port}{path}", ["base64.binary.k8s.io", standard_entry(TOKEN)], messages=2)
    assert outcome.status == 101 and outcome.protocol == "base64.binary.k8s.io"
    assert base64.b64decode(outcome.messages[1]) == b"line 1\n"

def test_k8s_proxy_alias_and_openshift_order(reverse, rancher):
    path = f"/k8s/proxy/{HEALTHY}/api/v1/namespaces/alias-ns/pods/p/exec?command=sh&stdout=1"
    outcome = open_ws(f"ws://127.0.0.1:{reverse.port}{path}", [standard_entry(TOKEN), "v4.channel.k8s.io"])
    assert outcome.status == 101 and outcome.messages[1] == b"\x01hello from exec\n"
    assert latest(rancher, "alias-ns").header_lines("Authorization") == [f"Bearer {TOKEN}"]

def test_shipped_rules_leave_other_kubernetes_servers_untouched(tmp_path, apiserver, pki):
    # A plain kube-apiserver has no /k8s/clusters paths: the entry reaches it as sent, and it
    # accepts it itself (facts §1).
    with Mitmdump(tmp_path, mode=f"reverse:{apiserver.url}", upstream_ca=pki.ca_cert) as proxy:
        path = "/api/v1/namespaces/shipped-plain/pods/p/exec?command=sh&stdout=1"
        protocols = ["v4.channel.k8s.io", standard_entry(TOKEN)]
        outcome = open_ws(f"ws://127.0.0.1:{proxy.port}{path}", protocols, user_agent="kubectl/v1.32.4", origin=None)
    assert outcome.status == 101
    record = latest(apiserver, "shipped-plain")
    assert record.header("Sec-WebSocket-Protocol") == ", ".join(protocols) and record.header("Authorization") is None

# --- each rule field, as the server recorded it ---------------------------------------------------

@pytest.mark.parametrize(
    "namespace, expect",
    [
        pytest.param("ua-remove", {"User-Agent": [], "Origin": [PAGE_ORIGIN]}, id="ua-remove"),  # no browser UA: no origin check
        pytest.param("ua-string", {"User-Agent": ["k8s-ws-test/1.0"], "Origin": [PAGE_ORIGIN]}, id="ua-string"),
        pytest.param("origin-remove", {"User-Agent": [BROWSER_UA], "Origin": []}, id="origin-remove"),  # no Origin passes
    ],
)
def test_user_agent_and_origin_fields(fields, rancher, namespace, expect):
    outcome = open_ws(f"ws://127.0.0.1:{fields.port}{exec_path(namespace=namespace)}", [*EXEC_PROTOCOLS[:-1], standard_entry(TOKEN)])
    assert outcome.status == 101, outcome
    record = latest(rancher, namespace)
    for name, lines in expect.items():
        assert record.header_lines(name) == lines
    assert record.header_lines("Authorization") == [f"Bearer {TOKEN}"]

def test_origin_keep_meets_rancher_origin_check(fields, rancher):
    outcome = open_ws(f"ws://127.0.0.1:{fields.port}{exec_path(namespace='origin-keep')}", [*EXEC_PROTOCOLS[:-1], standard_entry(TOKEN)])
    assert outcome.status == 403 and b"origin not allowed" in outcome.body
    assert latest(rancher, "origin-keep").header_lines("Authorization") == [f"Bearer {TOKEN}"]

@pytest.mark.parametrize(
    "namespace, sent_authorization",
    [
        pytest.param("auth-keep", f"Bearer {KUBECONFIG_TOKEN}", id="auth-keep"),
        pytest.param("auth-replace", f"Bearer {TOKEN}", id="auth-replace"),
    ],
)
def test_authorization_field(fields, rancher, namespace, sent_authorization):
    headers = [("Authorization", f"Bearer {KUBECONFIG_TOKEN}")]
    url = f"ws://127.0.0.1:{fields.port}{exec_path(namespace=namespace)}"
    outcome = open_ws(url, ["v4.channel.k8s.io", standard_entry(TOKEN)], headers=headers)
    assert outcome.status == 101
    record = latest(rancher, namespace)
    assert record.header_lines("Authorization") == [sent_authorization]
    assert record.header("Sec-WebSocket-Protocol") == "v4.channel.k8s.io"

@pytest.mark.parametrize(
    "namespace, token",
    [pytest.param("token-env", TOKEN, id="token-env"), pytest.param("token-file", KUBECONFIG_TOKEN, id="token-file")],
)
def test_token_field_injects_a_stored_token(fields, rancher, namespace, token):
    # e.g. a console that relies on a cookie, or no credentials at all
    outcome = open_ws(f"ws://127.0.0.1:{fields.port}{exec_path(namespace=namespace)}", ["v4.channel.k8s.io"])
    assert outcome.status == 101
    assert latest(rancher, namespace).header_lines("Authorization") == [f"Bearer {token}"]

def test_stored_token_never_follows_a_redirect_by_another_addon(tmp_path, rancher, pki):
    # --map-remote reroutes requests at the `request` hook, after the rule matched 127.0.0.1.
    # The new destination is the same server under another name, so a leak would be recorded.
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: stored\n    hosts: ['127.0.0.1']\n    paths: ['/k8s/clusters/*']\n    token: {env: K8S_WS_E2E_TOKEN}\n"
    )
    proxy = Mitmdump(
        tmp_path, mode=f"reverse:{rancher.url}", rules=rules, upstream_ca=pki.ca_cert, env={"K8S_WS_E2E_TOKEN": TOKEN},
        args=("--map-remote", f"|//127.0.0.1:{rancher.port}/|//localhost:{rancher.port}/"),
    )
    with proxy:
        outcome = open_ws(f"ws://127.0.0.1:{proxy.port}{exec_path(namespace='redirected')}", ["v4.channel.k8s.io"], user_agent="curl/8")
    assert outcome.status == 500
    assert outcome.body.decode().startswith(f"k8s_ws: rule 'stored': the request was redirected to localhost:{rancher.port}")
    assert nothing_recorded(rancher, "redirected")


def test_both_sets_the_header_and_keeps_the_entry(fields, rancher):
    entry = standard_entry(TOKEN)
    outcome = open_ws(f"ws://127.0.0.1:{fields.port}{exec_path(namespace='both')}", ["v4.channel.k8s.io", entry])
    assert outcome.status == 101 and outcome.protocol == "v4.channel.k8s.io"
    record = latest(rancher, "both")
    assert record.header_lines("Authorization") == [f"Bearer {TOKEN}"]
    assert record.header("Sec-WebSocket-Protocol") == f"v4.channel.k8s.io, {entry}"

def test_subprotocol_mode_against_a_plain_apiserver(apiserver_proxy, apiserver):
    # Gardener's encoding: true base64url, first (facts §5); kube-apiserver reads it (facts §1).
    entry = base64url_entry(TOKEN)
    path = "/api/v1/namespaces/subprotocol-ns/pods/p/exec?command=sh&stdout=1"
    outcome = open_ws(f"ws://127.0.0.1:{apiserver_proxy.port}{path}", [entry, "v4.channel.k8s.io"], user_agent="Mozilla/5.0", origin=None)
    assert outcome.status == 101 and outcome.messages[1] == b"\x01hello from exec\n"
    record = latest(apiserver, "subprotocol-ns")
    assert record.header("Sec-WebSocket-Protocol") == f"{entry}, v4.channel.k8s.io"
    assert record.header("Authorization") is None

def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

def test_unmatched_upgrade_passes_byte_for_byte(fields, rancher):
    # The rule "other-host" names another host: nothing may change, down to spacing and case.
    sent = [
        ("Connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("User-Agent", "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "tQiJAFM2bZVrbS1r8ywACA=="),
        ("sec-websocket-protocol", f"v4.channel.k8s.io ,  {standard_entry(TOKEN)}"),
        ("Sec-WebSocket-Protocol", "channel.k8s.io"),
        ("Authorization", f"Bearer {TOKEN}"),
        ("X-Odd", "\u00e9t\u00e9"),
    ]
    path = exec_path(namespace="other-host")
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{fields.port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent)
    answer = raw_exchange(fields.port, head.encode("latin-1") + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 101")
    record = latest(rancher, "other-host")
    assert [h for h in record.headers if h[0].lower() != "host"] == [(k, v) for k, v in sent]

def test_plain_requests_pass_byte_for_byte(reverse, rancher):
    sent = [
        ("Accept", "application/json"),
        ("Authorization", f"Bearer {TOKEN}"),
        ("User-Agent", "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"),
    ]
    path = f"/k8s/clusters/{HEALTHY}/api/v1/namespaces/plain-ns/pods/p"
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent)
    answer = raw_exchange(reverse.port, head.encode() + b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    record = latest(rancher, "plain-ns")
    assert [h for h in record.headers if h[0] not in ("Host", "Connection")] == sent

# --- refusals: the client gets k8s_ws's answer, the server sees nothing ---------------------------

@pytest.mark.parametrize(
    "namespace, protocols, status, reason",
    [
        pytest.param("refuse-two", ["v4.channel.k8s.io", standard_entry(TOKEN), standard_entry(KUBECONFIG_TOKEN)], 400,
                     "2 bearer entries", id="two bearer entries"),
        pytest.param("refuse-undecodable", ["v4.channel.k8s.io", BEARER_PREFIX + "a"], 400, "does not decode",
                     id="an entry that does not decode"),
        pytest.param("refuse-alone", [standard_entry(TOKEN)], 400, "no other protocol left", id="the entry alone"),
    ],
)
def test_refusals_never_reach_the_server(reverse, rancher, namespace, protocols, status, reason):
    outcome = open_ws(f"ws://127.0.0.1:{reverse.port}{exec_path(namespace=namespace)}", protocols)
    assert outcome.status == status
    assert outcome.headers["Content-Type"] == "text/plain"
    body = outcome.body.decode()
    assert body.startswith("k8s_ws: rule 'rancher': ") and reason in body and body.count("\n") == 1
    assert not any(secret in body for secret in secret_forms(TOKEN))
    assert nothing_recorded(rancher, namespace)

def test_unreadable_token_source_answers_500(fields, rancher):
    outcome = open_ws(f"ws://127.0.0.1:{fields.port}{exec_path(namespace='token-unreadable')}", ["v4.channel.k8s.io"])
    assert outcome.status == 500
    assert outcome.body.decode().startswith(
        "k8s_ws: rule 'token-unreadable': the token source (file /nonexistent/k8s-ws-token) cannot be read"
    )
    assert nothing_recorded(rancher, "token-unreadable")

# --- no token in anything mitmdump shows or saves -------------------------------------------------

def test_no_token_in_output_at_flow_detail_4_nor_in_a_flow_file(tmp_path, rancher, pki):
    flows = tmp_path / "flows.mitm"
    # The shipped rule, after one that injects a token from a file.
    token_file = tmp_path / "token"
    token_file.write_text(DASH_UNDERSCORE_TOKEN + "\n")
    rules = tmp_path / "rules.yaml"
    stored = f"  - name: stored\n    hosts: ['127.0.0.1']\n    paths: ['*/leak-stored/*']\n    token: {{file: '{token_file}'}}\n"
    rules.write_text((ROOT / "rules.yaml").read_text().replace("rules:\n", "rules:\n" + stored, 1))
    proxy = Mitmdump(
        tmp_path, mode=f"reverse:{rancher.url}", rules=rules, upstream_ca=pki.ca_cert, options={"flow_detail": 4}, args=("-w", str(flows))
    )
    with proxy:
        base = f"ws://127.0.0.1:{proxy.port}"
        assert open_ws(base + exec_path(namespace="leak-stored"), ["v4.channel.k8s.io"], user_agent="curl/8").status == 101
        assert open_ws(base + exec_path(namespace="leak-exec"), [*EXEC_PROTOCOLS[:-1], standard_entry(TOKEN)]).status == 101
        assert open_ws(base + exec_path(namespace="leak-refused"), [standard_entry(TOKEN)]).status == 400
        # an upgrade no rule handles, and kubectl's plain request with Authorization
        other = open_ws(base + "/k8s/clusters/x/v1/leak-other", ["a", standard_entry(KUBECONFIG_TOKEN)], user_agent="curl/8")
        assert other.status == 401
        head = (
            f"GET /k8s/clusters/{HEALTHY}/api/v1/namespaces/leak-plain/pods/p HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {KUBECONFIG_TOKEN}\r\nCookie: R_SESS={TOKEN}\r\nConnection: close\r\n\r\n"
        )
        assert raw_exchange(proxy.port, head.encode()).startswith(b"HTTP/1.1 200")
        proxy.wait_for_output("leak-plain")
    output, saved = proxy.output(), flows.read_bytes()
    assert "leak-exec" in output and b"leak-plain" in saved  # the flows are there, in detail
    for secret in secret_forms(TOKEN) + secret_forms(KUBECONFIG_TOKEN) + secret_forms(DASH_UNDERSCORE_TOKEN):
        assert secret not in output
        assert secret.encode() not in saved
    assert b"Bearer <redacted sha256:" in saved and "<redacted sha256:" in output

def test_show_tokens_puts_them_back_in_the_output(tmp_path, rancher, pki):
    # The other side of the two tests above: the option works, and those tests can see a token.
    options = {"flow_detail": 2, "k8s_ws_show_tokens": True}
    with Mitmdump(tmp_path, mode=f"reverse:{rancher.url}", upstream_ca=pki.ca_cert, options=options) as proxy:
        outcome = open_ws(f"ws://127.0.0.1:{proxy.port}{exec_path(namespace='shown')}", ["v4.channel.k8s.io", standard_entry(TOKEN)])
        assert outcome.status == 101
        proxy.wait_for_output("Bearer " + TOKEN)


# --- the rules file at start and while running ----------------------------------------------------

def test_broken_rules_file_stops_mitmdump_at_start(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: a\n    hosts: ['*']\n    auth: cookie\n")
    proxy = Mitmdump(tmp_path, rules=rules)
    assert proxy.run_to_exit() != 0
    assert f"{rules}:4:11: rule 'a': auth: unknown value 'cookie'" in proxy.output()

def test_rules_change_is_applied_within_2_seconds_and_a_broken_edit_keeps_the_last_good(tmp_path, rancher, pki):
    rules = tmp_path / "rules.yaml"
    allow = "rules:\n  - name: live\n    hosts: ['127.0.0.1']\n    paths: ['/k8s/clusters/*']\n    origin: match-host\n"
    rules.write_text(allow.replace("127.0.0.1", "elsewhere.example"))
    with Mitmdump(tmp_path, mode=f"reverse:{rancher.url}", rules=rules, upstream_ca=pki.ca_cert) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}{exec_path(namespace='live')}"
        protocols = ["v4.channel.k8s.io", standard_entry(TOKEN)]
        assert open_ws(url, protocols).status == 403  # no rule for this host yet: Rancher refuses
        rules.write_text(allow)
        changed = time.monotonic()
        proxy.wait_for_output("reloaded 1 rules", timeout=2.0)
        assert time.monotonic() - changed <= 2.0
        assert open_ws(url, protocols).status == 101
        mark = len(proxy.output())
        rules.write_text(allow + "    origin: sometimes\n")
        proxy.wait_for_output("keeping the last good rules", start=mark)
        assert f"{rules}:" in proxy.output()[mark:]
        assert open_ws(url, protocols).status == 101
        assert proxy.process.poll() is None

def test_no_token_in_mitmweb_nor_in_a_har_file(tmp_path, rancher, pki):
    har = tmp_path / "flows.har"
    proxy = Mitmweb(tmp_path, mode=f"reverse:{rancher.url}", upstream_ca=pki.ca_cert, options={"hardump": har})
    web_port, web_auth, get = proxy.web_port, proxy.web_auth, proxy.get

    async def scenario():
        # mitmweb's UI follows flows live over /updates: listen to everything it broadcasts.
        async with connect(f"ws://127.0.0.1:{web_port}/updates", proxy=None, max_size=None,
                           additional_headers=web_auth) as updates:
            base = f"ws://127.0.0.1:{proxy.port}"
            outcome = await open_async(base + exec_path(namespace="web-exec"), [*EXEC_PROTOCOLS[:-1], standard_entry(TOKEN)])
            assert outcome.status == 101
            broadcast = []
            try:
                while True:
                    broadcast.append(await asyncio.wait_for(updates.recv(), 1))
            except TimeoutError:
                pass
            return broadcast

    with proxy:
        broadcast = asyncio.run(scenario())

        listed = get("/flows").decode()
        dumped = get("/flows/dump")
    assert any("web-exec" in m for m in broadcast) and "web-exec" in listed and b"web-exec" in dumped
    saved_har = har.read_text()
    assert "web-exec" in saved_har
    for secret in secret_forms(TOKEN):
        assert not any(secret in m for m in broadcast)
        assert secret not in listed and secret.encode() not in dumped and secret not in saved_har
    assert "<redacted sha256:" in listed
