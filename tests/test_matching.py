"""kubews._paths and kubews._rules: which rule applies to a request (interface §3, §4): Kubernetes
API paths, host globs, the rule set's order and its host index, and WebSocket upgrades only."""

import pytest

import kubews as core
from helpers import UPGRADES, handshake
from kubews import Destination, Handshake, Rule, RuleSet, TokenSource, _rules


@pytest.mark.parametrize(
    "path, api",
    [
        pytest.param("/api/v1/namespaces/d/pods/p/exec", True, id="core API"),
        pytest.param("/apis/apps/v1/deployments", True, id="API group"),
        pytest.param("/k8s/clusters/c-m-1/api/v1/pods", True, id="Rancher cluster prefix"),
        pytest.param("/k8s/proxy/local/apis/x/v1/y", True, id="Rancher proxy prefix"),
        pytest.param("/clusters/mine/api/v1/pods", True, id="Headlamp prefix"),
        pytest.param("/k8s/clusters/c-m-1/v1/subscribe", False, id="Rancher's own API under a cluster"),
        pytest.param("/v3/subscribe", False, id="Rancher's own API"),
        pytest.param("/api", False, id="/api without a slash"),
        pytest.param("/apix/v1", False, id="/apix"),
        pytest.param("/prefix/api/v1", False, id="unknown prefix"),
        pytest.param("/k8s/clusters//api/v1", False, id="empty cluster id"),
    ],
)
def test_k8s_api_paths(path, api):
    assert core.is_k8s_api_path(path) is api


@pytest.mark.parametrize(
    "target, parts",
    [
        pytest.param("/api/v1/pods?watch=1", ("/api/v1/pods", "watch=1"), id="path and query"),
        pytest.param("/api/v1/pods", ("/api/v1/pods", ""), id="no query"),
        pytest.param("/api/v1/pods?", ("/api/v1/pods", ""), id="empty query"),
        pytest.param("/a?b=/api/?c", ("/a", "b=/api/?c"), id="? in the query"),
    ],
)
def test_split_target(target, parts):
    assert core.split_target(target) == parts


@pytest.mark.parametrize(
    "glob, name, port, matches",
    [
        pytest.param("rancher.example.com", "rancher.example.com", 443, True, id="literal"),
        pytest.param("rancher.example.com", "RANCHER.Example.com", 443, True, id="name in upper case"),
        pytest.param("RANCHER.example.com", "rancher.example.com", 443, True, id="glob in upper case"),
        pytest.param("*.rancher.internal", "a.rancher.internal", 443, True, id="* subdomain"),
        pytest.param("*.rancher.internal", "rancher.internal", 443, False, id="* needs the dot"),
        pytest.param("*.rancher.internal:8443", "a.rancher.internal", 8443, True, id="with its port"),
        pytest.param("*.rancher.internal:8443", "a.rancher.internal", 443, False, id="with another port"),
        pytest.param("*", "anything", 1, True, id="* matches every host"),
        pytest.param("host:443", "host", 443, True, id="literal with port"),
        pytest.param("host:*", "host", 8443, True, id="any port"),
        pytest.param("host:8*", "host", 443, False, id="port glob not matching"),
        pytest.param("host:84[0-9]3", "host", 8443, True, id="port class"),
        pytest.param("host", "host", 8443, True, id="no port: any port"),
        pytest.param("host", "other", 443, False, id="other host"),
        pytest.param("my-rancher.example.com", "my-rancher.example.com", 443, True, id="dash in a name"),
        pytest.param("my-rancher.example.com", "myrancher.example.com", 443, False, id="dash not optional"),
        pytest.param("*.rancher-internal:8443", "a.rancher-internal", 8443, True, id="dash and port"),
        pytest.param("*.rancher-internal:8443", "a.rancher-internal", 443, False, id="dash and another port"),
        pytest.param("rancher[0-9].test", "rancher5.test", 443, True, id="class matches"),
        pytest.param("rancher[0-9].test", "rancherx.test", 443, False, id="class does not match"),
        pytest.param("rancher[0-9].test", "rancher10.test", 443, False, id="class is one character"),
        pytest.param("rancher[!0-9].test", "rancherx.test", 443, True, id="negated class"),
        pytest.param("?.test", "a.test", 443, True, id="? one character"),
        pytest.param("?.test", "ab.test", 443, False, id="? not two"),
    ],
)
def test_host_globs(glob, name, port, matches):
    assert core.host_glob_matches(glob, name, port) is matches


def rule(name="r", **fields):
    return Rule(**{"name": name, "hosts": ("*",), **fields})


def matched(request, *rules):
    """The name of the rule that applies to the request, or None."""
    index = core.header_index(request.headers)
    found = RuleSet(rules or (rule(),)).match(request, index.get("upgrade", []))
    return found and found.name


@pytest.mark.parametrize("lines, applies", UPGRADES)
def test_only_websocket_upgrades_match(lines, applies):
    request = handshake(("Connection", "Upgrade"), *(("Upgrade", line) for line in lines), upgrade=False)
    assert (matched(request) == "r") is applies
    assert (core.decide(RuleSet((rule(),)), request) is not None) is applies


def test_first_matching_rule_applies():
    rules = (
        rule("other-host", hosts=("other",)),
        rule("other-path", paths=("/nothing/*",)),
        rule("this", hosts=("rancher.*",)),
        rule("later"),
    )
    assert matched(handshake(), *rules) == "this"


def test_default_paths_are_kubernetes_api_paths():
    assert matched(handshake(path="/v3/subscribe")) is None
    assert matched(handshake(path="/v3/subscribe"), rule(paths=("/v3/*",))) == "r"


def test_path_globs_match_the_whole_path():
    rules = (rule("prefix", paths=("/k8s/clusters/*",)),)
    assert matched(handshake(path="/k8s/clusters/c-m-1/api/v1/pods"), *rules) == "prefix"
    assert matched(handshake(path="/x/k8s/clusters/c-m-1/api/v1/pods"), *rules) is None
    assert matched(handshake(path="/api/v1/pods"), rule("several", paths=("/v3/*", "/api/*"))) == "several"


@pytest.mark.parametrize(
    "hosts, host, port, expected",
    [
        pytest.param(("rancher.test",), "rancher.test", 443, "r", id="literal"),
        pytest.param(("RANCHER.test",), "rancher.Test", 443, "r", id="literal in another case"),
        pytest.param(("rancher.test:8443",), "rancher.test", 8443, "r", id="literal with its port"),
        pytest.param(("rancher.test:8443",), "rancher.test", 443, None, id="literal with another port"),
        pytest.param(("rancher.test:8443",), "RANCHER.test", 8443, "r", id="literal with its port, in another case"),
        pytest.param(("other.test", "rancher.test"), "rancher.test", 443, "r", id="second of two literals"),
        pytest.param(("rancher[0-9].test",), "rancher5.test", 443, "r", id="class"),
        pytest.param(("rancher?.test",), "rancher5.test", 443, "r", id="?"),
        pytest.param(("other.test", "*.test"), "rancher.test", 443, "r", id="a literal and a wildcard"),
        pytest.param(("other.test",), "rancher.test", 443, None, id="another literal"),
    ],
)
def test_rule_set_finds_rules_by_host(hosts, host, port, expected):
    assert matched(handshake(host=host, port=port), rule("elsewhere", hosts=("elsewhere.test",)), rule(hosts=hosts)) == expected


def test_an_empty_path_list_matches_nothing():
    # The rules file admits no empty list; a Rule built in code with one must not match every path.
    assert matched(handshake(path="/api/v1/pods"), rule(paths=())) is None


def test_literal_hosts_are_looked_up_not_tried_one_by_one(monkeypatch):
    """Deciding takes the same time whatever the number of rules with literal hosts."""
    rules = tuple(rule(f"r{i}", hosts=(f"host{i}.test", f"HOST{i}.test:6443")) for i in range(2000))
    ruleset = RuleSet((*rules, rule("wildcard", hosts=("*.example",))))
    tried = []
    real = _rules.host_glob_matches
    monkeypatch.setattr(_rules, "host_glob_matches", lambda glob, name, port: tried.append(glob) or real(glob, name, port))
    found = ruleset.match(handshake(host="host1999.test", port=6443), ["websocket"])
    assert found is rules[1999]
    assert len(tried) <= 4  # the matching rule's globs and the wildcard rule's, not 4000


def test_rule_order_holds_across_literal_and_wildcard_rules():
    rules = (rule("wildcard", hosts=("*.test",)), rule("literal", hosts=("rancher.test",)))
    assert matched(handshake(host="rancher.test"), *rules) == "wildcard"
    assert matched(handshake(host="rancher.test"), *reversed(rules)) == "literal"


def test_any_destination_name_can_match():
    request = Handshake(
        destinations=(Destination("10.0.0.9", True), Destination("rancher.test", True)),
        port=443,
        path="/api/v1/pods",
        headers=(("Upgrade", "websocket"),),
        scheme="https",
        host_header="rancher.test",
    )
    assert matched(request, rule(hosts=("rancher.test",))) == "r"


def test_stored_token_needs_a_verified_destination():
    with_token = rule("stored", token=TokenSource("env", "T"))
    fallback = rule("fallback")
    assert matched(handshake(verified=False), with_token, fallback) == "fallback"
    assert matched(handshake(verified=False), with_token) is None
    assert matched(handshake(), with_token, fallback) == "stored"
    assert matched(handshake(verified=False), rule("no token")) == "no token"  # the client's word is enough without one


def _withheld(request, *rules):
    found = core.withheld_token(RuleSet(rules), request)
    return found and found.name


@pytest.mark.parametrize(
    "request_, rules, withheld",
    [
        pytest.param(handshake(verified=False), ("stored",), "stored", id="only the client names the host"),
        pytest.param(handshake(verified=False), ("stored", "fallback"), "stored", id="a later rule applies instead"),
        pytest.param(handshake(), ("stored",), None, id="a verified destination: injected, nothing withheld"),
        pytest.param(handshake(verified=False), ("fallback", "stored"), None, id="an earlier rule applies"),
        pytest.param(handshake(("Authorization", "Bearer x"), verified=False), ("stored",), None, id="the client's own Authorization"),
        pytest.param(
            handshake(("Sec-WebSocket-Protocol", "a, base64url.bearer.authorization.k8s.io.eA"), verified=False),
            ("stored",), None, id="the client's own bearer entry",
        ),
        pytest.param(handshake(verified=False, upgrade=False), ("stored",), None, id="not an upgrade"),
        pytest.param(handshake(verified=False, path="/healthz"), ("stored",), None, id="not a path of the rule"),
    ],
)
def test_withheld_token(request_, rules, withheld):
    by_name = {"stored": rule("stored", token=TokenSource("env", "T")), "fallback": rule("fallback")}
    assert _withheld(request_, *(by_name[name] for name in rules)) == withheld
