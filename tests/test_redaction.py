"""kubews._redaction: every credential in a header value replaced by its fingerprint (interface §6):
Authorization and Proxy-Authorization values, bearer entries, Rancher's R_SESS cookie."""

import pytest

import kubews as core
from helpers import BEARER_PREFIX, ODD, TOKEN, base64url_entry, redacted, secret_forms, standard_entry

BASIC = "dXNlcjpwYXNz"  # user:pass


@pytest.mark.parametrize(
    "name, value, expected",
    [
        pytest.param("Authorization", f"Bearer {TOKEN}", f"Bearer {redacted(TOKEN)}", id="Authorization: Bearer"),
        pytest.param("authorization", f"Basic {BASIC}", f"Basic {redacted(BASIC)}", id="Authorization: Basic"),
        pytest.param("Authorization", TOKEN, redacted(TOKEN), id="Authorization without a scheme"),
        # the fingerprint is the token's, as in the INFO line, whatever the spacing around it
        pytest.param("Authorization", f"  Bearer  {TOKEN}  ", f"Bearer {redacted(TOKEN)}", id="Authorization with extra spaces"),
        pytest.param("Proxy-Authorization", f"Basic {BASIC}", f"Basic {redacted(BASIC)}", id="Proxy-Authorization: Basic"),
        pytest.param("proxy-authorization", f"Bearer {TOKEN}", f"Bearer {redacted(TOKEN)}", id="Proxy-Authorization: Bearer"),
        pytest.param("Proxy-Authorization", TOKEN, redacted(TOKEN), id="Proxy-Authorization without a scheme"),
        pytest.param(
            "Sec-WebSocket-Protocol",
            f"a, {standard_entry(TOKEN)},b",
            f"a, {BEARER_PREFIX}{redacted(TOKEN)},b",
            id="standard entry among others",
        ),
        pytest.param(
            "sec-websocket-protocol",
            f"{base64url_entry(ODD)}, v4.channel.k8s.io",
            f"{BEARER_PREFIX}{redacted(ODD)}, v4.channel.k8s.io",
            id="base64url entry first",
        ),
        pytest.param("Sec-WebSocket-Protocol", f"{BEARER_PREFIX}*bad*", f"{BEARER_PREFIX}{redacted('*bad*')}", id="entry that does not decode"),
        pytest.param("Sec-WebSocket-Protocol", f"a, {BEARER_PREFIX}", f"a, {BEARER_PREFIX}", id="empty entry"),
        pytest.param("Sec-WebSocket-Protocol", "a, b", "a, b", id="no entry"),
        pytest.param("User-Agent", f"Mozilla {TOKEN}", f"Mozilla {TOKEN}", id="other header"),
        pytest.param("Cookie", f"R_SESS={TOKEN}", f"R_SESS={redacted(TOKEN)}", id="R_SESS alone"),
        pytest.param("cookie", f"a=1; R_SESS={TOKEN}; b=2", f"a=1; R_SESS={redacted(TOKEN)}; b=2", id="R_SESS between others"),
        pytest.param("Cookie", f"a=1;R_SESS={TOKEN}", f"a=1;R_SESS={redacted(TOKEN)}", id="R_SESS after ; without a space"),
        pytest.param("Cookie", f"a=1;R_SESS={TOKEN};b=2", f"a=1;R_SESS={redacted(TOKEN)};b=2", id="R_SESS between ; without spaces"),
        pytest.param("Cookie", f"a=1;\tR_SESS={TOKEN}", f"a=1;\tR_SESS={redacted(TOKEN)}", id="R_SESS after ; and a tab"),
        pytest.param("Cookie", f"xR_SESS={TOKEN}", f"xR_SESS={TOKEN}", id="xR_SESS is another cookie"),
        pytest.param("Cookie", f"a=1;xR_SESS={TOKEN}", f"a=1;xR_SESS={TOKEN}", id="xR_SESS after ;"),
        pytest.param("Cookie", f"R_SESSX={TOKEN}", f"R_SESSX={TOKEN}", id="R_SESSX is another cookie"),
        pytest.param("Cookie", "XR_SESS=1; R_SESS=", "XR_SESS=1; R_SESS=", id="empty R_SESS"),
    ],
)
def test_redact_header_value(name, value, expected):
    assert core.redact_header_value(name, value) == expected
    assert core.redact_header_value(name, expected) == expected  # idempotent


@pytest.mark.parametrize("name", ["Authorization", "Proxy-Authorization", "Cookie", "Sec-WebSocket-Protocol"])
def test_no_form_of_the_token_is_left(name):
    value = {
        "Authorization": f"Bearer {TOKEN}",
        "Proxy-Authorization": f"Bearer {TOKEN}",
        "Cookie": f"a=1;R_SESS={TOKEN}",
        "Sec-WebSocket-Protocol": f"a,{standard_entry(TOKEN)}, {base64url_entry(TOKEN)}",
    }[name]
    shown = core.redact_header_value(name, value)
    assert not any(form in shown for form in secret_forms(TOKEN))


def test_redacted_tokens_can_still_be_told_apart():
    first = core.redact_header_value("Authorization", f"Bearer {TOKEN}")
    second = core.redact_header_value("Authorization", f"Bearer {ODD}")
    assert first != second
