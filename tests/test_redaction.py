"""kubews._redaction: every credential in a header value replaced by its fingerprint (interface §6):
Authorization and Proxy-Authorization values, bearer entries, Rancher's R_SESS cookie."""

import pytest

import kubews as core
from helpers import BEARER_PREFIX, ODD, TOKEN, b64std, base64url_entry, redacted, secret_forms, standard_entry

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
        pytest.param(
            "Sec-WebSocket-Protocol", f"{BEARER_PREFIX}*bad*", f"{BEARER_PREFIX}{redacted('*bad*')}", id="entry that does not decode"
        ),
        pytest.param("Sec-WebSocket-Protocol", f"a, {BEARER_PREFIX}", f"a, {BEARER_PREFIX}", id="empty entry"),
        pytest.param("Sec-WebSocket-Protocol", "a, b", "a, b", id="no entry"),
        pytest.param(
            "Sec-WebSocket-Protocol",
            f"a,\r\n {standard_entry(TOKEN)}",
            f"a,\r\n {BEARER_PREFIX}{redacted(TOKEN)}",
            id="entry on a folded line",
        ),
        pytest.param(
            "Sec-WebSocket-Protocol", f"a,\xa0{standard_entry(TOKEN)}", f"a,\xa0{BEARER_PREFIX}{redacted(TOKEN)}", id="entry after NBSP"
        ),
        pytest.param(
            "Sec-WebSocket-Protocol",
            f"a,\x0b{standard_entry(TOKEN)}\x0c",
            f"a,\x0b{BEARER_PREFIX}{redacted(TOKEN)}\x0c",
            id="entry between VT and FF",
        ),
        pytest.param(
            "Sec-WebSocket-Protocol",
            f"a, {BEARER_PREFIX}AAA\xe9",
            f"a, {BEARER_PREFIX}" + redacted("AAA\xe9"),
            id="entry with a non-ASCII character",
        ),
        pytest.param(
            "Sec-WebSocket-Protocol",
            f"a, {BEARER_PREFIX}AAA\udcff",
            f"a, {BEARER_PREFIX}" + redacted("AAA\udcff"),
            id="entry with a byte that is not UTF-8",
        ),
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


#: A request head as mitmproxy prints it when a client hangs up before its end (a bytes repr).
HEAD = (
    b"GET /k8s/clusters/c-1/api/v1/namespaces/d/pods/p/exec HTTP/1.1\r\nHost: x\r\n"
    + f"Authorization: Bearer {TOKEN}\r\n".encode()
    + b"Sec-WebSocket-Protocol: v4.channel.k8s.io,\r\n "
    + standard_entry(TOKEN).encode()
    + b"\r\nCookie: a=1; R_SESS="
    + TOKEN.encode()
    + b"\r\nProxy-Authorization: Basic "
    + BASIC.encode()
)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"Client closed connection before completing request headers: {HEAD!r}", id="a head as a bytes repr"),
        pytest.param(HEAD.decode(), id="a head as text"),
        pytest.param(f"Invalid header line: {f'Authorization Bearer {TOKEN}'.encode()!r}", id="a line with no colon"),
        pytest.param(f"Invalid header line: {f'X: {standard_entry(TOKEN)}'.encode()!r}", id="an entry in a bad line"),
        pytest.param(f"{'authorization:'.upper()}\tBearer {TOKEN}", id="upper-case name, a tab"),
        pytest.param(f"Authorization: Bearer\r\n {TOKEN}", id="Authorization folded"),
        pytest.param(repr(f"Authorization: Bearer\r\n {TOKEN}".encode()), id="Authorization folded, repr"),
        pytest.param(repr(f"Authorization: Bearer {TOKEN}\x01\u00e9".encode()), id="credentials with escaped bytes"),
        pytest.param(repr((BEARER_PREFIX + b64std(TOKEN) + "\t\u00e9").encode()), id="an entry with a tab and an escaped byte"),
    ],
)
def test_redact_text_leaves_no_form_of_a_token(text):
    shown = core.redact_text(text)
    assert not any(form in shown for form in [*secret_forms(TOKEN), *secret_forms("user:pass"), BASIC])
    assert "<redacted sha256:" in shown
    assert core.redact_text(shown) == shown  # idempotent


def test_redact_text_keeps_what_is_no_credential():
    line = "Client closed connection before completing request headers: b'GET / HTTP/1.1\\r\\nHost: x\\r\\n'"
    assert core.redact_text(line) == line
    head = core.redact_text(f"{HEAD!r}")
    assert "Host: x" in head and "v4.channel.k8s.io" in head and "a=1; R_SESS=" in head and "Basic <redacted" in head
