"""Tables for the sans-IO core: token decoding, protocol lists, matching, the rewrite decision."""

import base64

import pytest

import kubews as core
from kubews import (
    BEARER_PREFIX,
    Auth,
    ClientAuthorization,
    Destination,
    Forward,
    Handshake,
    OriginAction,
    Refuse,
    Rule,
    TokenError,
    TokenSource,
)

TOKEN = "token-abcde:kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk"  # handshakes.yaml
# Chosen so that its encodings differ by alphabet: base64url has '-' and '_', standard has '+' and '/'.
ODD = ">>>>>?"


def b64url(s: str, pad: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(s.encode()).decode()
    return encoded if pad else encoded.rstrip("=")


def b64std(s: str, pad: bool = False) -> str:
    encoded = base64.b64encode(s.encode()).decode()
    return encoded if pad else encoded.rstrip("=")


def test_odd_token_exercises_both_alphabets():
    assert set("-_") <= set(b64url(ODD)) and set("+/") <= set(b64std(ODD))


@pytest.mark.parametrize(
    "encoded, token",
    [
        (b64url(TOKEN), TOKEN),  # kubectl, Gardener
        (b64std(TOKEN), TOKEN),  # Headlamp, OpenShift: btoa() without '='
        (b64url(ODD), ODD),  # base64url with '-' and '_'
        (b64std(ODD), ODD),  # standard with '+' and '/'
        (b64url("ab", pad=True), "ab"),  # padded
        (b64url("ab"), "ab"),  # unpadded
        (b64url("a", pad=True), "a"),  # two '='
        (b64url("é-ü"), "é-ü"),  # UTF-8
        ("", ""),  # empty: no token
    ],
)
def test_decode_token(encoded, token):
    assert core.decode_token(encoded) == token


@pytest.mark.parametrize(
    "encoded, reason",
    [
        ("a", "truncated"),
        ("ab=c", "padding"),
        ("YQ===", "padding"),
        ("a-b+", "mixes"),
        ("YW*i", "not base64"),
        ("YW i", "not base64"),
        (b64url("\x00"), "control"),
        (b64url("a\nb"), "control"),
        (base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="), "not UTF-8"),
    ],
)
def test_decode_token_refuses(encoded, reason):
    with pytest.raises(TokenError, match=reason) as info:
        core.decode_token(encoded)
    assert encoded not in str(info.value) or len(encoded) < 3


def test_encode_token_is_kube_apiserver_form():
    entry = core.encode_token(ODD)
    assert entry.startswith(BEARER_PREFIX) and "=" not in entry and "/" not in entry and "+" not in entry
    assert core.decode_token(entry[len(BEARER_PREFIX) :]) == ODD


def test_fingerprint():
    assert core.fingerprint("x") == "sha256:2d711642"


@pytest.mark.parametrize(
    "lines, elements",
    [
        (["a, b"], ["a", "b"]),
        (["a,b"], ["a", "b"]),
        (["  a ,\tb  ,  "], ["a", "b"]),
        (["a", "b, c"], ["a", "b", "c"]),
        (["a,,b"], ["a", "b"]),
        ([], []),
    ],
)
def test_header_tokens(lines, elements):
    headers = tuple(("Sec-WebSocket-Protocol", line) for line in lines)
    assert core.header_elements(headers, "sec-websocket-protocol") == elements


def test_set_header_keeps_position_and_spelling():
    headers = (("host", "h"), ("user-agent", "a"), ("X", "1"), ("User-Agent", "b"))
    assert core.replace_headers(headers, {"User-Agent": ["c"]}) == (("host", "h"), ("user-agent", "c"), ("X", "1"))
    assert core.replace_headers(headers, {"User-Agent": []}) == (("host", "h"), ("X", "1"))
    assert core.replace_headers(headers, {"Origin": ["o"]}) == (*headers, ("Origin", "o"))


@pytest.mark.parametrize(
    "path, api",
    [
        ("/api/v1/namespaces/d/pods/p/exec", True),
        ("/apis/apps/v1/deployments", True),
        ("/k8s/clusters/c-m-1/api/v1/pods", True),
        ("/k8s/proxy/local/apis/x/v1/y", True),
        ("/clusters/mine/api/v1/pods", True),
        ("/k8s/clusters/c-m-1/v1/subscribe", False),
        ("/v3/subscribe", False),
        ("/api", False),
        ("/apix/v1", False),
        ("/prefix/api/v1", False),
    ],
)
def test_k8s_api_paths(path, api):
    assert core.is_k8s_api_path(path) is api


@pytest.mark.parametrize(
    "glob, name, port, matches",
    [
        ("rancher.example.com", "rancher.example.com", 443, True),
        ("rancher.example.com", "RANCHER.Example.com", 443, True),
        ("RANCHER.example.com", "rancher.example.com", 443, True),
        ("*.rancher.internal", "a.rancher.internal", 443, True),
        ("*.rancher.internal", "rancher.internal", 443, False),
        ("*.rancher.internal:8443", "a.rancher.internal", 8443, True),
        ("*.rancher.internal:8443", "a.rancher.internal", 443, False),
        ("*", "anything", 1, True),
        ("host:443", "host", 443, True),
        ("host:*", "host", 8443, True),
        ("host:8*", "host", 443, False),
        ("host", "host", 8443, True),
        ("host", "other", 443, False),
    ],
)
def test_host_globs(glob, name, port, matches):
    assert core.host_glob_matches(glob, name, port) is matches


# --- decide ---------------------------------------------------------------------------------

BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/156.0"
EXEC = "/k8s/clusters/c-m-healthy/api/v1/namespaces/default/pods/p/exec"


def handshake(*headers, path=EXEC, host="rancher.test", port=443, verified=True, upgrade=True, scheme="https"):
    base = (("Host", host), ("Connection", "Upgrade"), ("Upgrade", "websocket")) if upgrade else (("Host", host),)
    return Handshake(
        destinations=(Destination(host, verified),),
        port=port,
        path=path,
        headers=base + tuple(headers),
        scheme=scheme,
        host_header=host,
    )


def protocols(*elements):
    return ("Sec-WebSocket-Protocol", ", ".join(elements))


def entry(token, encode=b64std):
    return BEARER_PREFIX + encode(token)


def rule(**fields):
    return Rule(**{"name": "r", "hosts": ("*",), **fields})


def decide(request, *rules, tokens=None):
    return core.decide(core.RuleSet(rules or (rule(),), tokens or {}), request)


def sent(verdict, name):
    assert isinstance(verdict, Forward), verdict
    return core.header_values(verdict.headers, name)


@pytest.mark.parametrize(
    "lines, left",
    [
        ([protocols("base64.binary.k8s.io", entry(TOKEN))], ["base64.binary.k8s.io"]),  # Headlamp: last
        ([protocols(entry(TOKEN), "base64.binary.k8s.io")], ["base64.binary.k8s.io"]),  # OpenShift: first
        ([protocols("a", entry(TOKEN), "b")], ["a, b"]),  # middle, order kept
        ([protocols(entry(TOKEN, b64url), "v4.channel.k8s.io")], ["v4.channel.k8s.io"]),  # Gardener
        ([("Sec-WebSocket-Protocol", "a"), protocols(entry(TOKEN))], ["a"]),  # several lines
        ([("Sec-WebSocket-Protocol", f" a ,\t{entry(TOKEN)} ,b")], ["a, b"]),  # odd spacing
        ([("sec-websocket-protocol", f"a,{entry(TOKEN, lambda t: b64std(t, pad=True))}")], ["a"]),  # padded
    ],
)
def test_header_mode_moves_token(lines, left):
    verdict = decide(handshake(*lines))
    assert sent(verdict, "Authorization") == [f"Bearer {TOKEN}"]
    assert sent(verdict, "Sec-WebSocket-Protocol") == left
    assert verdict.fingerprint == core.fingerprint(TOKEN)
    assert "token moved to Authorization" in verdict.actions


def test_header_mode_other_headers_untouched():
    request = handshake(("User-Agent", BROWSER_UA), ("Origin", "http://x"), protocols("a", entry(TOKEN)))
    verdict = decide(request)
    untouched = [h for h in request.headers if h[0] != "Sec-WebSocket-Protocol"]
    assert [h for h in verdict.headers if h[0] not in ("Sec-WebSocket-Protocol", "Authorization")] == untouched


def test_subprotocol_mode_forwards_list_unchanged():
    request = handshake(("Sec-WebSocket-Protocol", f"a,  {entry(TOKEN)}"), ("Sec-WebSocket-Protocol", "b"))
    verdict = decide(request, rule(auth=Auth.SUBPROTOCOL))
    assert verdict.headers == request.headers
    assert verdict.actions == ("token kept in subprotocol",)


def test_both_mode_sets_header_and_keeps_entry():
    line = protocols("a", entry(TOKEN))
    verdict = decide(handshake(line), rule(auth=Auth.BOTH))
    assert sent(verdict, "Authorization") == [f"Bearer {TOKEN}"]
    assert sent(verdict, "Sec-WebSocket-Protocol") == [line[1]]


@pytest.mark.parametrize(
    "auth, authorization, expected_authorization, expected_protocols",
    [
        (Auth.HEADER, ClientAuthorization.KEEP, ["Bearer client"], ["a"]),
        (Auth.HEADER, ClientAuthorization.REPLACE, [f"Bearer {TOKEN}"], ["a"]),
        (Auth.BOTH, ClientAuthorization.KEEP, ["Bearer client"], [f"a, {entry(TOKEN)}"]),
        (Auth.BOTH, ClientAuthorization.REPLACE, [f"Bearer {TOKEN}"], [f"a, {entry(TOKEN)}"]),
        (Auth.SUBPROTOCOL, ClientAuthorization.KEEP, ["Bearer client"], [f"a, {entry(TOKEN)}"]),
        # replace under subprotocol: the entry wins, so the client's header must not reach the server
        (Auth.SUBPROTOCOL, ClientAuthorization.REPLACE, [], [f"a, {entry(TOKEN)}"]),
    ],
)
def test_client_authorization(auth, authorization, expected_authorization, expected_protocols):
    request = handshake(("Authorization", "Bearer client"), protocols("a", entry(TOKEN)))
    verdict = decide(request, rule(auth=auth, authorization=authorization))
    assert sent(verdict, "Authorization") == expected_authorization
    assert sent(verdict, "Sec-WebSocket-Protocol") == expected_protocols


def test_client_authorization_without_entry_passes_unchanged():
    # kubectl, the Python and Node clients: a matching rule changes nothing.
    request = handshake(
        ("User-Agent", "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"),
        ("Authorization", "Bearer kc-token"),
        ("Sec-WebSocket-Protocol", "v5.channel.k8s.io,v4.channel.k8s.io"),
        ("Origin", "https://rancher.test"),
    )
    verdict = decide(request, rule(origin=OriginAction.MATCH_HOST, authorization=ClientAuthorization.REPLACE))
    assert verdict.headers == request.headers
    assert verdict.fingerprint is None


@pytest.mark.parametrize(
    "value, expected, action",
    [
        ("keep", [BROWSER_UA, "second"], None),
        ("remove", [], "User-Agent removed"),
        ("k8s-ws", ["k8s-ws"], "User-Agent replaced"),
    ],
)
def test_user_agent(value, expected, action):
    request = handshake(("User-Agent", BROWSER_UA), ("User-Agent", "second"), protocols("a", entry(TOKEN)))
    verdict = decide(request, rule(user_agent=value))
    assert sent(verdict, "User-Agent") == expected
    assert (action in verdict.actions) if action else not any("User-Agent" in a for a in verdict.actions)


def test_user_agent_string_is_sent_when_client_sent_none():
    assert sent(decide(handshake(protocols("a")), rule(user_agent="k8s-ws")), "User-Agent") == ["k8s-ws"]


@pytest.mark.parametrize(
    "origin, scheme, host, sent_origins, expected",
    [
        (OriginAction.KEEP, "https", "r.test", ["http://page"], ["http://page"]),
        (OriginAction.REMOVE, "https", "r.test", ["http://page"], []),
        (OriginAction.MATCH_HOST, "https", "r.test", ["http://page"], ["https://r.test"]),
        (OriginAction.MATCH_HOST, "http", "r.test:8080", ["http://page", "x"], ["http://r.test:8080"]),
        (OriginAction.MATCH_HOST, "https", "r.test", [], []),  # only an Origin the client sent
    ],
)
def test_origin(origin, scheme, host, sent_origins, expected):
    request = handshake(*(("Origin", o) for o in sent_origins), protocols("a"), host=host, scheme=scheme)
    assert sent(decide(request, rule(origin=origin)), "Origin") == expected


@pytest.mark.parametrize(
    "auth, expect_authorization, expect_protocols",
    [
        (Auth.HEADER, ["Bearer stored"], ["a"]),
        (Auth.BOTH, ["Bearer stored"], ["a"]),
        (Auth.SUBPROTOCOL, [], [f"a, {entry('stored', b64url)}"]),
    ],
)
def test_stored_token_injected(auth, expect_authorization, expect_protocols):
    source = rule(auth=auth, token=TokenSource("env", "T"))
    verdict = decide(handshake(protocols("a")), source, tokens={"r": "stored"})
    assert sent(verdict, "Authorization") == expect_authorization
    assert sent(verdict, "Sec-WebSocket-Protocol") == expect_protocols
    assert verdict.fingerprint == core.fingerprint("stored")
    assert verdict.uses_stored_token


def test_empty_entry_counts_as_no_token():
    verdict = decide(
        handshake(protocols("a", BEARER_PREFIX)), rule(token=TokenSource("env", "T")), tokens={"r": "stored"}
    )
    assert sent(verdict, "Authorization") == ["Bearer stored"]
    assert sent(verdict, "Sec-WebSocket-Protocol") == ["a"]


@pytest.mark.parametrize(
    "request_headers",
    [
        [protocols("a", entry(TOKEN))],  # the client's own token
        [("Authorization", "Bearer mine"), protocols("a")],  # the client's own header
    ],
)
def test_stored_token_not_used_when_client_has_one(request_headers):
    verdict = decide(handshake(*request_headers), rule(token=TokenSource("env", "T")), tokens={"r": "stored"})
    assert "stored" not in str(verdict.headers) and not verdict.uses_stored_token


def test_stored_token_needs_a_verified_destination():
    with_token = rule(name="stored", token=TokenSource("env", "T"))
    fallback = rule(name="fallback")
    asserted = handshake(protocols("a"), verified=False)
    assert decide(asserted, with_token, fallback, tokens={"stored": "s"}).rule.name == "fallback"
    assert decide(asserted, with_token, tokens={"stored": "s"}) is None
    assert decide(handshake(protocols("a")), with_token, fallback, tokens={"stored": "s"}).rule.name == "stored"


def test_first_matching_rule_applies():
    rules = (
        rule(name="other-host", hosts=("other",)),
        rule(name="other-path", paths=("/nothing/*",)),
        rule(name="this", hosts=("rancher.*",)),
        rule(name="later"),
    )
    assert decide(handshake(protocols("a")), *rules).rule.name == "this"


def test_default_paths_are_kubernetes_api_paths():
    assert decide(handshake(protocols("a"), path="/v3/subscribe")) is None
    assert decide(handshake(protocols("a"), path="/v3/subscribe"), rule(paths=("/v3/*",))).rule.name == "r"


def test_only_websocket_upgrades_match():
    assert decide(handshake(("Authorization", "Bearer x"), upgrade=False)) is None
    request = handshake(("Upgrade", "h2c"), upgrade=False)
    assert decide(request) is None


@pytest.mark.parametrize(
    "request_headers, rule_fields, status, reason",
    [
        ([protocols("a", entry(TOKEN), entry("other"))], {}, 400, "2 bearer entries"),
        ([protocols("a", entry(TOKEN)), protocols(entry("other"))], {}, 400, "2 bearer entries"),
        ([protocols("a", BEARER_PREFIX + "a")], {}, 400, "bearer entry 1 .* does not decode: truncated"),
        ([protocols("a", BEARER_PREFIX + "YW*i")], {"auth": Auth.SUBPROTOCOL}, 400, "does not decode"),
        ([protocols(entry(TOKEN))], {}, 400, "no other protocol left"),
        ([protocols(BEARER_PREFIX)], {}, 400, "no other protocol left"),
        ([protocols("a")], {"token": TokenSource("file", "/nope")}, 500, r"token source \(file /nope\) cannot"),
    ],
)
def test_refusals(request_headers, rule_fields, status, reason):
    tokens = {"r": TokenError("cannot read /nope: No such file or directory")}
    verdict = decide(handshake(*request_headers), rule(**rule_fields), tokens=tokens)
    assert isinstance(verdict, Refuse)
    assert verdict.status == status
    assert verdict.body.startswith("k8s_ws: rule 'r': ") and verdict.body.count("\n") == 1
    assert __import__("re").search(reason, verdict.reason)
    assert TOKEN not in verdict.body and b64std(TOKEN) not in verdict.body


def test_lone_entry_is_fine_when_entry_is_kept():
    assert isinstance(decide(handshake(protocols(entry(TOKEN))), rule(auth=Auth.SUBPROTOCOL)), Forward)


# --- redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("Authorization", f"Bearer {TOKEN}", f"Bearer <redacted {core.fingerprint(TOKEN)}>"),
        ("authorization", "Basic dXNlcjpwYXNz", f"Basic <redacted {core.fingerprint('dXNlcjpwYXNz')}>"),
        ("Authorization", "opaque", f"<redacted {core.fingerprint('opaque')}>"),
        (
            "Sec-WebSocket-Protocol",
            f"a, {entry(TOKEN)},b",
            f"a, {BEARER_PREFIX}<redacted {core.fingerprint(TOKEN)}>,b",
        ),
        ("Sec-WebSocket-Protocol", f"{BEARER_PREFIX}*bad*", f"{BEARER_PREFIX}<redacted {core.fingerprint('*bad*')}>"),
        ("Sec-WebSocket-Protocol", f"a, {BEARER_PREFIX}", f"a, {BEARER_PREFIX}"),
        ("Sec-WebSocket-Protocol", "a, b", "a, b"),
        ("User-Agent", "Mozilla", "Mozilla"),
        ("Cookie", f"R_SESS={TOKEN}", f"R_SESS=<redacted {core.fingerprint(TOKEN)}>"),
        ("cookie", f"a=1; R_SESS={TOKEN}; b=2", f"a=1; R_SESS=<redacted {core.fingerprint(TOKEN)}>; b=2"),
        ("Cookie", "XR_SESS=1; R_SESS=", "XR_SESS=1; R_SESS="),
    ],
)
def test_redact_header_value(name, value, expected):
    assert core.redact_header_value(name, value) == expected
    assert core.redact_header_value(name, expected) == expected  # idempotent
