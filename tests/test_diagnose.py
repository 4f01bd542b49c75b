"""`k8s-ws diagnose` (interface.md §7): the variants, what each means, the rule that works, and
exit 0/1/2; against the strict fake Rancher and kube-apiserver. No token is ever printed."""

import asyncio

import pytest

import kubews as core
from fake_rancher import DEAD, HEALTHY, LOCAL, PENDING
from helpers import BEARER_PREFIX, TOKEN, base64url_entry, secret_forms
from kubews import Auth, OriginAction, cli, diagnose
from kubews.diagnose import Outcome, Variant
from kubews.explain import parse_target
from kubews.hints import Hint
from kubews.rulesfile import parse_rules

EXEC = "/api/v1/namespaces/default/pods/p/exec?command=sh&stdout=1"
LOG = "/api/v1/namespaces/default/pods/p/log?follow=true"
WATCH = "/api/v1/namespaces/default/pods?watch=1"
KEEP, REMOVE = core.USER_AGENT_KEEP, core.USER_AGENT_REMOVE
BROWSER_AS_IS = Variant(Auth.SUBPROTOCOL, KEEP, OriginAction.KEEP)


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv("K8S_WS_DIAGNOSE_TOKEN", TOKEN)
    return "K8S_WS_DIAGNOSE_TOKEN"


def run(capsys, *argv):
    status = cli.main(["diagnose", *argv])
    out, err = capsys.readouterr()
    for form in secret_forms(TOKEN):
        assert form not in out and form not in err
    return status, out, err


def entry_of(out):
    """The rules.yaml entry printed after "rules.yaml entry:", parsed as the rules loader would."""
    entry = out.split("rules.yaml entry:\n", 1)[1]
    (rule,) = parse_rules("rules:\n" + entry)
    return rule


# --- the variants (pure) ----------------------------------------------------------------------


def test_variants_cover_token_user_agent_and_origin():
    with_token = diagnose.variants(with_token=True)
    assert with_token[0] == BROWSER_AS_IS  # what a browser console sends comes first
    assert {v.labels for v in with_token} == {
        (t, u, o) for t in ("subprotocol", "header") for u in ("browser", "none") for o in ("foreign", "matching", "absent")
    }
    assert {v.labels for v in diagnose.variants(with_token=False)} == {
        ("none", u, o) for u in ("browser", "none") for o in ("foreign", "matching", "absent")
    }


@pytest.mark.parametrize("variant", diagnose.variants(with_token=True), ids=str)
def test_variant_headers_are_what_the_spec_says(variant):
    target = parse_target(f"https://rancher.test:8443/k8s/clusters/{HEALTHY}{EXEC}")
    headers = diagnose.variant_headers(variant, diagnose.console_handshake(target, TOKEN))
    protocols = core.header_elements(headers, "Sec-WebSocket-Protocol")
    token_label, user_agent, origin = variant.labels
    if token_label == "header":  # interface §4, auth: header
        assert core.header_values(headers, "Authorization") == [f"Bearer {TOKEN}"]
        assert not any(p.startswith(BEARER_PREFIX) for p in protocols)
    else:
        assert core.header_values(headers, "Authorization") == []
        assert base64url_entry(TOKEN) in protocols
    assert "v4.channel.k8s.io" in protocols  # Headlamp's exec list (facts §5)
    assert ("Mozilla" in " ".join(core.header_values(headers, "User-Agent"))) is (user_agent == "browser")
    expected_origins = {"foreign": [diagnose.FOREIGN_ORIGIN], "matching": ["https://rancher.test:8443"], "absent": []}
    assert core.header_values(headers, "Origin") == expected_origins[origin]
    assert core.header_values(headers, "Host") == ["rancher.test:8443"]


def outcomes(working):
    """Outcomes of every variant, those in `working` (as labels) with a 101."""
    return [
        Outcome(v, 101, "x", None) if v.labels in working else Outcome(v, 401, None, Hint("no")) for v in diagnose.variants(with_token=True)
    ]


@pytest.mark.parametrize(
    "working, expected",
    [
        # Rancher (facts §4): Authorization only; a browser User-Agent needs an Origin equal to Host or none
        pytest.param(
            {
                ("header", u, o)
                for u, o in [("browser", "matching"), ("browser", "absent"), ("none", "foreign"), ("none", "matching"), ("none", "absent")]
            },
            Variant(Auth.HEADER, KEEP, OriginAction.MATCH_HOST),
            id="Rancher: header and a matching Origin",
        ),
        # a plain kube-apiserver watch: every variant but those without Origin (facts §2)
        pytest.param(
            {(t, u, o) for t in ("subprotocol", "header") for u in ("browser", "none") for o in ("foreign", "matching")},
            BROWSER_AS_IS,
            id="kube-apiserver watch: the browser's own",
        ),
        pytest.param({("header", "none", "absent")}, Variant(Auth.HEADER, REMOVE, OriginAction.REMOVE), id="only with every change"),
        pytest.param(
            {("subprotocol", "none", "foreign"), ("subprotocol", "browser", "absent")},
            Variant(Auth.SUBPROTOCOL, KEEP, OriginAction.REMOVE),
            id="a tie: Origin changed before User-Agent removed",
        ),
        pytest.param(set(), None, id="none worked"),
    ],
)
def test_recommended_is_the_fewest_changes(working, expected):
    assert diagnose.recommended(outcomes(working)) == expected


def test_a_101_with_a_hint_did_not_work():
    bad = Outcome(BROWSER_AS_IS, 101, "other", Hint("the 101 chose protocol 'other', which the client did not offer"))
    assert not bad.worked and diagnose.recommended([bad]) is None


@pytest.mark.parametrize("variant", diagnose.variants(with_token=True) + diagnose.variants(with_token=False), ids=str)
def test_rule_entry_does_what_the_variant_did(variant):
    """The printed entry, loaded and applied to a browser's handshake, sends what was probed."""
    target = parse_target(f"https://rancher.test/k8s/clusters/{HEALTHY}{LOG}")
    console = diagnose.console_handshake(target, TOKEN if variant.auth else None)
    rule = parse_rules("rules:\n" + diagnose.rule_entry(variant, target))[0]
    assert core.decide(core.RuleSet((rule,)), console).headers == diagnose.variant_headers(variant, console)


def test_root_causes_leave_out_what_a_rule_fixes():
    origin = Hint("origin not allowed", "set origin: match-host", "origin: match-host")
    down = Hint("tunnel down", "check the agent")
    found = diagnose.root_causes([Outcome(BROWSER_AS_IS, 403, None, origin), Outcome(BROWSER_AS_IS, 502, None, down)] * 2)
    assert found == [down]
    assert diagnose.root_causes([Outcome(BROWSER_AS_IS, 403, None, origin)]) == [origin]


@pytest.mark.parametrize(
    "head, data, body",
    [
        pytest.param("Content-Length: 5", b"hello and more", b"hello", id="Content-Length"),
        pytest.param("Transfer-Encoding: chunked", b"3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n", b"hello", id="chunked"),
        pytest.param("Content-Type: text/plain", b"until close", b"until close", id="until the server closes"),
        pytest.param("Content-Length: 50", b"short", b"short", id="closed before Content-Length"),
    ],
)
def test_read_body(head, data, body):
    async def read():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        name, value = head.split(": ")
        return await diagnose._read_body(reader, ((name, value),))

    assert asyncio.run(read()) == body


# --- against the fake servers -----------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    "cluster, endpoint",
    [pytest.param(HEALTHY, EXEC, id="exec"), pytest.param(LOCAL, LOG, id="log on local"), pytest.param(HEALTHY, WATCH, id="watch")],
)
def test_rancher_cluster_needs_the_header_and_a_matching_origin(capsys, rancher, pki, token_env, cluster, endpoint):
    rancher.clear()
    status, out, err = run(capsys, f"{rancher.url}/k8s/clusters/{cluster}{endpoint}", "--token-env", token_env, "--cacert", pki.ca_cert)
    assert status == 0
    assert len([line for line in err.splitlines() if line.startswith("[")]) == 12  # a progress line per probe
    rule = entry_of(out)
    assert (rule.auth, rule.user_agent, rule.origin) == (Auth.HEADER, KEEP, OriginAction.MATCH_HOST)
    assert rule.hosts == (rancher.host,)
    assert "works: token in header, User-Agent browser, Origin matching" in out
    assert "never the bearer entry" in out and '"origin not allowed"' in out  # why the others failed
    # what reached the server: the token in Authorization or in a bearer entry, never both
    places = [
        (r.header("Authorization") == f"Bearer {TOKEN}", base64url_entry(TOKEN) in (r.header("Sec-WebSocket-Protocol") or ""))
        for r in rancher.records
    ]
    assert sorted(places) == [(False, True)] * 6 + [(True, False)] * 6


@pytest.mark.e2e
def test_plain_apiserver_takes_the_browser_handshake_as_is(capsys, apiserver, pki, token_env):
    status, out, _ = run(capsys, f"wss://{apiserver.host}{EXEC}", "--token-env", token_env, "--cacert", pki.ca_cert)
    assert status == 0
    rule = entry_of(out)
    assert (rule.auth, rule.user_agent, rule.origin) == (Auth.SUBPROTOCOL, KEEP, OriginAction.KEEP)


@pytest.mark.e2e
def test_plain_apiserver_watch_table_says_an_origin_is_needed(capsys, apiserver, pki, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    status, out, _ = run(capsys, f"{apiserver.url}{WATCH}", "--token-file", str(token_file), "--cacert", pki.ca_cert)
    assert status == 0
    absent_rows = [line for line in out.splitlines() if "  absent  " in line]
    assert len(absent_rows) == 4 and all("403" in row and "no Origin" in row for row in absent_rows)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "cluster, meaning",
    [
        pytest.param(DEAD, "cannot reach cluster 'c-m-dead'", id="tunnel down"),
        pytest.param(PENDING, "'c-m-pending' is not available", id="not provisioned"),
        pytest.param("c-m-unknown", "no cluster 'c-m-unknown'", id="unknown cluster"),
    ],
)
def test_broken_cluster_fails_with_its_cause(capsys, rancher, pki, token_env, cluster, meaning):
    status, out, _ = run(capsys, f"{rancher.url}/k8s/clusters/{cluster}{LOG}", "--token-env", token_env, "--cacert", pki.ca_cert)
    assert status == 1
    summary = out.split("no variant worked:\n", 1)[1]
    assert meaning in summary and "origin" not in summary.lower()  # what a rule fixes is not the cause


@pytest.mark.e2e
def test_without_token_rancher_says_none_was_sent(capsys, rancher, pki):
    status, out, err = run(capsys, f"{rancher.url}/k8s/clusters/{HEALTHY}{LOG}", "--cacert", pki.ca_cert)
    assert status == 1 and "no token" in out and "got no token" in out
    assert err.count("\n") == 6


@pytest.mark.e2e
def test_untrusted_certificate_stops_at_the_first_probe(capsys, rancher, token_env):
    status, out, err = run(capsys, f"{rancher.url}/k8s/clusters/{HEALTHY}{LOG}", "--token-env", token_env)
    assert status == 1 and err.count("\n") == 1
    assert "not trusted" in out and "--cacert" in out


@pytest.mark.e2e
def test_insecure_skips_verification(capsys, rancher, token_env):
    status, _, _ = run(capsys, f"{rancher.url}/k8s/clusters/{HEALTHY}{LOG}", "--token-env", token_env, "--insecure")
    assert status == 0


@pytest.mark.parametrize(
    "argv, error",
    [
        pytest.param(
            ["https://x/api/v1/pods?watch=1", "--token-env", "K8S_WS_NOT_SET"], "K8S_WS_NOT_SET is not set", id="token variable not set"
        ),
        pytest.param(
            ["https://x/api/v1/pods?watch=1", "--token-file", "/nonexistent/token"],
            "cannot read /nonexistent/token",
            id="token file missing",
        ),
        pytest.param(["https://x/k8s/clusters/c-m-1"], "not a Kubernetes API path", id="not an API path"),
        pytest.param(["ftp://x/api/v1/pods"], "must start with", id="bad URL"),
        pytest.param(["https://x/api/v1/pods?watch=1", "--cacert", "/nonexistent/ca.pem"], "No such file", id="CA file missing"),
    ],
)
def test_bad_usage_exits_2(capsys, argv, error):
    status, _, err = run(capsys, *argv)
    assert status == 2 and error in err


def test_cacert_and_insecure_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["diagnose", "https://x/api/v1/pods", "--cacert", "f", "--insecure"])
    assert exit_info.value.code == 2
