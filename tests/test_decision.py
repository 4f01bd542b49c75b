"""kubews._decision: what a matched rule does to a WebSocket handshake (interface §4)."""

import pytest

import kubews as core
from helpers import (
    BEARER_PREFIX,
    BROWSER_UA,
    ODD,
    TOKEN,
    b64std,
    base64url_entry,
    fingerprint_of,
    handshake,
    secret_forms,
    standard_entry,
)
from kubews import Auth, ClientAuthorization, Forward, OriginAction, Refuse, Rule, TokenError, TokenSource

ENTRY = standard_entry(TOKEN)  # Headlamp's (facts §5)


def protocols(*elements):
    return ("Sec-WebSocket-Protocol", ", ".join(elements))


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
        pytest.param([protocols("base64.binary.k8s.io", ENTRY)], ["base64.binary.k8s.io"], id="entry last (Headlamp)"),
        pytest.param([protocols(ENTRY, "base64.binary.k8s.io")], ["base64.binary.k8s.io"], id="entry first (OpenShift)"),
        pytest.param([protocols("a", ENTRY, "b")], ["a, b"], id="entry in the middle, order kept"),
        pytest.param([protocols(base64url_entry(TOKEN), "v4.channel.k8s.io")], ["v4.channel.k8s.io"], id="base64url (Gardener)"),
        pytest.param([("Sec-WebSocket-Protocol", "a"), protocols(ENTRY)], ["a"], id="entry on a line of its own"),
        pytest.param([("Sec-WebSocket-Protocol", f" a ,\t{ENTRY} ,b")], ["a, b"], id="spaces and tabs around commas"),
        pytest.param([("sec-websocket-protocol", f"a,{BEARER_PREFIX}{b64std(TOKEN, pad=True)}")], ["a"], id="padded, lower-case name"),
        # Read as the upstream reads it (facts §1, §6): folds unfolded, elements trimmed as Go does.
        pytest.param([("Sec-WebSocket-Protocol", f"a,\r\n {ENTRY}")], ["a"], id="entry on a folded line"),
        pytest.param([("Sec-WebSocket-Protocol", f"a,\r\n\t{ENTRY},\r\n b")], ["a, b"], id="entry and more on folded lines"),
        pytest.param([("Sec-WebSocket-Protocol", f"a, \xa0{ENTRY}")], ["a"], id="NBSP before the entry"),
        pytest.param([("Sec-WebSocket-Protocol", f"a,\x0b{ENTRY}\x0c")], ["a"], id="VT and FF around the entry"),
        pytest.param([("Sec-WebSocket-Protocol", f"a,\r{ENTRY}")], ["a"], id="CR before the entry"),
        pytest.param([("Sec-WebSocket-Protocol", f"a,\u3000{ENTRY}\u2028")], ["a"], id="Unicode spaces around the entry"),
    ],
)
def test_header_mode_moves_token(lines, left):
    verdict = decide(handshake(*lines))
    assert sent(verdict, "Authorization") == [f"Bearer {TOKEN}"]
    assert sent(verdict, "Sec-WebSocket-Protocol") == left
    assert verdict.fingerprint == fingerprint_of(TOKEN)
    assert "token moved to Authorization" in verdict.actions


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(ODD, id="both alphabets differ"),
        pytest.param("tökén", id="UTF-8 letters"),
    ],
)
@pytest.mark.parametrize("encode", [standard_entry, base64url_entry], ids=["standard", "base64url"])
def test_any_usable_token_is_moved(token, encode):
    verdict = decide(handshake(protocols("a", encode(token))))
    assert sent(verdict, "Authorization") == [f"Bearer {token}"]


def test_header_mode_other_headers_untouched():
    request = handshake(("User-Agent", BROWSER_UA), ("Origin", "http://x"), protocols("a", ENTRY))
    verdict = decide(request)
    untouched = [h for h in request.headers if h[0] != "Sec-WebSocket-Protocol"]
    assert [h for h in verdict.headers if h[0] not in ("Sec-WebSocket-Protocol", "Authorization")] == untouched


def test_subprotocol_mode_forwards_list_unchanged():
    request = handshake(("Sec-WebSocket-Protocol", f"a,  {ENTRY}"), ("Sec-WebSocket-Protocol", "b"))
    verdict = decide(request, rule(auth=Auth.SUBPROTOCOL))
    assert verdict.headers == request.headers
    assert verdict.actions == ("token kept in subprotocol",)


def test_both_mode_sets_header_and_keeps_entry():
    line = protocols("a", ENTRY)
    verdict = decide(handshake(line), rule(auth=Auth.BOTH))
    assert sent(verdict, "Authorization") == [f"Bearer {TOKEN}"]
    assert sent(verdict, "Sec-WebSocket-Protocol") == [line[1]]


@pytest.mark.parametrize(
    "auth, authorization, expected_authorization, expected_protocols",
    [
        pytest.param(Auth.HEADER, ClientAuthorization.KEEP, ["Bearer client"], ["a"], id="header, keep"),
        pytest.param(Auth.HEADER, ClientAuthorization.REPLACE, [f"Bearer {TOKEN}"], ["a"], id="header, replace"),
        pytest.param(Auth.BOTH, ClientAuthorization.KEEP, ["Bearer client"], [f"a, {ENTRY}"], id="both, keep"),
        pytest.param(Auth.BOTH, ClientAuthorization.REPLACE, [f"Bearer {TOKEN}"], [f"a, {ENTRY}"], id="both, replace"),
        pytest.param(Auth.SUBPROTOCOL, ClientAuthorization.KEEP, ["Bearer client"], [f"a, {ENTRY}"], id="subprotocol, keep"),
        # the entry wins, so the client's header must not reach the server
        pytest.param(Auth.SUBPROTOCOL, ClientAuthorization.REPLACE, [], [f"a, {ENTRY}"], id="subprotocol, replace"),
    ],
)
def test_client_authorization(auth, authorization, expected_authorization, expected_protocols):
    request = handshake(("Authorization", "Bearer client"), protocols("a", ENTRY))
    verdict = decide(request, rule(auth=auth, authorization=authorization))
    assert sent(verdict, "Authorization") == expected_authorization
    assert sent(verdict, "Sec-WebSocket-Protocol") == expected_protocols


@pytest.mark.parametrize("auth", list(Auth), ids=lambda a: a.value)
@pytest.mark.parametrize("authorization", list(ClientAuthorization), ids=lambda a: a.value)
@pytest.mark.parametrize(
    "protocol_lines",
    [
        pytest.param([("Sec-WebSocket-Protocol", "v5.channel.k8s.io,v4.channel.k8s.io")], id="kubectl's protocols"),
        pytest.param([], id="no protocol at all"),
    ],
)
def test_client_authorization_without_entry_passes_unchanged(auth, authorization, protocol_lines):
    # kubectl, the Python and Node clients: a matching rule changes nothing, whatever its settings.
    request = handshake(
        ("User-Agent", "kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07"),
        ("Authorization", "Bearer kc-token"),
        *protocol_lines,
        ("Origin", "https://rancher.test"),
    )
    verdict = decide(request, rule(auth=auth, authorization=authorization, origin=OriginAction.MATCH_HOST))
    assert isinstance(verdict, Forward)
    assert verdict.headers == request.headers
    assert verdict.fingerprint is None
    assert verdict.actions == ("nothing to change",)


@pytest.mark.parametrize(
    "auth, said",
    [
        pytest.param(Auth.HEADER, "bearer entry removed", id="header"),
        pytest.param(Auth.BOTH, "bearer entry kept", id="both"),
    ],
)
def test_actions_say_what_became_of_the_entry(auth, said):
    verdict = decide(handshake(protocols("a", ENTRY)), rule(auth=auth))
    assert said in verdict.actions
    assert not any(a.startswith("bearer entry") and a != said for a in verdict.actions)


@pytest.mark.parametrize(
    "value, expected, action",
    [
        pytest.param("keep", [BROWSER_UA, "second"], None, id="keep"),
        pytest.param("remove", [], "User-Agent removed", id="remove"),
        pytest.param("k8s-ws", ["k8s-ws"], "User-Agent replaced", id="a string"),
    ],
)
def test_user_agent(value, expected, action):
    request = handshake(("User-Agent", BROWSER_UA), ("User-Agent", "second"), protocols("a", ENTRY))
    verdict = decide(request, rule(user_agent=value))
    assert sent(verdict, "User-Agent") == expected
    assert (action in verdict.actions) if action else not any("User-Agent" in a for a in verdict.actions)


def test_user_agent_string_is_sent_when_client_sent_none():
    assert sent(decide(handshake(protocols("a")), rule(user_agent="k8s-ws")), "User-Agent") == ["k8s-ws"]


@pytest.mark.parametrize(
    "user_agent, sent_agents",
    [
        pytest.param("remove", [], id="remove, none sent"),
        pytest.param("k8s-ws", ["k8s-ws"], id="the same string sent"),
    ],
)
def test_no_user_agent_action_when_nothing_changes(user_agent, sent_agents):
    request = handshake(*(("User-Agent", a) for a in sent_agents), protocols("a"))
    verdict = decide(request, rule(user_agent=user_agent))
    assert verdict.headers == request.headers
    assert not any("User-Agent" in a for a in verdict.actions)


@pytest.mark.parametrize(
    "origin, scheme, host, sent_origins, expected",
    [
        pytest.param(OriginAction.KEEP, "https", "r.test", ["http://page"], ["http://page"], id="keep"),
        pytest.param(OriginAction.REMOVE, "https", "r.test", ["http://page"], [], id="remove"),
        pytest.param(OriginAction.MATCH_HOST, "https", "r.test", ["http://page"], ["https://r.test"], id="match-host over TLS"),
        pytest.param(
            OriginAction.MATCH_HOST, "http", "r.test:8080", ["http://page", "x"], ["http://r.test:8080"], id="match-host, plain, two lines"
        ),
        pytest.param(OriginAction.MATCH_HOST, "https", "r.test", [], [], id="match-host adds none"),
    ],
)
def test_origin(origin, scheme, host, sent_origins, expected):
    request = handshake(*(("Origin", o) for o in sent_origins), protocols("a"), host=host, scheme=scheme)
    assert sent(decide(request, rule(origin=origin)), "Origin") == expected


def test_no_origin_action_when_it_matches_already():
    request = handshake(("Origin", "https://rancher.test"), protocols("a"))
    verdict = decide(request, rule(origin=OriginAction.MATCH_HOST))
    assert verdict.headers == request.headers
    assert not any("Origin" in a for a in verdict.actions)


@pytest.mark.parametrize(
    "auth, expect_authorization, expect_protocols",
    [
        pytest.param(Auth.HEADER, ["Bearer stored"], ["a"], id="header"),
        pytest.param(Auth.BOTH, ["Bearer stored"], ["a"], id="both"),
        pytest.param(Auth.SUBPROTOCOL, [], [f"a, {base64url_entry('stored')}"], id="subprotocol"),
    ],
)
def test_stored_token_injected(auth, expect_authorization, expect_protocols):
    source = rule(auth=auth, token=TokenSource("env", "T"))
    verdict = decide(handshake(protocols("a")), source, tokens={"r": "stored"})
    assert sent(verdict, "Authorization") == expect_authorization
    assert sent(verdict, "Sec-WebSocket-Protocol") == expect_protocols
    assert verdict.fingerprint == fingerprint_of("stored")
    assert verdict.uses_stored_token


def test_empty_entry_counts_as_no_token():
    verdict = decide(handshake(protocols("a", BEARER_PREFIX)), rule(token=TokenSource("env", "T")), tokens={"r": "stored"})
    assert sent(verdict, "Authorization") == ["Bearer stored"]
    assert sent(verdict, "Sec-WebSocket-Protocol") == ["a"]


@pytest.mark.parametrize(
    "request_headers",
    [
        pytest.param([protocols("a", ENTRY)], id="the client's bearer entry"),
        pytest.param([("Authorization", "Bearer mine"), protocols("a")], id="the client's Authorization"),
    ],
)
def test_stored_token_not_used_when_client_has_one(request_headers):
    verdict = decide(handshake(*request_headers), rule(token=TokenSource("env", "T")), tokens={"r": "stored"})
    assert "stored" not in str(verdict.headers) and not verdict.uses_stored_token


def test_the_verdict_carries_the_rule_itself():
    chosen = rule(name="chosen", hosts=("rancher.test",))
    assert decide(handshake(protocols("a")), chosen).rule is chosen
    assert decide(handshake(protocols("a", ENTRY, ENTRY)), chosen).rule is chosen


@pytest.mark.parametrize(
    "request_headers, rule_fields, status",
    [
        pytest.param([protocols("a", ENTRY, standard_entry("other"))], {}, 400, id="two bearer entries"),
        pytest.param([protocols("a", ENTRY), protocols(standard_entry("other"))], {}, 400, id="two entries on two lines"),
        pytest.param([protocols("a", ENTRY, ENTRY)], {"auth": Auth.SUBPROTOCOL}, 400, id="the same entry twice"),
        pytest.param([protocols("a", BEARER_PREFIX + "a")], {}, 400, id="truncated base64"),
        pytest.param([protocols("a", BEARER_PREFIX + "YW*i")], {"auth": Auth.SUBPROTOCOL}, 400, id="not base64, subprotocol"),
        pytest.param([protocols("a", BEARER_PREFIX + "YW**Jj")], {}, 400, id="characters of no alphabet"),
        pytest.param([protocols("a", BEARER_PREFIX + "Pj4_Pj4/")], {}, 400, id="mixes _ with /"),
        pytest.param([protocols("a", BEARER_PREFIX + "Pj4-Pj4+")], {}, 400, id="mixes - with +"),
        pytest.param([protocols("a", standard_entry("token\x7f"))], {}, 400, id="DEL in the token"),
        pytest.param([protocols("a", standard_entry("tok\x85en"))], {}, 400, id="C1 control in the token"),
        pytest.param([protocols("a", standard_entry("a\r\nX-Injected: 1"))], {}, 400, id="CRLF in the token"),
        pytest.param([protocols(ENTRY)], {}, 400, id="no other protocol left"),
        pytest.param([protocols("a", BEARER_PREFIX + b64std(TOKEN)[:-1] + "é")], {}, 400, id="a non-ASCII character"),
        pytest.param([protocols("a", BEARER_PREFIX + "AAA\udcff")], {}, 400, id="a byte that is not UTF-8"),
        pytest.param([protocols("a", BEARER_PREFIX + "YW\u0660Jj")], {}, 400, id="an Arabic-Indic digit"),
        pytest.param(
            [("Sec-WebSocket-Protocol", f"a, {ENTRY},\r\n {standard_entry('other')}")], {}, 400, id="a second entry on a folded line"
        ),
        pytest.param([("Sec-WebSocket-Protocol", f"a, {ENTRY},\xa0{standard_entry('other')}")], {}, 400, id="a second entry after NBSP"),
        pytest.param([protocols(BEARER_PREFIX)], {}, 400, id="an empty entry alone"),
        pytest.param([protocols("a")], {"token": TokenSource("file", "/nope")}, 500, id="token source unreadable"),
    ],
)
def test_refusals(request_headers, rule_fields, status):
    tokens = {"r": TokenError("cannot read /nope: No such file or directory")}
    verdict = decide(handshake(*request_headers), rule(**rule_fields), tokens=tokens)
    assert isinstance(verdict, Refuse)
    assert verdict.status == status
    assert verdict.body.startswith("k8s_ws: rule 'r': ") and verdict.body.endswith("\n") and verdict.body.count("\n") == 1
    assert not any(form in verdict.body for form in secret_forms(TOKEN))


def test_lone_entry_is_fine_when_entry_is_kept():
    assert isinstance(decide(handshake(protocols(ENTRY)), rule(auth=Auth.SUBPROTOCOL)), Forward)


@pytest.mark.parametrize(
    "auth",
    [pytest.param(auth, id=f"auth {auth.value}") for auth in Auth],
)
def test_a_handled_request_goes_upstream_with_no_fold(auth):
    folded = (
        ("Sec-WebSocket-Protocol", f"a,\r\n {ENTRY}"),
        ("X-Other", "one\r\n\ttwo"),
        ("User-Agent", "kubectl/v1.32"),
    )
    verdict = decide(handshake(*folded), rule(auth=auth))
    assert isinstance(verdict, Forward)
    assert not any("\r" in value or "\n" in value for _, value in verdict.headers)
    assert sent(verdict, "X-Other") == ["one two"]
    assert "folded header lines unfolded" in verdict.actions


def test_nothing_is_unfolded_when_nothing_is_folded():
    verdict = decide(handshake(protocols("a", ENTRY)))
    assert "folded header lines unfolded" not in verdict.actions


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(handshake(protocols("a", BEARER_PREFIX + "AAA\udcff"), upgrade=False), id="not an upgrade, a byte that is not UTF-8"),
        pytest.param(handshake(protocols("a", BEARER_PREFIX + "é"), path="/healthz"), id="not an API path, non-ASCII"),
        pytest.param(
            handshake(("Sec-WebSocket-Protocol", f"a,\r\n {ENTRY}, {ENTRY}"), upgrade=False), id="not an upgrade, two entries, folded"
        ),
    ],
)
def test_a_request_no_rule_matches_is_never_refused_nor_changed(request_):
    assert decide(request_) is None
