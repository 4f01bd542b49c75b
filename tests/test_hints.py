"""The hint table: each failure shape of docs/protocol.md §1–4 gets the hint that fixes it; and
the addon's hooks that log it as a WARNING and keep it in flow.metadata (interface.md §5).

Answers are written as the facts describe them (status, headers, body), not taken from the code.
"""

import json
import logging
from dataclasses import replace

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from helpers import BROWSER_UA, ODD, PAGE_ORIGIN, TOKEN, b64std, base64url_entry, secret_forms, standard_entry, upgrade_flow
from kubews.hints import Answer, Sent, handshake_hint, offered_protocols, shown_protocols, transport_hint
from kubews.mitm import K8sWs

ENTRY = base64url_entry(TOKEN)
EXEC = "/k8s/clusters/c-m-healthy/api/v1/namespaces/default/pods/p/exec"
WATCH = "/k8s/clusters/c-m-healthy/api/v1/namespaces/default/pods"
CATTLE_FALSE = (("X-Api-Cattle-Auth", "false"), ("X-Content-Type-Options", "nosniff"))

# Rancher's bodies (facts §4), kube-apiserver's Status (facts §1)
MUST_AUTHENTICATE = Answer(
    401, (("Content-Type", "application/json"), *CATTLE_FALSE), b'{"type":"error","status":"401","message":"must authenticate"}'
)
NOT_AUTHORIZED = Answer(401, (("Content-Type", "text/plain"), *CATTLE_FALSE), b"not authorized")
ORIGIN_BODY = b'{"Code":{"Code":"PermissionDenied","Status":403},"Message":"origin not allowed","Cause":null,"FieldName":""}'


def status_body(code, reason, message):
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}
    ).encode()


def sent(*headers, path=EXEC, query="", rule="rancher", offered=None):
    headers = (("Host", "rancher.test"), ("Connection", "Upgrade"), ("Upgrade", "websocket"), *headers)
    return Sent(path, query, headers, offered_protocols(headers) if offered is None else offered, rule)


def protocols(*elements):
    return ("Sec-WebSocket-Protocol", ", ".join(elements))


BEARER = ("Authorization", f"Bearer {TOKEN}")


def hint_text(hint):
    assert hint is not None
    text = str(hint)
    assert not any(form in text for form in secret_forms(TOKEN))
    return text


# --- Rancher's 401 ----------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [MUST_AUTHENTICATE, NOT_AUTHORIZED], ids=["must authenticate", "not authorized"])
def test_rancher_401_with_token_left_in_subprotocol_says_auth_header(answer):
    hint = handshake_hint(sent(protocols("v4.channel.k8s.io", ENTRY), rule="keep-entry"), answer)
    hint_text(hint)
    assert hint.setting == "auth: header"
    assert "rule 'keep-entry'" in hint.fix
    assert "Authorization only" in hint.meaning  # Rancher never reads Sec-WebSocket-Protocol (facts §4)


def test_rancher_401_without_a_rule_says_to_add_one_for_the_host():
    hint = handshake_hint(sent(protocols("v4.channel.k8s.io", ENTRY), rule=None), MUST_AUTHENTICATE)
    assert hint.setting == "auth: header"
    assert "no rule" in hint.fix and "rancher.test" in hint.fix


@pytest.mark.parametrize(
    "answer, said",
    [
        pytest.param(MUST_AUTHENTICATE, "must authenticate", id="must authenticate"),
        pytest.param(NOT_AUTHORIZED, "not authorized", id="not authorized"),
    ],
)
def test_rancher_401_with_authorization_is_a_refused_token(answer, said):
    hint = handshake_hint(sent(BEARER, protocols("v4.channel.k8s.io")), answer)
    hint_text(hint)
    assert "refused the token" in hint.meaning and said in hint.meaning
    assert "scoped to a cluster other than 'c-m-healthy'" in hint.fix  # a cluster-scoped token (facts §4)
    assert hint.setting is None


def test_rancher_401_with_authorization_and_an_entry_is_a_refused_token():
    # auth: both: Rancher had the token in Authorization, so the entry left in place is not the cause.
    hint = handshake_hint(sent(BEARER, protocols("v4.channel.k8s.io", ENTRY), rule="both"), MUST_AUTHENTICATE)
    assert "refused the token" in hint_text(hint) and hint.setting is None


def test_rancher_401_without_any_token_says_none_was_sent():
    hint = handshake_hint(sent(protocols("v4.channel.k8s.io")), MUST_AUTHENTICATE)
    assert "got no token" in hint.meaning
    assert "token: {env: VAR}" in hint.fix


@pytest.mark.parametrize("answer", [pytest.param(MUST_AUTHENTICATE, id="Rancher"), pytest.param(NOT_AUTHORIZED, id="Rancher local")])
def test_401_after_a_withheld_token_says_why_it_was_withheld(answer):
    request = replace(sent(protocols("v4.channel.k8s.io"), rule=None), token_withheld_by="stored")
    hint = handshake_hint(request, answer)
    assert "rule 'stored' holds one but withheld it" in hint.meaning and "rancher.test" in hint.meaning
    assert "Host header" in hint.meaning and "give the rule a token" not in hint_text(hint)
    assert "address" in hint.fix and "hosts" in hint.fix


# --- kube-apiserver's 401 (facts §1) ----------------------------------------------------------


def test_apiserver_401_with_a_token_is_a_refused_token():
    answer = Answer(401, (("Content-Type", "application/json"),), status_body(401, "Unauthorized", "Unauthorized"))
    for headers in ((BEARER, protocols("v4.channel.k8s.io")), (protocols("v4.channel.k8s.io", ENTRY),)):
        hint = handshake_hint(sent(*headers, rule=None), answer)
        assert hint_text(hint).startswith("the API server refused the token")


def test_apiserver_401_with_authorization_and_no_protocol_is_a_refused_token():
    answer = Answer(401, (), status_body(401, "Unauthorized", "Unauthorized"))
    hint = handshake_hint(sent(BEARER, rule=None), answer)
    assert hint_text(hint).startswith("the API server refused the token")


def test_apiserver_401_for_a_lone_bearer_entry_needs_another_protocol():
    answer = Answer(401, (), status_body(401, "Unauthorized", "Unauthorized"))
    hint = handshake_hint(sent(protocols(ENTRY), rule="sub"), answer)
    assert "another protocol" in hint_text(hint)


# --- 403 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain; charset=utf-8", "application/json"], ids=["text before Rancher 2.15", "JSON since 2.15"]
)
def test_rancher_origin_not_allowed_names_the_rule_field(content_type):
    request = sent(("User-Agent", BROWSER_UA), ("Origin", PAGE_ORIGIN), BEARER, rule="keep-origin")
    hint = handshake_hint(request, Answer(403, (("Content-Type", content_type), *CATTLE_FALSE), ORIGIN_BODY))
    hint_text(hint)
    assert hint.setting == "origin: match-host"
    assert "rule 'keep-origin'" in hint.fix
    assert PAGE_ORIGIN in hint.meaning and "rancher.test" in hint.meaning


def test_empty_403_on_exec_is_no_supported_protocol():
    hint = handshake_hint(sent(BEARER, protocols("base64.binary.k8s.io")), Answer(403, CATTLE_FALSE, b""))
    assert "none of the offered protocols" in hint.meaning and "base64.binary.k8s.io" in hint.meaning
    assert "v4.channel.k8s.io" in hint.fix  # what exec takes (facts §2)


def test_empty_403_on_a_watch_without_origin_says_keep_an_origin():
    hint = handshake_hint(
        sent(BEARER, protocols("base64.binary.k8s.io"), path=WATCH, query="watch=1", rule="no-origin"), Answer(403, (), b"")
    )
    assert "watch" in hint.meaning and "Origin" in hint.meaning
    assert hint.setting == "origin: match-host" and "rule 'no-origin'" in hint.fix


def test_empty_403_on_a_watch_with_origin_is_about_protocols():
    request = sent(BEARER, ("Origin", "https://rancher.test"), protocols("x.k8s.io"), path=WATCH, query="watch=true")
    assert "none of the offered protocols" in handshake_hint(request, Answer(403, (), b"")).meaning


def test_rbac_forbidden():
    body = status_body(403, "Forbidden", 'pods "p" is forbidden: User "u" cannot create resource "pods/exec"')
    hint = handshake_hint(sent(BEARER, protocols("v4.channel.k8s.io")), Answer(403, (), body))
    assert "RBAC" in hint.meaning


# --- 400 --------------------------------------------------------------------------------------


def test_watch_with_token_entry_left_is_400_and_says_auth_header():
    request = sent(
        BEARER, ("Origin", "https://rancher.test"), protocols("base64.binary.k8s.io", ENTRY), path=WATCH, query="watch=1", rule="both"
    )
    hint = handshake_hint(request, Answer(400, (), b""))
    hint_text(hint)
    assert "exactly one protocol" in hint.meaning and "<bearer entry>" in hint.meaning
    assert hint.setting == "auth: header" and "rule 'both'" in hint.fix


def test_watch_with_two_plain_protocols():
    request = sent(BEARER, protocols("a.k8s.io", "b.k8s.io"), path=WATCH, query="watch=1")
    hint = handshake_hint(request, Answer(400, (), b""))
    assert "exactly one protocol" in hint.meaning and hint.setting is None


def test_upgrade_request_required_says_a_hop_dropped_upgrade():
    body = status_body(400, "BadRequest", "Upgrade request required")
    hint = handshake_hint(sent(BEARER, protocols("v4.channel.k8s.io")), Answer(400, CATTLE_FALSE, body))
    assert "Upgrade request required" in hint.meaning and "dropped the Upgrade" in hint.meaning


# --- Rancher's cluster errors (facts §4) --------------------------------------------------------


def test_unknown_cluster_404():
    body = b'{"type":"error","status":"404","code":"NotFound","message":"clusters.management.cattle.io \\"c-m-nope\\" not found"}'
    hint = handshake_hint(sent(BEARER, path="/k8s/clusters/c-m-nope/api/v1/namespaces/d/pods/p/log"), Answer(404, CATTLE_FALSE, body))
    assert "no cluster 'c-m-nope'" in hint.meaning


def test_apiserver_404_is_a_missing_object():
    hint = handshake_hint(sent(BEARER), Answer(404, (), status_body(404, "NotFound", 'pods "p" not found')))
    assert "no such object" in hint.meaning


def test_cluster_not_provisioned_503():
    body = b'{"type":"error","status":"503","code":"ClusterUnavailable","message":"cluster c-m-pending is not ready"}'
    hint = handshake_hint(sent(BEARER, path="/k8s/clusters/c-m-pending/api/v1/pods"), Answer(503, CATTLE_FALSE, body))
    assert "'c-m-pending' is not available" in hint.meaning


def test_empty_502_from_rancher_is_the_tunnel_down():
    hint = handshake_hint(sent(BEARER, path="/k8s/clusters/c-m-dead/api/v1/pods"), Answer(502, (("X-Api-Cattle-Auth", "true"),), b""))
    assert "cannot reach cluster 'c-m-dead'" in hint.meaning and "tunnel" in hint.meaning


def test_empty_502_elsewhere_is_a_gateway_or_its_tls():
    hint = handshake_hint(sent(BEARER, path="/api/v1/pods"), Answer(502, (), b""))
    assert "gateway" in hint.meaning and "TLS" in hint.meaning


# --- 101: the protocol the client must get (facts §3) -----------------------------------------


@pytest.mark.parametrize(
    "offered, chosen, expected",
    [
        pytest.param(("base64.binary.k8s.io", "v4.channel.k8s.io"), "v4.channel.k8s.io", None, id="an offered one"),
        pytest.param((), None, None, id="nothing offered, nothing chosen"),
        pytest.param(("base64.binary.k8s.io",), "v4.channel.k8s.io", "did not offer", id="one not offered"),
        pytest.param(("base64.binary.k8s.io",), None, "names no protocol", id="none chosen"),
        # never echoed by kube; never logged either
        pytest.param(("base64.binary.k8s.io",), ENTRY, "did not offer", id="the bearer entry"),
    ],
)
def test_101_protocol_must_be_one_the_client_offered(offered, chosen, expected):
    answer = Answer(101, (("Upgrade", "websocket"),) + ((("Sec-WebSocket-Protocol", chosen),) if chosen else ()), None)
    hint = handshake_hint(sent(BEARER, protocols(*offered), offered=offered), answer)
    if expected is None:
        assert hint is None
    else:
        assert expected in hint_text(hint) and "browser fails" in hint.meaning


def test_offered_protocols_leave_bearer_entries_out():
    headers = (protocols("a", ENTRY), ("sec-websocket-protocol", "b"))
    assert offered_protocols(headers) == ("a", "b")


# --- anything else ----------------------------------------------------------------------------


def test_other_errors_quote_identifiers_only():
    body = json.dumps({"kind": "Status", "reason": "InternalError", "message": f"echo {TOKEN}"}).encode()
    hint = handshake_hint(sent(BEARER), Answer(500, CATTLE_FALSE, body))
    text = hint_text(hint)
    assert "500" in text and "InternalError" in text and "from Rancher" in text


@pytest.mark.parametrize(
    "fields, quoted",
    [
        pytest.param({"reason": TOKEN}, [], id="reason is the token"),
        pytest.param({"reason": f"invalid bearer token {TOKEN}"}, [], id="reason is a sentence with the token"),
        pytest.param({"reason": b64std(TOKEN)}, [], id="reason is the token's base64, a long bare word"),
        pytest.param({"reason": ODD}, [], id="reason holds no letter"),
        pytest.param({"reason": ["InternalError"]}, [], id="reason is a list"),
        pytest.param({"code": TOKEN}, [], id="code is the token"),
        pytest.param({"code": f"bad token {TOKEN}"}, [], id="code is a sentence with the token"),
        pytest.param({"reason": TOKEN, "code": "ServerError"}, ["code ServerError"], id="reason the token, code a word"),
        pytest.param({"reason": "InternalError", "code": b64std(TOKEN)}, ["reason InternalError"], id="reason a word, code the base64"),
    ],
)
def test_error_body_fields_are_quoted_only_when_they_are_bare_words(fields, quoted):
    """A field of the upstream's error body is quoted in the hint only if it is a short bare word:
    anything else may hold a token (hints.py's _IDENTIFIER)."""
    for rancher in (False, True):
        answer = Answer(500, CATTLE_FALSE if rancher else (), json.dumps({"kind": "Status", **fields}).encode())
        text = hint_text(handshake_hint(sent(BEARER), answer))
        assert "500" in text and ("from Rancher" in text) is rancher  # still says what it can
        assert all(q in text for q in quoted)
        assert ("reason " in text) is any(q.startswith("reason ") for q in quoted)
        assert ("code " in text) is any(q.startswith("code ") for q in quoted)
        assert ODD not in text


@pytest.mark.parametrize(
    "request_, answer",
    [
        pytest.param(
            sent(BEARER, protocols("v4.channel.k8s.io")),
            Answer(403, (), status_body(403, "Unknown", "some admission webhook said no")),
            id="403 with a Status that is not Forbidden",
        ),
        pytest.param(sent(BEARER, protocols("a.k8s.io", "b.k8s.io")), Answer(400, (), b""), id="400 with two protocols, not a watch"),
        pytest.param(
            sent(BEARER, protocols("base64.binary.k8s.io"), path=WATCH, query="watch=1"),
            Answer(400, (), b""),
            id="400 on a watch with one protocol",
        ),
        pytest.param(
            sent(BEARER, protocols("a.k8s.io", "b.k8s.io"), path=WATCH, query="watch=0"), Answer(400, (), b""), id="400 with watch=0"
        ),
        pytest.param(sent(BEARER, path="/api/v1/pods"), Answer(404, (), b"404 page not found"), id="404 without a Status or a cluster"),
        pytest.param(sent(BEARER, path="/api/v1/pods"), Answer(503, (), b"upstream connect error"), id="503 without a cluster"),
        pytest.param(
            sent(BEARER, path="/k8s/clusters/c-m-dead/api/v1/pods"),
            Answer(502, (("X-Api-Cattle-Auth", "true"),), b"<html>Bad Gateway</html>"),
            id="502 with a body",
        ),
    ],
)
def test_answers_that_no_specific_hint_fits_get_the_generic_one(request_, answer):
    """A hint names a cause only when the answer shows it; otherwise it says the status, no fix."""
    hint = handshake_hint(request_, answer)
    assert str(answer.status) in hint_text(hint)
    assert hint.fix is None and hint.setting is None


def test_cluster_unavailable_code_without_a_cluster_path():
    body = b'{"type":"error","status":"503","code":"ClusterUnavailable","message":"cluster is not ready"}'
    hint = handshake_hint(sent(BEARER, path="/api/v1/pods"), Answer(503, CATTLE_FALSE, body))
    assert "not available" in hint.meaning and hint.fix is not None


def test_a_k8s_ws_refusal_upstream_is_quoted():
    body = b"k8s_ws: rule 'r': 2 bearer entries in Sec-WebSocket-Protocol; at most one is allowed\n"
    hint = handshake_hint(sent(BEARER), Answer(400, (("Content-Type", "text/plain"),), body))
    assert "2 bearer entries" in hint.meaning


@pytest.mark.parametrize(
    "message, meaning, fix",
    [
        pytest.param(
            "Certificate verify failed: unable to get local issuer certificate", "not trusted", "use --the-ca", id="mitmproxy's TLS error"
        ),
        pytest.param(
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)",
            "not trusted",
            "use --the-ca",
            id="Python's TLS error",
        ),
        pytest.param(
            "[Errno 111] Connect call failed ('127.0.0.1', 1)", "nothing accepts connections", "check the host and port", id="refused"
        ),
        pytest.param("[Errno 111] Connection refused", "nothing accepts connections", "check the host and port", id="refused, errno text"),
    ],
)
def test_transport_hints(message, meaning, fix):
    hint = transport_hint(message, "use --the-ca")
    assert meaning in hint.meaning and hint.fix == fix


def test_unknown_transport_error_has_no_hint():
    assert transport_hint("peer closed connection", "use --the-ca") is None


# --- the addon's hooks: WARNING lines and flow.metadata -----------------------------------------

HEADLAMP_ENTRY = standard_entry(TOKEN)  # facts §5


@pytest.fixture
def addon(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text('rules:\n  - name: rancher\n    hosts: ["rancher.test"]\n    paths: ["/k8s/clusters/*"]\n    origin: match-host\n')
    addon = K8sWs()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, k8s_ws_rules=str(rules))
        yield addon


def headlamp_flow(path=EXEC, protocol_line=f"base64.binary.k8s.io, v4.channel.k8s.io, {HEADLAMP_ENTRY}"):
    return upgrade_flow(
        f"https://rancher.test{path}",
        ("User-Agent", BROWSER_UA),
        ("Origin", PAGE_ORIGIN),
        ("Sec-WebSocket-Protocol", protocol_line),
    )


def answer_with(addon, flow, status, headers=(), body=b""):
    """mitmproxy's hooks from the upstream's answer on, after the request went out."""
    addon.requestheaders(flow)
    addon.request(flow)
    flow.response = http.Response.make(status, body, [(k.encode(), v.encode()) for k, v in headers])
    addon.responseheaders(flow)
    addon.response(flow)


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_addon_warns_with_the_hint_and_keeps_it_in_metadata(addon, caplog):
    flow = headlamp_flow()
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        answer_with(addon, flow, 403, [("Content-Type", "application/json"), *CATTLE_FALSE], ORIGIN_BODY)
    (warning,) = warnings_of(caplog)
    assert warning.startswith(f"k8s_ws: rule 'rancher' rancher.test {EXEC}: upstream 403: Rancher's origin check")
    decision = flow.metadata["k8s_ws"]
    assert decision["offered"] == ["base64.binary.k8s.io", "v4.channel.k8s.io"]  # what the client offered, no token
    assert decision["hint"] == warning.split("upstream 403: ", 1)[1]
    assert not any(form in caplog.text or form in str(flow.metadata) for form in secret_forms(TOKEN))


def test_no_warning_for_a_101_with_an_offered_protocol(addon, caplog):
    flow = headlamp_flow()
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        answer_with(addon, flow, 101, [("Upgrade", "websocket"), ("Sec-WebSocket-Protocol", "v4.channel.k8s.io")])
    assert warnings_of(caplog) == [] and "hint" not in flow.metadata["k8s_ws"]


def test_a_101_protocol_is_compared_with_the_client_offer(addon, caplog):
    flow = headlamp_flow()
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        answer_with(addon, flow, 101, [("Upgrade", "websocket"), ("Sec-WebSocket-Protocol", HEADLAMP_ENTRY)])
    (warning,) = warnings_of(caplog)
    assert "which the client did not offer" in warning
    assert HEADLAMP_ENTRY not in caplog.text and HEADLAMP_ENTRY not in str(flow.metadata)


def test_an_unmatched_kubernetes_upgrade_is_hinted_too(addon, caplog):
    flow = headlamp_flow(path="/api/v1/namespaces/default/pods/p/exec")
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        answer_with(addon, flow, 401, MUST_AUTHENTICATE.headers, MUST_AUTHENTICATE.body)
    (warning,) = warnings_of(caplog)
    assert warning.startswith("k8s_ws: no rule rancher.test /api/v1/namespaces/default/pods/p/exec: upstream 401")
    assert "add one for rancher.test with auth: header" in warning
    assert "k8s_ws" not in flow.metadata


def test_other_traffic_gets_no_hint(addon, caplog):
    flow = tflow.tflow(req=http.Request.make("GET", "https://rancher.test/api/v1/pods"))
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        answer_with(addon, flow, 401, MUST_AUTHENTICATE.headers, MUST_AUTHENTICATE.body)
    assert warnings_of(caplog) == []


def test_the_addons_own_refusal_is_not_hinted_as_upstream(addon, caplog):
    flow = headlamp_flow(protocol_line=HEADLAMP_ENTRY)  # no other protocol: refused (interface §4)
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        addon.requestheaders(flow)
        addon.responseheaders(flow)
        addon.response(flow)
    assert flow.response.status_code == 400
    assert [w for w in warnings_of(caplog) if "upstream" in w] == []


def test_upstream_tls_failure_is_hinted(addon, caplog):
    flow = headlamp_flow()
    addon.requestheaders(flow)
    flow.error = tflow.terr("Certificate verify failed: unable to get local issuer certificate")
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        addon.error(flow)
    hint = [w for w in warnings_of(caplog) if ": upstream error: " in w and "not trusted" in w]
    assert len(hint) == 1 and "ssl_verify_upstream_trusted_ca" in hint[0]
    assert "not trusted" in flow.metadata["k8s_ws"]["hint"]


@pytest.mark.parametrize(
    "element",
    [
        pytest.param(ENTRY, id="an entry"),
        pytest.param("\x7f" + ENTRY, id="the prefix after a DEL: no entry, a token all the same"),
        pytest.param("\u200b" + ENTRY, id="the prefix after a zero-width space, which Go does not trim"),
    ],
)
def test_hints_never_quote_what_follows_the_prefix(element):
    shown = shown_protocols(["v4.channel.k8s.io", element])
    assert shown == "v4.channel.k8s.io, <bearer entry>"
