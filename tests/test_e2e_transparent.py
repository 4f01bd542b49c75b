"""End to end in network namespaces: mitmdump in transparent and WireGuard mode with the addon,
the redirects installed by deploy/transparent/redirect, the strict Rancher stand-in over TLS on
an address of its own, and the Headlamp exec handshake (tests/data/handshakes.yaml).

    client 10.77.1.2 --- 10.77.1.1 gateway 10.77.2.1 --- 10.77.2.2:443 upstream (Rancher)
    (kws-<pid>-client)   (kws-<pid>-gateway: mitmdump)   (kws-<pid>-upstream)

- gateway: the client's traffic crosses the gateway, whose nat PREROUTING sends it to mitmdump;
- same host (a sidecar): the client is this process inside the gateway namespace, mitmdump runs
  there as uid 65534, and nat OUTPUT sends every user's traffic but mitmdump's own to it;
- WireGuard: the client tunnels to mitmdump's WireGuard server with Debian's wireguard-go;
- a rule's `token:` goes where the destination address, or an SNI the upstream certificate
  proved, says; never where only the Host header does (interface §4).

Root only (each test skips saying why otherwise). Expectations come from the facts (facts §n:
shared/spec/protocol-facts.md, in tests/data), not from our code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import time

import pytest

import netns
from fake_rancher import HEALTHY
from helpers import BEARER_PREFIX, PAGE_ORIGIN, TOKEN, VECTORS, secret_forms
from netns import FakeServerAt, Lab, NetnsMitmdump, entered, make_pki, missing_tool, run
from ws_client import Outcome, open_async

pytestmark = pytest.mark.e2e  # namespaces, firewall rules, mitmdump, the test server

CLIENT_IP, GATEWAY_CLIENT_SIDE, GATEWAY_UPSTREAM_SIDE, UPSTREAM_IP = "10.77.1.2", "10.77.1.1", "10.77.2.1", "10.77.2.2"
GATEWAY_IFACE = "gw-client"  # the gateway's interface towards the client
UPSTREAM_NAME = "rancher.test"  # also in the upstream's certificate
PROXY_PORT = 8080  # K8S_WS_PORT's default
MITMDUMP_UID = 65534  # same host: mitmdump's own user (nobody), whose traffic is not redirected
WIREGUARD_PORT = 51820

CHROMIUM = VECTORS["chromium-156-headlamp-exec"]
EXEC_PROTOCOLS = [p.strip() for p in dict(CHROMIUM["headers"])["Sec-WebSocket-Protocol"].split(",")]
EXEC_QUERY = CHROMIUM["request"].split()[1].partition("?")[2]
FORWARDED_PROTOCOLS = ", ".join(p for p in EXEC_PROTOCOLS if not p.startswith(BEARER_PREFIX))

FIREWALLS = [pytest.param("iptables", id="iptables"), pytest.param("nft", id="nft")]
FIREWALL_TOOLS = {"iptables": ("iptables", "iptables"), "nft": ("nft", "nftables")}


def exec_url(namespace: str, host: str = UPSTREAM_IP) -> str:
    return f"wss://{host}/k8s/clusters/{HEALTHY}/api/v1/namespaces/{namespace}/pods/p/exec?{EXEC_QUERY}"


def require_firewall(firewall: str) -> None:
    tool, package = FIREWALL_TOOLS[firewall]
    reason = missing_tool(tool, package=package)
    if reason:
        pytest.skip(reason)


# --- the lab ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab():
    reason = netns.skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        lab.client, lab.gateway, lab.upstream = lab.host("client"), lab.host("gateway"), lab.host("upstream")
        lab.link(lab.client, "client-gw", f"{CLIENT_IP}/24", lab.gateway, GATEWAY_IFACE, f"{GATEWAY_CLIENT_SIDE}/24")
        lab.link(lab.gateway, "gw-upstream", f"{GATEWAY_UPSTREAM_SIDE}/24", lab.upstream, "upstream-gw", f"{UPSTREAM_IP}/24")
        lab.ip(lab.client, "route", "add", "default", "via", GATEWAY_CLIENT_SIDE)
        lab.ip(lab.upstream, "route", "add", "default", "via", GATEWAY_UPSTREAM_SIDE)
        lab.exec(lab.gateway, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")  # not redirected: routed
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def upstream_pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("upstream-pki"), ips=(UPSTREAM_IP,), names=(UPSTREAM_NAME,))


@pytest.fixture(scope="module")
def upstream(lab, upstream_pki):
    """Rancher in front of a kube-apiserver, over TLS, at UPSTREAM_IP:443 in the upstream namespace."""
    with entered(lab.upstream):
        server = FakeServerAt(UPSTREAM_IP, rancher=True, pki=upstream_pki, port=443).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redirected(lab: Lab, namespace: str, topology: str, **settings):
    """The redirect up for the block, and down after it, whatever happens."""
    up = lab.redirect(namespace, "up", topology, **settings)
    try:
        yield up
    finally:
        lab.redirect(namespace, "down", topology, check=False)


def mitmdump(tmp_path, lab, pki, *, mode="transparent", listen_host="0.0.0.0", listen_port=PROXY_PORT, **kwargs):
    return NetnsMitmdump(tmp_path / "mitmdump", lab.gateway, mode=mode, listen_host=listen_host,
                         listen_port=listen_port, upstream_ca=pki.ca_cert, **kwargs)


# --- the client -------------------------------------------------------------------------------

async def _open(url, protocols, *, cafiles, connect_to=None, server_hostname=None, messages=2):
    context = ssl.create_default_context()
    for cafile in cafiles:
        context.load_verify_locations(cafile)
    connection = {}
    if connect_to:  # a Host (the URL's) that is not where the connection goes
        connection["sock"] = socket.create_connection(connect_to, timeout=10)
    if server_hostname:  # the SNI, and the name the certificate must have (an address: no SNI)
        connection["server_hostname"] = server_hostname
    return await open_async(url, protocols, ssl_context=context, messages=messages, **connection)


def handshake(namespace: str, url: str, protocols=EXEC_PROTOCOLS, **kwargs) -> Outcome:
    """A WebSocket handshake made from inside a namespace, with a browser's User-Agent and Origin."""
    with entered(namespace):
        return asyncio.run(_open(url, protocols, **kwargs))


def received(server, namespace: str):
    """What the upstream received for the pod path in that Kubernetes namespace."""
    return [r for r in server.records if f"/namespaces/{namespace}/" in r.target]


def assert_exec_worked(outcome: Outcome, records: list, host: str = UPSTREAM_IP) -> None:
    assert outcome.status == 101, outcome
    assert outcome.protocol == CHROMIUM["server_chose"]
    assert outcome.messages[1] == b"\x01hello from exec\n"  # stdout on channel 1 (facts §2)
    [record] = records  # once: no loop, no retry
    assert record.status == 101
    assert record.header_lines("Authorization") == [f"Bearer {TOKEN}"]
    assert record.header("Sec-WebSocket-Protocol") == FORWARDED_PROTOCOLS
    # Rancher's origin check passed: a browser User-Agent, and the Origin names the Host (facts §4)
    assert "Mozilla" in record.header("User-Agent")
    assert record.header("Host") == host and record.header_lines("Origin") == [f"https://{host}"]


def assert_straight_to_rancher(outcome: Outcome, records: list) -> None:
    """The handshake as the browser sends it, not redirected: Rancher's origin check (facts §4)."""
    assert outcome.status == 403 and b"origin not allowed" in outcome.body, outcome
    [record] = records
    assert record.header("Authorization") is None and record.header_lines("Origin") == [PAGE_ORIGIN]


def assert_no_token(text: str) -> None:
    leaked = [form for form in secret_forms(TOKEN) if form in text]
    assert not leaked, "a test token is in mitmdump's output"


# --- gateway ----------------------------------------------------------------------------------

@pytest.mark.parametrize("firewall", FIREWALLS)
def test_gateway(lab, upstream, upstream_pki, firewall, tmp_path):
    require_firewall(firewall)
    namespace = f"gateway-{firewall}"
    with mitmdump(tmp_path, lab, upstream_pki) as proxy:
        with redirected(lab, lab.gateway, "gateway", dest=f"{UPSTREAM_IP}/32", iface=GATEWAY_IFACE, firewall=firewall) as up:
            assert f"gateway up with {firewall}" in up.stdout
            outcome = handshake(lab.client, exec_url(namespace), cafiles=[proxy.ca_cert, upstream_pki.ca_cert])
            assert_exec_worked(outcome, received(upstream, namespace))
            assert f"k8s_ws: rule 'rancher' {UPSTREAM_IP} " in proxy.output()

            down = lab.redirect(lab.gateway, "down", "gateway")
            assert "gateway down: removed" in down.stdout
            upstream.clear()
            outcome = handshake(lab.client, exec_url(namespace), cafiles=[proxy.ca_cert, upstream_pki.ca_cert])
            assert_straight_to_rancher(outcome, received(upstream, namespace))
        assert_no_token(proxy.output())


# --- same host (a sidecar) --------------------------------------------------------------------

@pytest.mark.parametrize("firewall", FIREWALLS)
def test_same_host(lab, upstream, upstream_pki, firewall, tmp_path):
    """mitmdump's own connection to Rancher is not redirected (the owner match): without it, it
    would connect to itself, over and over."""
    require_firewall(firewall)
    namespace = f"same-host-{firewall}"
    with mitmdump(tmp_path, lab, upstream_pki, listen_host="127.0.0.1", uid=MITMDUMP_UID) as proxy:
        with redirected(lab, lab.gateway, "same-host", dest=UPSTREAM_IP, uid=MITMDUMP_UID, firewall=firewall):
            # This process is root, not mitmdump's user: its traffic is redirected.
            outcome = handshake(lab.gateway, exec_url(namespace), cafiles=[proxy.ca_cert, upstream_pki.ca_cert])
            assert_exec_worked(outcome, received(upstream, namespace))

            lab.redirect(lab.gateway, "down", "same-host")
            upstream.clear()
            outcome = handshake(lab.gateway, exec_url(namespace), cafiles=[proxy.ca_cert, upstream_pki.ca_cert])
            assert_straight_to_rancher(outcome, received(upstream, namespace))
        assert_no_token(proxy.output())


# --- WireGuard --------------------------------------------------------------------------------

@contextlib.contextmanager
def wireguard_client(lab: Lab, namespace: str, workdir, *, private_key: str, server_public_key: str, endpoint: str, route: str):
    """A WireGuard interface in a namespace, by Debian's userspace wireguard-go (this kernel may
    have no WireGuard module), with mitmproxy's client configuration, routing `route` into it."""
    interface = f"wg{os.getpid()}"[:15]
    workdir.mkdir(parents=True, exist_ok=True)
    key_file = workdir / "client.key"
    key_file.touch(mode=0o600)
    key_file.write_text(private_key + "\n")
    log = open(workdir / "wireguard-go.log", "wb")
    daemon = subprocess.Popen(["ip", "netns", "exec", namespace, "wireguard-go", "--foreground", interface],
                              stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"})
    log.close()
    try:
        for _ in range(100):
            if subprocess.run(["ip", "-n", namespace, "link", "show", interface], capture_output=True).returncode == 0:
                break
            if daemon.poll() is not None:
                raise RuntimeError(f"wireguard-go exited {daemon.returncode}: {(workdir / 'wireguard-go.log').read_text()}")
            time.sleep(0.1)
        else:
            raise RuntimeError("wireguard-go made no interface within 10 s")
        lab.exec(namespace, "wg", "set", interface, "private-key", key_file,
                 "peer", server_public_key, "endpoint", endpoint, "allowed-ips", f"{route}/32")
        lab.ip(namespace, "addr", "add", "10.0.0.1/32", "dev", interface)  # mitmproxy's client address
        lab.ip(namespace, "link", "set", interface, "up")
        lab.ip(namespace, "route", "add", f"{route}/32", "dev", interface)
        yield interface
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def test_wireguard(lab, upstream, upstream_pki, tmp_path):
    reason = missing_tool("wireguard-go", "wg", package="wireguard-go wireguard-tools")
    if reason:
        pytest.skip(reason)
    namespace = "wireguard"
    with mitmdump(tmp_path, lab, upstream_pki, mode="wireguard", listen_port=WIREGUARD_PORT) as proxy:
        keys = json.loads((proxy.confdir / "wireguard.conf").read_text())  # mitmproxy's, made at start
        server_public_key = run("wg", "pubkey", input=keys["server_key"]).stdout.strip()
        with wireguard_client(lab, lab.client, tmp_path / "wireguard", private_key=keys["client_key"],
                              server_public_key=server_public_key,
                              endpoint=f"{GATEWAY_CLIENT_SIDE}:{WIREGUARD_PORT}", route=UPSTREAM_IP):
            outcome = handshake(lab.client, exec_url(namespace), cafiles=[proxy.ca_cert, upstream_pki.ca_cert])
            assert_exec_worked(outcome, received(upstream, namespace))
        assert_no_token(proxy.output())


# --- a rule's token goes only where the destination is known (interface §4) --------------------

TOKEN_RULES = f"""\
rules:
  - name: by-address
    hosts: ["{UPSTREAM_IP}"]
    paths: ["/k8s/clusters/*/namespaces/by-address/*"]
    origin: match-host
    token: {{file: TOKEN_FILE}}
  - name: by-name
    hosts: ["{UPSTREAM_NAME}"]
    paths: ["/k8s/clusters/*/namespaces/by-name-*/*"]
    origin: match-host
    token: {{file: TOKEN_FILE}}
  # The shipped rule, after them: it applies where theirs do not, with no token of its own.
  - name: rancher
    hosts: ["*"]
    origin: match-host
"""
NO_TOKEN_PROTOCOLS = [p for p in EXEC_PROTOCOLS if not p.startswith(BEARER_PREFIX)]  # the client sends none


class TestTokenDestination:
    """A client that sends no token, through a gateway whose rules hold one."""

    @pytest.fixture(scope="class")
    @staticmethod  # a class-scoped fixture may not be an instance method (pytest 9 warns, 10 refuses)
    def proxy(lab, upstream, upstream_pki, tmp_path_factory):
        if missing_tool("nft", package="nftables") and missing_tool("iptables", package="iptables"):
            pytest.skip("needs nft or iptables (apt-get install nftables; .ci/run installs it)")
        workdir = tmp_path_factory.mktemp("token-rules")
        (workdir / "token").write_text(TOKEN + "\n")
        rules = workdir / "rules.yaml"
        rules.write_text(TOKEN_RULES.replace("TOKEN_FILE", str(workdir / "token")))
        with mitmdump(workdir, lab, upstream_pki, rules=rules) as proxy:
            # K8S_WS_FIREWALL unset: the one installed
            with redirected(lab, lab.gateway, "gateway", dest=UPSTREAM_IP, dports="443"):
                yield proxy
        assert_no_token(proxy.output())

    def cafiles(self, proxy, upstream_pki):
        return [proxy.ca_cert, upstream_pki.ca_cert]

    def test_injected_when_the_destination_address_matches(self, lab, upstream, upstream_pki, proxy):
        outcome = handshake(lab.client, exec_url("by-address"), NO_TOKEN_PROTOCOLS, cafiles=self.cafiles(proxy, upstream_pki))
        assert_exec_worked(outcome, received(upstream, "by-address"))
        assert re.search(r"k8s_ws: rule 'by-address' .*: .*injected", proxy.output()), proxy.output()

    def test_injected_when_the_upstream_certificate_proved_the_sni(self, lab, upstream, upstream_pki, proxy):
        """The client names rancher.test in its SNI; mitmproxy verifies the upstream's certificate
        against that name before anything is sent."""
        outcome = handshake(lab.client, exec_url("by-name-sni", host=UPSTREAM_NAME), NO_TOKEN_PROTOCOLS,
                            cafiles=self.cafiles(proxy, upstream_pki), connect_to=(UPSTREAM_IP, 443),
                            server_hostname=UPSTREAM_NAME)
        assert_exec_worked(outcome, received(upstream, "by-name-sni"), host=UPSTREAM_NAME)

    def test_withheld_when_only_the_host_header_names_the_host(self, lab, upstream, upstream_pki, proxy):
        """Connected by address (no SNI), Host: rancher.test: only the client says so. Rule
        'by-name' does not apply; 'rancher' after it does, without a token."""
        mark = len(proxy.output())
        outcome = handshake(lab.client, exec_url("by-name-host", host=UPSTREAM_NAME), NO_TOKEN_PROTOCOLS,
                            cafiles=self.cafiles(proxy, upstream_pki), connect_to=(UPSTREAM_IP, 443),
                            server_hostname=UPSTREAM_IP)
        assert outcome.status == 401, outcome  # Rancher found no token (facts §4)
        [record] = received(upstream, "by-name-host")
        assert record.header("Authorization") is None
        assert record.header("Host") == UPSTREAM_NAME and record.header_lines("Origin") == [f"https://{UPSTREAM_NAME}"]
        output = proxy.wait_for_output("upstream 401", start=mark)[mark:]
        lines = [line for line in output.splitlines() if "k8s_ws:" in line]
        assert any("rule 'rancher'" in line for line in lines), output

        # WITHHELD-TOKEN (interface §4, last sentences of `token:`): the addon says that the token
        # was withheld, and the 401's hint says why instead of "give the rule a token".
        assert any("withheld" in line and "'by-name'" in line for line in lines), output  # WITHHELD-TOKEN
        [warning] = [line for line in lines if "upstream 401:" in line]  # WITHHELD-TOKEN
        assert "give the rule a token" not in warning and "withheld" in warning, warning  # WITHHELD-TOKEN
