"""`k8s-ws explain` and the mitmproxy commands kubews.rules, kubews.reload, kubews.explain
(interface.md §7): the rule that matches and the request as forwarded (§4), tokens redacted (§6)."""

import shlex

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from helpers import (
    BEARER_PREFIX,
    BROWSER_UA,
    KUBECONFIG_TOKEN,
    PAGE_ORIGIN,
    TOKEN,
    fingerprint_of,
    redacted,
    secret_forms,
    standard_entry,
)
from kubews import cli
from kubews.explain import Target, parse_header_lines, parse_target
from kubews.mitm import K8sWs

STORED = KUBECONFIG_TOKEN  # the rule's stored token
HEADLAMP_ENTRY = standard_entry(TOKEN)  # facts §5
EXEC = "/k8s/clusters/c-m-healthy/api/v1/namespaces/default/pods/p/exec?command=sh&stdout=1"
RULES = """\
rules:
  - name: header
    hosts: ["rancher.test"]
    origin: match-host
  - name: subprotocol
    hosts: ["kube.test:6443"]
    auth: subprotocol
  - name: both
    hosts: ["both.test"]
    auth: both
    user_agent: remove
  - name: stored
    hosts: ["stored.test"]
    token: {env: K8S_WS_EXPLAIN_TOKEN}
"""
HEADLAMP = [
    f"User-Agent: {BROWSER_UA}",
    f"Origin: {PAGE_ORIGIN}",
    f"Sec-WebSocket-Protocol: base64.binary.k8s.io, v4.channel.k8s.io, {HEADLAMP_ENTRY}",
]
REDACTED = redacted(TOKEN)


@pytest.fixture
def rules_file(tmp_path, monkeypatch):
    monkeypatch.setenv("K8S_WS_EXPLAIN_TOKEN", STORED)
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    for secret in (*secret_forms(TOKEN), *secret_forms(STORED)):
        assert secret not in out and secret not in err
    return status, out, err


def explain_lines(capsys, rules_file, url, headers):
    status, out, _ = run(capsys, "explain", url, *(a for h in headers for a in ("-H", h)), "--rules", str(rules_file))
    assert status == 0
    return out.splitlines()


def forwarded(lines, name):
    return [line.split(": ", 1)[1] for line in lines if line.startswith(f"  {name}: ")]


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, target, host_header",
    [
        pytest.param(
            "wss://rancher.test/k8s/x?watch=1",
            Target("https", "rancher.test", 443, "/k8s/x", "watch=1"),
            "rancher.test",
            id="wss with a query",
        ),
        pytest.param(
            "https://rancher.test:443/a", Target("https", "rancher.test", 443, "/a", ""), "rancher.test", id="https, default port given"
        ),
        pytest.param("ws://kube.test:8080/a", Target("http", "kube.test", 8080, "/a", ""), "kube.test:8080", id="ws, another port"),
        pytest.param("HTTP://Kube.test", Target("http", "kube.test", 80, "/", ""), "kube.test", id="upper case, no path"),
        pytest.param("wss://[::1]:6443/api", Target("https", "::1", 6443, "/api", ""), "[::1]:6443", id="IPv6"),
    ],
)
def test_parse_target(url, target, host_header):
    assert parse_target(url) == target
    assert target.host_header == host_header  # as a browser sends Host: no default port


@pytest.mark.parametrize(
    "url, error",
    [
        pytest.param("ftp://x/", "must start with", id="ftp"),
        pytest.param("https:///path", "no host", id="no host"),
        pytest.param("https://h:99999/", "[Pp]ort", id="port out of range"),
    ],
)
def test_parse_target_refuses(url, error):
    with pytest.raises(ValueError, match=error):
        parse_target(url)


def test_header_line_errors_never_quote_the_line():
    assert parse_header_lines(["A: 1", "b:2 ", "C:"]) == (("A", "1"), ("b", "2"), ("C", ""))
    for bad in ([f"Bearer {TOKEN}"], ["ok: 1", f"Authorization Bearer {TOKEN}: x"]):
        with pytest.raises(ValueError) as info:
            parse_header_lines(bad)
        assert TOKEN not in str(info.value) and f"header {len(bad)}" in str(info.value)


# --- explain, per auth mode (interface §4) ------------------------------------------------------


def test_header_mode_moves_the_token_and_redacts_it(capsys, rules_file):
    lines = explain_lines(capsys, rules_file, f"wss://rancher.test{EXEC}", HEADLAMP)
    assert lines[1].startswith("rule 'header': hosts rancher.test")
    assert "token moved to Authorization" in lines[2] and fingerprint_of(TOKEN) in lines[2]
    assert f"  GET {EXEC} HTTP/1.1" in lines
    assert forwarded(lines, "Authorization") == [f"Bearer {REDACTED}"]
    assert forwarded(lines, "Sec-WebSocket-Protocol") == ["base64.binary.k8s.io, v4.channel.k8s.io"]
    assert forwarded(lines, "Origin") == ["https://rancher.test"]
    assert forwarded(lines, "Host") == ["rancher.test"] and forwarded(lines, "Upgrade") == ["websocket"]


def test_subprotocol_mode_keeps_the_entry_redacted(capsys, rules_file):
    lines = explain_lines(capsys, rules_file, "wss://kube.test:6443/api/v1/namespaces/d/pods/p/log", HEADLAMP)
    assert lines[1].startswith("rule 'subprotocol'")
    assert forwarded(lines, "Authorization") == []
    assert forwarded(lines, "Sec-WebSocket-Protocol") == [f"base64.binary.k8s.io, v4.channel.k8s.io, {BEARER_PREFIX}{REDACTED}"]
    assert forwarded(lines, "Origin") == [PAGE_ORIGIN]


def test_both_mode_sets_the_header_and_keeps_the_entry(capsys, rules_file):
    lines = explain_lines(capsys, rules_file, "wss://both.test/api/v1/pods?watch=1", HEADLAMP)
    assert lines[1].startswith("rule 'both'")
    assert forwarded(lines, "Authorization") == [f"Bearer {REDACTED}"]
    assert forwarded(lines, "Sec-WebSocket-Protocol")[0].endswith(f"{BEARER_PREFIX}{REDACTED}")
    assert forwarded(lines, "User-Agent") == []


def test_stored_token_is_injected_and_shown_by_fingerprint(capsys, rules_file):
    lines = explain_lines(capsys, rules_file, "wss://stored.test/api/v1/pods?watch=1", ["Sec-WebSocket-Protocol: base64.binary.k8s.io"])
    assert f"token env K8S_WS_EXPLAIN_TOKEN ({fingerprint_of(STORED)})" in lines[1]
    assert forwarded(lines, "Authorization") == [f"Bearer <redacted {fingerprint_of(STORED)}>"]


def test_client_authorization_is_redacted_when_kept(capsys, rules_file):
    lines = explain_lines(
        capsys, rules_file, f"wss://rancher.test{EXEC}", [f"Authorization: Bearer {TOKEN}", "Sec-WebSocket-Protocol: v5.channel.k8s.io"]
    )
    assert forwarded(lines, "Authorization") == [f"Bearer {REDACTED}"]


def test_refusal_says_nothing_is_forwarded(capsys, rules_file):
    lines = explain_lines(capsys, rules_file, f"wss://rancher.test{EXEC}", [f"Sec-WebSocket-Protocol: {HEADLAMP_ENTRY}"])
    assert lines[2].startswith("refused with 400: k8s_ws: rule 'header': no other protocol left")
    assert lines[3] == "nothing is forwarded"


@pytest.mark.parametrize(
    "url, headers, why",
    [
        pytest.param(
            "wss://elsewhere.test/api/v1/pods?watch=1",
            HEADLAMP,
            "no rule's hosts and paths match elsewhere.test:443 /api/v1/pods",
            id="no rule for the host",
        ),
        pytest.param(f"wss://rancher.test{EXEC}", [*HEADLAMP, "Upgrade: h2c"], "not a WebSocket upgrade", id="not an upgrade"),
    ],
)
def test_no_rule_forwards_unchanged_still_redacted(capsys, rules_file, url, headers, why):
    lines = explain_lines(capsys, rules_file, url, headers)
    assert lines[1].startswith(f"no rule: {why}")
    assert forwarded(lines, "Sec-WebSocket-Protocol")[0].endswith(f"{BEARER_PREFIX}{REDACTED}")


def test_default_rules_are_the_shipped_ones(capsys):
    status, out, _ = run(capsys, "explain", f"wss://rancher.example.com{EXEC}", *(a for h in HEADLAMP for a in ("-H", h)))
    assert status == 0 and "rule 'rancher'" in out and f"Bearer {REDACTED}" in out


@pytest.mark.parametrize(
    "argv, error",
    [
        pytest.param(["explain", "ftp://x/"], "must start with", id="bad URL"),
        pytest.param(["explain", "wss://x/api/v1/pods", "-H", f"Bearer {TOKEN}"], "header 1 is not", id="bad header line"),
    ],
)
def test_explain_bad_usage_exits_2(capsys, argv, error):
    status, _, err = run(capsys, *argv)
    assert status == 2 and error in err


def test_explain_broken_rules_exits_2_with_position(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules:\n  - name: x\n    hosts: [a]\n    auth: token\n")
    status, _, err = run(capsys, "explain", "wss://a/api/v1/pods", "--rules", str(broken))
    assert status == 2 and f"{broken}:4:11:" in err


# --- the mitmproxy commands -------------------------------------------------------------------


@pytest.fixture
def tctx(rules_file):
    addon = K8sWs()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, k8s_ws_rules=str(rules_file))
        yield tctx


def test_kubews_explain_is_the_cli_explain(tctx, capsys, rules_file):
    url = f"wss://rancher.test{EXEC}"
    command = " ".join(["kubews.explain", url, *(shlex.quote(h) for h in HEADLAMP)])
    shown = tctx.master.commands.execute(command)
    _, out, _ = run(capsys, "explain", url, *(a for h in HEADLAMP for a in ("-H", h)), "--rules", str(rules_file))
    assert shown == out.split("\n", 1)[1].rstrip("\n")  # the CLI adds a "rules: FILE" line
    assert TOKEN not in shown and f"Bearer {REDACTED}" in shown


def test_kubews_explain_bad_header_is_a_command_error(tctx):
    with pytest.raises(exceptions.CommandError, match="header 1 is not"):
        tctx.master.commands.execute(f"kubews.explain wss://rancher.test/api/v1/pods {shlex.quote('Bearer ' + TOKEN)}")


def test_kubews_rules_lists_every_rule_without_tokens(tctx, rules_file):
    shown = tctx.master.commands.execute("kubews.rules")
    assert shown.splitlines()[0] == f"4 rules from {rules_file}"
    assert [line.split("'")[1] for line in shown.splitlines()[1:]] == ["header", "subprotocol", "both", "stored"]
    assert STORED not in shown and fingerprint_of(STORED) in shown


def test_kubews_reload_rereads_and_keeps_the_last_good(tctx, rules_file):
    rules_file.write_text(RULES + "  - name: more\n    hosts: ['*']\n")
    assert tctx.master.commands.execute("kubews.reload") == f"reloaded 5 rules from {rules_file}"
    rules_file.write_text("rules: [\n")
    assert "last good rules stay in force" in tctx.master.commands.execute("kubews.reload")
    assert tctx.master.commands.execute("kubews.rules").startswith("5 rules")
