"""deploy/transparent/redirect (interface §8), in a network namespace of its own: what it installs
with iptables and with nft, that `up` twice installs once, that `down` removes exactly that and
leaves everyone else's rules alone, and its errors. No traffic: test_e2e_transparent.py sends
some through the redirects."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

import netns
from netns import REDIRECT, Lab, missing_tool, run

pytestmark = pytest.mark.e2e  # a namespace, the firewall tools

FIREWALLS = [pytest.param("iptables", id="iptables"), pytest.param("nft", id="nft")]
TOPOLOGIES = [pytest.param("gateway", id="gateway"), pytest.param("same-host", id="same-host")]
SETTINGS = {"gateway": {"dest": "192.0.2.0/24", "iface": "eth+"}, "same-host": {"dest": "192.0.2.10", "uid": "65534"}}
# Someone else's rules in the same nat chains, which the script must leave as they are.
OTHERS = [
    ("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "22", "-j", "REDIRECT", "--to-ports", "2222"),
    ("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "25", "-j", "REDIRECT", "--to-ports", "2525"),
    ("ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "25", "-j", "REDIRECT", "--to-ports", "2525"),
]


@pytest.fixture(scope="module")
def lab():
    reason = netns.skip_reason() or missing_tool("iptables", "nft", package="iptables nftables")
    if reason:
        pytest.skip(reason)
    lab = Lab("kws-redirect")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def ns(lab, request):
    """A fresh namespace with other people's nat rules in it."""
    name = lab.host(f"t{len(lab.namespaces)}")
    for command in OTHERS:
        lab.exec(name, *command)
    yield name
    run("ip", "netns", "del", name)
    lab.namespaces.remove(name)


def redirect(lab, ns, action, topology, **settings):
    return lab.redirect(ns, action, topology, check=False, **settings)


def firewall_state(lab, ns, firewall: str = "nft") -> str:
    """The namespace's firewall as iptables and ip6tables see it, and as nft does unless the
    script used iptables: iptables-nft makes a built-in chain on first use and keeps it, empty,
    after its last rule is gone (iptables shows built-in chains always, so its view is exact)."""
    dumps = [lab.exec(ns, "nft", "list", "ruleset").stdout] if firewall == "nft" else []
    for save in ("iptables-save", "ip6tables-save"):
        dumps.append("".join(line for line in lab.exec(ns, save).stdout.splitlines(True) if not line.startswith("#")))
    return re.sub(r"\[\d+:\d+\]", "[0:0]", "\n".join(dumps))


def ours(lab, ns, firewall) -> list[str]:
    """The redirect rules the script installed, as the firewall it used lists them (nft cannot
    decode every rule ip6tables-nft writes)."""
    if firewall == "nft":
        lines = lab.exec(ns, "nft", "list", "ruleset").stdout.splitlines()
        return [line.strip() for line in lines if "redirect to" in line and 'comment "k8s-ws redirect' in line]
    lines = lab.exec(ns, "iptables-save").stdout.splitlines() + lab.exec(ns, "ip6tables-save").stdout.splitlines()
    return [line for line in lines if "-j REDIRECT" in line and "k8s-ws redirect" in line]


#: What the rule for SETTINGS holds, as each firewall lists it.
EXPECTED = {
    ("gateway", "nft"): ['iifname "eth*"', "ip daddr 192.0.2.0/24", "tcp dport { 80, 443 }", "redirect to :8080"],
    ("gateway", "iptables"): ["-i eth+", "-d 192.0.2.0/24", "--dports 80,443", "--to-ports 8080"],
    ("same-host", "nft"): ["meta skuid != 65534", "ip daddr 192.0.2.10", "tcp dport { 80, 443 }", "redirect to :8080"],
    ("same-host", "iptables"): ["-d 192.0.2.10/32", "! --uid-owner 65534", "--dports 80,443", "--to-ports 8080"],
}


@pytest.mark.parametrize("firewall", FIREWALLS)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_up_twice_installs_once_and_down_removes_exactly_it(lab, ns, topology, firewall):
    before = firewall_state(lab, ns, firewall)
    first = redirect(lab, ns, "up", topology, firewall=firewall, **SETTINGS[topology])
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"redirect: {topology} up with {firewall}")
    installed = firewall_state(lab, ns, firewall)
    [rule] = ours(lab, ns, firewall)
    assert all(part in rule for part in EXPECTED[topology, firewall]), rule

    again = redirect(lab, ns, "up", topology, firewall=firewall, **SETTINGS[topology])
    assert again.returncode == 0 and "already up" in again.stdout, again.stderr
    assert firewall_state(lab, ns, firewall) == installed
    assert redirect(lab, ns, "status", topology).stdout.startswith(f"redirect: {topology} up with {firewall}")

    down = redirect(lab, ns, "down", topology)
    assert down.returncode == 0 and f"{topology} down: removed" in down.stdout, down.stderr
    assert firewall_state(lab, ns, firewall) == before
    again = redirect(lab, ns, "down", topology)
    assert (again.returncode, again.stdout) == (0, f"redirect: {topology} was not up: nothing to remove\n")
    assert redirect(lab, ns, "status", topology).stdout == f"redirect: {topology} is down\n"


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_new_settings_replace_the_old(lab, ns, firewall):
    redirect(lab, ns, "up", "gateway", firewall=firewall, dest="192.0.2.10")
    changed = redirect(lab, ns, "up", "gateway", firewall=firewall, dest="192.0.2.10", dports="6443", port="9090", iface="eth+")
    assert changed.returncode == 0 and "replaced: dest=192.0.2.10 dports=80,443 port=8080 iface=any" in changed.stdout
    [rule] = ours(lab, ns, firewall)
    expected = {"nft": ['iifname "eth*"', "tcp dport 6443", "redirect to :9090"],
                "iptables": ["-i eth+", "--dports 6443", "--to-ports 9090"]}[firewall]
    assert all(part in rule for part in expected), rule


@pytest.mark.parametrize("firewall", FIREWALLS)
def test_both_topologies_side_by_side_and_ipv6(lab, ns, firewall):
    before = firewall_state(lab, ns, firewall)
    assert redirect(lab, ns, "up", "gateway", firewall=firewall, dest="2001:db8::/64").returncode == 0
    assert redirect(lab, ns, "up", "same-host", firewall=firewall, dest="192.0.2.10", uid="nobody").returncode == 0
    gateway, same_host = sorted(ours(lab, ns, firewall), key=lambda rule: "gateway" not in rule)
    assert ("ip6 daddr 2001:db8::/64" if firewall == "nft" else "-d 2001:db8::/64") in gateway
    assert ("meta skuid != 65534" if firewall == "nft" else "! --uid-owner 65534") in same_host
    if firewall == "iptables":
        assert "-j K8S-WS-GATEWAY" in lab.exec(ns, "ip6tables-save").stdout
    assert redirect(lab, ns, "down", "gateway").returncode == 0
    assert redirect(lab, ns, "down", "same-host").returncode == 0
    assert firewall_state(lab, ns, firewall) == before


def test_one_installation_per_topology(lab, ns):
    assert redirect(lab, ns, "up", "gateway", firewall="nft", dest="192.0.2.10").returncode == 0
    other = redirect(lab, ns, "up", "gateway", firewall="iptables", dest="192.0.2.10")
    assert other.returncode == 1
    assert other.stderr == "redirect: gateway is already up with nft: run 'redirect down gateway' first\n"
    down = redirect(lab, ns, "down", "gateway")
    assert down.stdout == "redirect: gateway down: removed the nft table inet k8s_ws_gateway\n"


def test_the_default_firewall_is_nft_when_installed(lab, ns):
    up = redirect(lab, ns, "up", "gateway", dest="192.0.2.10")
    assert up.stdout == (
        "redirect: gateway up with nft (table inet k8s_ws_gateway): "
        "tcp to 192.0.2.10 ports 80,443 arriving on any interface -> port 8080\n"
    )


def test_not_root(lab, ns):
    # A copy another user can reach: the clone, and pytest's temporary directories, may sit where
    # only root can enter (mktemp -d is 0700).
    with tempfile.TemporaryDirectory(prefix="k8s-ws-redirect-") as readable:
        script = Path(readable) / "redirect"
        shutil.copy(REDIRECT, script)
        os.chmod(readable, 0o755)
        result = run("ip", "netns", "exec", ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     str(script), "status", "gateway", check=False)
    assert (result.returncode, result.stderr) == (1, "redirect: must run as root: it reads and changes the firewall\n")


def bad(id: str, args: list[str], message: str, **settings):
    return pytest.param(args, settings, message, id=id)


UP_GATEWAY, UP_SAME_HOST, DEST = ["up", "gateway"], ["up", "same-host"], "192.0.2.1"
BAD = [
    bad("no arguments", [], "expected 2 arguments, got 0"),
    bad("unknown action", ["start", "gateway"], "unknown action 'start' (up, down or status)"),
    bad("unknown topology", ["up", "router"], "unknown topology 'router' (gateway or same-host)", dest=DEST),
    bad("no destination", UP_GATEWAY, "K8S_WS_DEST is required"),
    bad("destination a name", UP_GATEWAY, "K8S_WS_DEST: 'rancher.example.com' is not one IPv4 or IPv6 address or CIDR",
        dest="rancher.example.com"),
    bad("octet over 255", UP_GATEWAY, "K8S_WS_DEST: '192.0.2.300' is not an IPv4 address or CIDR", dest="192.0.2.300"),
    bad("prefix over 32", UP_GATEWAY, "K8S_WS_DEST: '192.0.2.0/33' has a prefix length over 32", dest="192.0.2.0/33"),
    bad("two destinations", UP_GATEWAY, "is not one IPv4 or IPv6 address", dest="192.0.2.1,192.0.2.2"),
    bad("prefix over 128", UP_GATEWAY, "K8S_WS_DEST: '2001:db8::/129' has a prefix length over 128", dest="2001:db8::/129"),
    bad("port a name", UP_GATEWAY, "K8S_WS_DPORTS: 'https' is not a port (1-65535) in '80,https'", dest=DEST, dports="80,https"),
    bad("port 0", UP_GATEWAY, "K8S_WS_DPORTS: '0' is not a port", dest=DEST, dports="0"),
    bad("empty port", UP_GATEWAY, "K8S_WS_DPORTS: '' is not a port", dest=DEST, dports="80,,443"),
    bad("16 ports", UP_GATEWAY, "K8S_WS_DPORTS: 1 to 15 ports", dest=DEST, dports=",".join(map(str, range(1, 17)))),
    bad("listen port over 65535", UP_GATEWAY, "K8S_WS_PORT: '65536' is not a port (1-65535)", dest=DEST, port="65536"),
    bad("same-host without uid", UP_SAME_HOST, "K8S_WS_UID is required for same-host", dest=DEST),
    bad("unknown user", UP_SAME_HOST, "K8S_WS_UID: no user named 'no-such-user'", dest=DEST, uid="no-such-user"),
    bad("uid 0", UP_SAME_HOST, "K8S_WS_UID: not root", dest=DEST, uid="0"),
    bad("same-host with an interface", UP_SAME_HOST, "K8S_WS_IFACE is for gateway only", dest=DEST, uid="65534", iface="eth0"),
    bad("interface not a name", UP_GATEWAY, "K8S_WS_IFACE: 'eth0; reboot' is not an interface name", dest=DEST, iface="eth0; reboot"),
    bad("unknown firewall", UP_GATEWAY, "K8S_WS_FIREWALL: 'ufw' is not iptables or nft", dest=DEST, firewall="ufw"),
]


@pytest.mark.parametrize(("args", "settings", "message"), BAD)
def test_bad_input_is_a_usage_error_and_changes_nothing(lab, ns, args, settings, message):
    before = firewall_state(lab, ns)
    env = {f"K8S_WS_{k.upper()}": v for k, v in settings.items()}
    result = lab.exec(ns, REDIRECT, *args, env=env, check=False)
    assert result.returncode == 2 and result.stdout == ""
    first, usage = result.stderr.splitlines()
    assert first.startswith("redirect: ") and message in first, result.stderr
    assert usage.startswith("usage: redirect up|down|status gateway|same-host")
    assert firewall_state(lab, ns) == before
