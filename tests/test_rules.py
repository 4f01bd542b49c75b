"""Tables for the rules file: what loads, and where each error points."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubews import Auth, ClientAuthorization, Destination, Handshake, OriginAction, Rule, RuleSet, TokenError, TokenSource
from kubews.rulesfile import RulesError, default_rules_path, load_rules, parse_rules

ROOT = Path(__file__).resolve().parent.parent


def test_full_rule():
    rules = parse_rules(
        """\
version: 1
rules:
  - name: rancher
    hosts: ["rancher.example.com", "*.rancher.internal:8443"]
    paths: ["/k8s/clusters/*"]
    auth: both
    authorization: replace
    user_agent: remove
    origin: match-host
    token: {env: RANCHER_TOKEN}
  - name: minimal
    hosts: "*"
"""
    )
    assert rules == (
        Rule(
            name="rancher",
            hosts=("rancher.example.com", "*.rancher.internal:8443"),
            paths=("/k8s/clusters/*",),
            auth=Auth.BOTH,
            authorization=ClientAuthorization.REPLACE,
            user_agent="remove",
            origin=OriginAction.MATCH_HOST,
            token=TokenSource("env", "RANCHER_TOKEN"),
        ),
        Rule(name="minimal", hosts=("*",)),
    )


RULE = "rules:\n  - name: a\n    hosts: [x]\n"  # a valid rule to add one line to; line 4 is the next


@pytest.mark.parametrize(
    "text, where, names",
    [
        pytest.param(RULE + "    colour: red\n", "4:5", ["colour"], id="unknown key"),
        pytest.param(RULE + "  - name: a\n    hosts: [y]\n", "4:5", ["name", "'a'"], id="duplicate name"),
        pytest.param(RULE + "    hosts: [y]\n", "4:5", ["hosts"], id="duplicate key"),
        pytest.param(RULE + "    auth: cookie\n", "4:11", ["auth", "cookie"], id="unknown auth"),
        pytest.param(RULE + "    authorization: merge\n", "4:20", ["authorization", "merge"], id="unknown authorization"),
        pytest.param(RULE + "    origin: yes\n", "4:13", ["origin"], id="origin a boolean"),
        pytest.param(RULE + "    origin: host\n", "4:13", ["origin", "host"], id="unknown origin"),
        pytest.param("rules:\n  - name: a\n    hosts: 7\n", "3:12", ["hosts"], id="hosts a number"),
        pytest.param("rules:\n  - name: a\n    hosts: []\n", "3:12", ["hosts"], id="hosts empty"),
        pytest.param("rules:\n  - name: a\n    hosts: ['ho st']\n", "3:13", ["hosts", "'ho st'"], id="host glob with a space"),
        pytest.param("rules:\n  - name: a\n    hosts: ['h[a']\n", "3:13", ["hosts", "'h[a'"], id="host glob with an unclosed ["),
        pytest.param(
            "rules:\n  - name: a\n    hosts: ['rancher[.test']\n", "3:13", ["hosts", "'rancher[.test'"], id="host glob rancher[.test"
        ),
        pytest.param(
            "rules:\n  - name: a\n    hosts: [x, 'ran[ch[e]r.test']\n",
            "3:16",
            ["hosts", "'ran[ch[e]r.test'"],
            id="host glob with a nested [",
        ),
        pytest.param("rules:\n  - name: a\n    hosts: ['h:port']\n", "3:13", ["hosts", "'h:port'"], id="host glob with a named port"),
        pytest.param("rules:\n  - name: a\n    hosts: ['h/x']\n", "3:13", ["hosts", "'h/x'"], id="host glob with a slash"),
        pytest.param(RULE + "    paths: [api/*]\n", "4:13", ["paths", "'api/*'"], id="path glob without /"),
        pytest.param(RULE + "    paths: ['/a[b']\n", "4:13", ["paths", "'/a[b'"], id="path glob with an unclosed ["),
        pytest.param(RULE + "    paths: ['/a[b[c]]']\n", "4:13", ["paths", "'/a[b[c]]'"], id="path glob with a nested ["),
        pytest.param(RULE + "    paths: ['/a b']\n", "4:13", ["paths", "'/a b'"], id="path glob with a space"),
        pytest.param(RULE + "    user_agent: ''\n", "4:17", ["user_agent"], id="user_agent empty"),
        pytest.param(RULE + '    user_agent: "   "\n', "4:17", ["user_agent"], id="user_agent blank"),
        pytest.param(RULE + '    user_agent: "k8s-ws\\r\\nX-Injected: 1"\n', "4:17", ["user_agent"], id="user_agent with CRLF"),
        pytest.param(RULE + '    user_agent: "k8s-ws\\rX-Injected: 1"\n', "4:17", ["user_agent"], id="user_agent with CR"),
        pytest.param(RULE + '    user_agent: "k8s-ws\\nX-Injected: 1"\n', "4:17", ["user_agent"], id="user_agent with LF"),
        pytest.param(RULE + '    user_agent: "k8s-ws\\0"\n', "4:17", ["user_agent"], id="user_agent with NUL"),
        pytest.param(RULE + "    user_agent: |\n      two\n      lines\n", "4:17", ["user_agent"], id="user_agent a block"),
        pytest.param(RULE + "    token: abc\n", "4:12", ["token"], id="token a string"),
        pytest.param(RULE + "    token: {vault: x}\n", "4:13", ["token", "vault"], id="token from an unknown source"),
        pytest.param(RULE + "    token: {env: A, file: b}\n", "4:12", ["token"], id="token from two sources"),
        pytest.param(RULE + "    token: {}\n", "4:12", ["token"], id="token from no source"),
        pytest.param(RULE + '    token: {env: " "}\n', "4:18", ["token", "env"], id="token env blank"),
        pytest.param(RULE + '    token: {file: ""}\n', "4:19", ["token", "file"], id="token file empty"),
        pytest.param(RULE + "    token: {file: [a]}\n", "4:19", ["token", "file"], id="token file a list"),
        pytest.param("rules:\n  - hosts: [x]\n", "2:5", ["name"], id="no name"),
        pytest.param("rules:\n  - name: a\n", "2:5", ["hosts"], id="no hosts"),
        pytest.param("rules:\n  - name: 3\n    hosts: [x]\n", "2:11", ["name"], id="name a number"),
        pytest.param('rules:\n  - name: "  "\n    hosts: [x]\n', "2:11", ["name"], id="name blank"),
        pytest.param('rules:\n  - name: ""\n    hosts: [x]\n', "2:11", ["name"], id="name empty"),
        pytest.param("version: 2\nrules: []\n", "1:10", ["version", "2"], id="unknown version"),
        pytest.param("version: '1'\nrules: []\n", "1:10", ["version"], id="version a string"),
        pytest.param("rule:\n  - name: a\n", "1:1", ["rule"], id="unknown top-level key"),
        pytest.param("version: 1\n", "1:1", ["rules"], id="no rules"),
        pytest.param("rules: {name: a}\n", "1:8", ["rules"], id="rules a mapping"),
        pytest.param("- a\n", "1:1", ["rules"], id="a list at the top"),
        pytest.param("", "1:1", ["rules"], id="empty file"),
        pytest.param("rules:\n  - name: a\n    hosts: [x\n", "4:1", ["YAML"], id="YAML syntax"),
    ],
)
def test_errors_name_file_line_column_and_key(text, where, names):
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.yaml")
    found = [e for e in info.value.errors if e.startswith(f"rules.yaml:{where}: ")]
    assert found and all(name in found[0] for name in names), info.value.errors


@pytest.mark.parametrize(
    "user_agent",
    [
        pytest.param("k8s-ws/1 (proxy)", id="with spaces"),
        pytest.param("a\tb", id="with a tab"),
        pytest.param("tökén/1", id="non-ASCII"),
    ],
)
def test_one_line_user_agents_load(user_agent):
    (rule,) = parse_rules(f"rules:\n  - {{name: a, hosts: ['*'], user_agent: {json.dumps(user_agent)}}}\n")
    assert rule.user_agent == user_agent


def test_names_are_trimmed():
    (rule,) = parse_rules('rules:\n  - name: " a "\n    hosts: [x]\n')
    assert rule.name == "a"


@pytest.mark.parametrize(
    "glob, host, port, other",
    [
        pytest.param("my-rancher.example.com", "my-rancher.example.com", 443, ("myrancher.example.com", 443), id="dash"),
        pytest.param("*.rancher-internal:8443", "a.rancher-internal", 8443, ("a.rancher-internal", 443), id="dash and port"),
        pytest.param("rancher[0-9].test", "rancher5.test", 443, ("rancherx.test", 443), id="class"),
        pytest.param("rancher[!0-9].test", "rancherx.test", 443, ("rancher5.test", 443), id="negated class"),
        pytest.param("rancher_1.test", "rancher_1.test", 443, ("rancher1.test", 443), id="underscore"),
        pytest.param("kube.test:64[0-9]3", "kube.test", 6443, ("kube.test", 443), id="port class"),
        pytest.param("10.0.0.9", "10.0.0.9", 443, ("10.0.0.19", 443), id="IPv4 address"),
    ],
)
def test_host_globs_load_and_match(glob, host, port, other):
    rules = parse_rules(f"rules:\n  - name: a\n    hosts: [{json.dumps(glob)}]\n")
    assert rules[0].hosts == (glob,)
    ruleset = RuleSet(rules)

    def matches(name, port):
        request = Handshake((Destination(name, True),), port, "/api/v1/pods", (("Upgrade", "websocket"),), "https", name)
        return ruleset.match(request, ["websocket"]) is not None

    assert matches(host, port) and not matches(*other)


def test_every_error_is_reported():
    with pytest.raises(RulesError) as info:
        parse_rules("rules:\n  - name: a\n    hosts: [x]\n    auth: no\n  - name: b\n    hosts: [y]\n    origin: x\n", "f")
    assert [e.split(": ")[0] for e in info.value.errors] == ["f:4:11", "f:7:13"]


def test_token_sources_are_read_at_load(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "control").write_text("to\x7fken\n")
    monkeypatch.setenv("K8S_WS_T", " from-env ")
    monkeypatch.delenv("K8S_WS_UNSET", raising=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"""\
rules:
  - {{name: env, hosts: [a], token: {{env: K8S_WS_T}}}}
  - {{name: file, hosts: [a], token: {{file: "{token_file}"}}}}
  - {{name: unset, hosts: [a], token: {{env: K8S_WS_UNSET}}}}
  - {{name: missing, hosts: [a], token: {{file: "{tmp_path / "missing"}"}}}}
  - {{name: empty, hosts: [a], token: {{file: "{tmp_path / "empty"}"}}}}
  - {{name: control, hosts: [a], token: {{file: "{tmp_path / "control"}"}}}}
  - {{name: none, hosts: [a]}}
"""
    )
    ruleset = load_rules(rules)
    assert ruleset.tokens["env"] == "from-env" and ruleset.tokens["file"] == "from-file"
    assert isinstance(ruleset.tokens["unset"], TokenError) and "K8S_WS_UNSET is not set" in str(ruleset.tokens["unset"])
    assert "No such file" in str(ruleset.tokens["missing"])
    assert "empty" in str(ruleset.tokens["empty"])
    assert "none" not in ruleset.tokens
    assert isinstance(ruleset.tokens["control"], TokenError) and "to\x7fken" not in str(ruleset.tokens["control"])
    assert ruleset.watched_files() == (str(rules), *(str(tmp_path / name) for name in ("token", "missing", "empty", "control")))


def test_missing_rules_file(tmp_path):
    with pytest.raises(RulesError, match=rf"{tmp_path}/nope.yaml:1:1: cannot read the rules file"):
        load_rules(tmp_path / "nope.yaml")


def test_default_rules_are_the_projects():
    assert default_rules_path() == ROOT / "rules.yaml"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args, status, stdout, stderr",
    [
        pytest.param([], 0, "ok: 1 rules\n", "", id="default rules"),
        pytest.param([str(ROOT / "rules.yaml")], 0, "ok: 1 rules\n", "", id="rules file given"),
    ],
)
def test_check_command(args, status, stdout, stderr, tmp_path):
    # From another directory: the default is found from the code's location, not the cwd.
    run = subprocess.run(
        [sys.executable, "-m", "kubews.cli", "check", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT / "addon")},
    )
    assert (run.returncode, run.stdout, run.stderr) == (status, stdout, stderr)


@pytest.mark.e2e
def test_check_command_reports_each_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: a\n    hosts: [x]\n    auth: no\n  - name: b\n    hosts: ['a b']\n")
    run = subprocess.run(["k8s-ws", "check", str(bad)], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"{bad}:4:11: rule 'a': auth must be a string",
        f"{bad}:6:13: rule 'b': hosts: bad glob 'a b': a host glob is a host name with *, ? or [...], and an optional :port",
    ]
