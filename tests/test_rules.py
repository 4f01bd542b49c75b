"""Tables for the rules file: what loads, and where each error points."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubews import Auth, ClientAuthorization, OriginAction, Rule, TokenError, TokenSource
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


def test_custom_user_agent():
    (rule,) = parse_rules('rules:\n  - {name: a, hosts: ["*"], user_agent: "k8s-ws/1 (proxy)"}\n')
    assert rule.user_agent == "k8s-ws/1 (proxy)"


@pytest.mark.parametrize(
    "text, error",
    [
        ("rules:\n  - name: a\n    hosts: [x]\n    colour: red\n", "4:5: rule 1: unknown key 'colour'"),
        ("rules:\n  - name: a\n    hosts: [x]\n  - name: a\n    hosts: [y]\n", "4:5: rule 'a': duplicate name"),
        ("rules:\n  - name: a\n    hosts: [x]\n    hosts: [y]\n", "4:5: rule 1: duplicate key 'hosts'"),
        ("rules:\n  - name: a\n    hosts: [x]\n    auth: cookie\n", "4:11: rule 'a': auth: unknown value 'cookie'"),
        ("rules:\n  - name: a\n    hosts: [x]\n    authorization: merge\n", "4:20: rule 'a': authorization: unknown value"),
        ("rules:\n  - name: a\n    hosts: [x]\n    origin: yes\n", "4:13: rule 'a': origin must be a string"),
        ("rules:\n  - name: a\n    hosts: [x]\n    origin: host\n", "4:13: rule 'a': origin: unknown value 'host'"),
        ("rules:\n  - name: a\n    hosts: 7\n", "3:12: rule 'a': hosts must be a non-empty list of strings"),
        ("rules:\n  - name: a\n    hosts: []\n", "3:12: rule 'a': hosts must be a non-empty list"),
        ("rules:\n  - name: a\n    hosts: ['ho st']\n", "3:13: rule 'a': hosts: bad glob 'ho st'"),
        ("rules:\n  - name: a\n    hosts: ['h[a']\n", "3:13: rule 'a': hosts: bad glob 'h[a': unclosed '['"),
        ("rules:\n  - name: a\n    hosts: ['h:port']\n", "3:13: rule 'a': hosts: bad glob"),
        ("rules:\n  - name: a\n    hosts: [x]\n    paths: [api/*]\n", "4:13: rule 'a': paths: bad glob 'api/*'"),
        ("rules:\n  - name: a\n    hosts: [x]\n    paths: ['/a[b']\n", "4:13: rule 'a': paths: bad glob '/a[b'"),
        ("rules:\n  - name: a\n    hosts: [x]\n    user_agent: ''\n", "4:17: rule 'a': user_agent must be keep"),
        ("rules:\n  - name: a\n    hosts: [x]\n    token: abc\n", "4:12: rule 'a': token must be a mapping"),
        ("rules:\n  - name: a\n    hosts: [x]\n    token: {vault: x}\n", "4:13: rule 'a': token: unknown key 'vault'"),
        ("rules:\n  - name: a\n    hosts: [x]\n    token: {env: A, file: b}\n", "4:12: rule 'a': token needs exactly one"),
        ("rules:\n  - hosts: [x]\n", "2:5: rule 1: 'name' is required"),
        ("rules:\n  - name: a\n", "2:5: rule 'a': 'hosts' is required"),
        ("rules:\n  - name: 3\n    hosts: [x]\n", "2:11: rule 1: name must be a string"),
        ("version: 2\nrules: []\n", "1:10: version: unknown value '2'"),
        ("rule:\n  - name: a\n", "1:1: the rules file: unknown key 'rule'"),
        ("rules: {name: a}\n", "1:8: rules must be a list"),
        ("- a\n", "1:1: the rules file must be a mapping"),
        ("", "1:1: the rules file is empty"),
        ("rules:\n  - name: a\n    hosts: [x\n", "YAML"),
    ],
)
def test_errors_name_file_line_and_column(text, error):
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.yaml")
    assert any(e.startswith("rules.yaml:") and error in e for e in info.value.errors), info.value.errors


def test_every_error_is_reported():
    with pytest.raises(RulesError) as info:
        parse_rules("rules:\n  - name: a\n    hosts: [x]\n    auth: no\n  - name: b\n    hosts: [y]\n    origin: x\n", "f")
    assert [e.split(": ")[0] for e in info.value.errors] == ["f:4:11", "f:7:13"]


def test_token_sources_are_read_at_load(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("K8S_WS_T", " from-env ")
    monkeypatch.delenv("K8S_WS_UNSET", raising=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"""\
rules:
  - {{name: env, hosts: [a], token: {{env: K8S_WS_T}}}}
  - {{name: file, hosts: [a], token: {{file: "{token_file}"}}}}
  - {{name: unset, hosts: [a], token: {{env: K8S_WS_UNSET}}}}
  - {{name: missing, hosts: [a], token: {{file: "{tmp_path / 'missing'}"}}}}
  - {{name: empty, hosts: [a], token: {{file: "{tmp_path / 'empty'}"}}}}
"""
    )
    ruleset = load_rules(rules)
    assert ruleset.tokens["env"] == "from-env" and ruleset.tokens["file"] == "from-file"
    assert isinstance(ruleset.tokens["unset"], TokenError) and "K8S_WS_UNSET is not set" in str(ruleset.tokens["unset"])
    assert "No such file" in str(ruleset.tokens["missing"])
    assert "empty" in str(ruleset.tokens["empty"])
    assert ruleset.watched_files() == (str(rules), str(token_file), str(tmp_path / "missing"), str(tmp_path / "empty"))


def test_missing_rules_file(tmp_path):
    with pytest.raises(RulesError, match=rf"{tmp_path}/nope.yaml:1:1: cannot read the rules file"):
        load_rules(tmp_path / "nope.yaml")


def test_default_rules_are_the_projects():
    assert default_rules_path() == ROOT / "rules.yaml"


@pytest.mark.parametrize(
    "args, status, stdout, stderr",
    [
        ([], 0, "ok: 1 rules\n", ""),
        ([str(ROOT / "rules.yaml")], 0, "ok: 1 rules\n", ""),
    ],
)
def test_check_command(args, status, stdout, stderr, tmp_path):
    # From another directory: the default is found from the code's location, not the cwd.
    run = subprocess.run([sys.executable, "-m", "kubews.cli", "check", *args], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT / "addon")})
    assert (run.returncode, run.stdout, run.stderr) == (status, stdout, stderr)


def test_check_command_reports_each_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: a\n    hosts: [x]\n    auth: no\n  - name: b\n    hosts: ['a b']\n")
    run = subprocess.run(["k8s-ws", "check", str(bad)], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"{bad}:4:11: rule 'a': auth must be a string",
        f"{bad}:6:13: rule 'b': hosts: bad glob 'a b': a host glob is a host name with *, ? or [...], and an optional :port",
    ]
