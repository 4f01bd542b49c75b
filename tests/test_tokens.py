"""kubews._tokens: decoding a bearer entry's token (interface §4, facts §1, §5), encoding one, and
naming one safely. Inputs are encoded by tests/helpers.py, independently of kubews."""

import base64
import hashlib

import pytest

import kubews as core
from helpers import BEARER_PREFIX, ODD, TOKEN, b64std, b64url, base64url_entry
from kubews import TokenError


def test_odd_token_exercises_both_alphabets():
    assert set("-_") <= set(b64url(ODD)) and set("+/") <= set(b64std(ODD))


@pytest.mark.parametrize(
    "encoded, token",
    [
        pytest.param(b64url(TOKEN), TOKEN, id="base64url (kubectl, Gardener)"),
        pytest.param(b64std(TOKEN), TOKEN, id="standard without = (Headlamp, OpenShift btoa)"),
        pytest.param(b64url(ODD), ODD, id="base64url with - and _"),
        pytest.param(b64std(ODD), ODD, id="standard with + and /"),
        pytest.param(b64url("ab", pad=True), "ab", id="one ="),
        pytest.param(b64url("ab"), "ab", id="one = left out"),
        pytest.param(b64url("a", pad=True), "a", id="two ="),
        pytest.param(b64url("é-ü"), "é-ü", id="UTF-8 with a dash"),
        pytest.param(b64url("tökén"), "tökén", id="UTF-8 letters"),
        pytest.param(b64std("ключ:значение"), "ключ:значение", id="UTF-8 Cyrillic"),
        pytest.param("", "", id="empty: no token"),
    ],
)
def test_decode_token(encoded, token):
    assert core.decode_token(encoded) == token


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param("a", id="one character: truncated"),
        pytest.param(b64url("abcd")[:5], id="a last group of one: truncated"),
        pytest.param("ab=c", id="= inside"),
        pytest.param("YQ===", id="three ="),
        pytest.param("YW*i", id="* is in no alphabet"),
        pytest.param("YW**Jj", id="** would decode to abc leniently"),
        pytest.param("YW i", id="space inside"),
        pytest.param("YWJj.", id="dot"),
        pytest.param("a-b+", id="mixes - with +"),
        pytest.param("Pj4_Pj4/", id="mixes _ with /"),
        pytest.param("Pj4-Pj4/", id="mixes - with /"),
        pytest.param("Pj4+Pj4_", id="mixes + with _"),
        pytest.param(b64url("\x00"), id="NUL"),
        pytest.param(b64url("a\nb"), id="LF"),
        pytest.param(b64url("a\x1fb"), id="US (0x1f)"),
        pytest.param(b64url("token\x7f"), id="DEL (0x7f)"),
        pytest.param(b64url("token\x80"), id="C1 control 0x80"),
        pytest.param(b64url("tok\x85en"), id="C1 control NEL (0x85)"),
        pytest.param(b64url("token\x9f"), id="C1 control 0x9f"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="), id="not UTF-8"),
    ],
)
def test_decode_token_refuses(encoded):
    with pytest.raises(TokenError) as info:
        core.decode_token(encoded)
    assert encoded not in str(info.value) or len(encoded) < 3  # the input is never quoted


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(TOKEN, id="Rancher token"),
        pytest.param(ODD, id="both alphabets differ"),
        pytest.param("tökén", id="UTF-8 letters"),
    ],
)
def test_encode_token_is_kube_apiserver_form(token):
    assert core.encode_token(token) == base64url_entry(token)  # base64url, no '=' (facts §1)


def test_bearer_prefix_is_the_documented_one_and_case_sensitive():
    assert core.BEARER_PREFIX == BEARER_PREFIX
    assert core.is_bearer_entry(BEARER_PREFIX + "YQ") and core.is_bearer_entry(BEARER_PREFIX)
    assert not core.is_bearer_entry(BEARER_PREFIX.upper() + "YQ")
    assert not core.is_bearer_entry(" " + BEARER_PREFIX + "YQ")
    assert core.bearer_payload(BEARER_PREFIX + "YQ") == "YQ"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("a\rb", id="CR"),
        pytest.param("a\x7f", id="DEL"),
        pytest.param("a\x9b", id="C1 CSI"),
    ],
)
def test_check_token_refuses(token):
    with pytest.raises(TokenError):
        core.check_token(token)


def test_check_token_passes_a_usable_token():
    assert core.check_token("tökén: ok") == "tökén: ok"


def test_fingerprint():
    assert core.fingerprint("x") == "sha256:2d711642"


def test_fingerprint_of_a_value_that_is_not_utf8():
    # mitmproxy decodes header bytes with surrogateescape: a credential may hold any byte.
    value = b"tok\xffen".decode("utf-8", "surrogateescape")
    assert core.fingerprint(value) == "sha256:" + hashlib.sha256(b"tok\xffen").hexdigest()[:8]


def test_fingerprint_of_a_surrogate_no_byte_decodes_to():
    # Only text made elsewhere holds one (a log line the filter reads): it is named, never an error.
    assert core.fingerprint("tok\ud800en") == "sha256:" + hashlib.sha256("tok\ud800en".encode("utf-8", "surrogatepass")).hexdigest()[:8]
