"""Redaction: header values with every credential replaced by its fingerprint.

Credentials are Authorization and Proxy-Authorization values, bearer entries, and Rancher's
`R_SESS` session cookie, which authenticates like a token (facts §4). A redacted value reads
`<redacted sha256:xxxxxxxx>`, so that tokens can still be told apart.
"""

from __future__ import annotations

import re

from ._headers import PROTOCOL_HEADER, trim
from ._tokens import BEARER_PREFIX, TokenError, bearer_payload, decode_token, fingerprint, is_bearer_entry

_REDACTED = re.compile(r"<redacted sha256:[0-9a-f]{8}>")

#: Rancher's session cookie: a cookie-pair named R_SESS, after the start or a ';' and spaces.
#: Spaces around the name are allowed: Go's net/http trims them (textproto.TrimString), so Rancher
#: reads "R_SESS =x" as its session cookie.
_SESSION_COOKIE = re.compile(r"(?<![^;\s])(R_SESS[ \t]*=)([^;]*)")


def _redacted(secret: str) -> str:
    # Idempotent, so that a flow can be redacted again (or loaded from a file) without harm.
    return secret if _REDACTED.fullmatch(secret) else f"<redacted {fingerprint(secret)}>"


def redact_header_value(name: str, value: str) -> str:
    """The value of one header line with every credential replaced by its fingerprint."""
    lowered = name.lower()
    if lowered in ("authorization", "proxy-authorization"):
        scheme, sep, credentials = value.strip().partition(" ")
        if not sep or _REDACTED.fullmatch(value.strip()):  # no scheme: the whole value is the secret
            return _redacted(value)
        return f"{scheme} {_redacted(credentials.strip())}"
    if lowered == PROTOCOL_HEADER.lower() and BEARER_PREFIX in value:
        return ",".join(_redact_protocol_element(element) for element in value.split(","))
    if lowered == "cookie":
        return _SESSION_COOKIE.sub(_redact_cookie, value)
    return value


def _redact_cookie(match: re.Match) -> str:
    value = match[2].strip()
    return match[1] + _redacted(value) if value else match[0]


def _redact_protocol_element(element: str) -> str:
    stripped = trim(element)  # an element as the upstream reads it, folds and Unicode spaces included
    if not is_bearer_entry(stripped) or not bearer_payload(stripped):  # no entry, or one with no token
        return element
    encoded = bearer_payload(stripped)
    try:
        secret = decode_token(encoded)
    except TokenError:
        secret = encoded  # still a secret, only malformed
    return element.replace(stripped, BEARER_PREFIX + _redacted(secret))


# --- Free text: a request head as mitmproxy quotes it in its own log lines ----------------------
# mitmproxy prints the head of a request it could not finish reading as a bytes repr, b'...',
# where a line break reads "\r\n" (backslash escapes) and a non-ASCII byte "\xNN". A value runs
# to the end of its line, and on across a fold (a break followed by SP or HTAB). Erring towards
# redacting too much: a closing quote or a backslash escape is taken as part of the secret.
_BREAK = r"(?:\\r\\n|\\n|\r\n|\n)"
_NOT_A_BREAK = r"(?:[^\\\r\n]|\\(?!r\\n|n).)"  # any character but a break, escapes included
_CONTINUED = rf"{_BREAK}(?=[ \t]|\\t)"  # a fold: the value goes on
_LINE_VALUE = rf"(?:{_NOT_A_BREAK}|{_CONTINUED})*"
# "Authorization:" and the colon-less "Authorization Bearer ..." of a line mitmproxy cannot parse.
_CREDENTIAL_LINE = re.compile(rf"(?i)((?:proxy-)?authorization(?:[ \t]*:[ \t]*|[ \t]+))({_LINE_VALUE})")
# An entry ends where the upstream's element ends: at a comma or at the end of its line.
_ALREADY_REDACTED = _REDACTED.pattern
_ENTRY_IN_TEXT = re.compile(rf"({re.escape(BEARER_PREFIX)})({_ALREADY_REDACTED}|(?:(?!,){_NOT_A_BREAK}|{_CONTINUED})*)")
# After the start, ';', a space, a quote, the header's ':' or an escaped tab; spaces before '='.
_COOKIE_IN_TEXT = re.compile(
    rf"(?:(?<![^;\s'\":])|(?<=\\t))(R_SESS(?:[ \t]|\\t)*=(?:[ \t]|\\t)*)({_ALREADY_REDACTED}|(?:[^;\s\\]|\\(?!r\\n|n).)*)"
)


def redact_text(text: str) -> str:
    """Free text (a log line quoting a request head, say) with every credential in it replaced:
    the value of each Authorization and Proxy-Authorization line, every bearer entry's token and
    every R_SESS cookie. Reads raw text and the b'...' repr of bytes alike."""
    if not any(marker in text for marker in (BEARER_PREFIX, "R_SESS", "uthorization", "UTHORIZATION")):
        return text  # the common case, and cheap: a log line that quotes no credential
    text = _CREDENTIAL_LINE.sub(_redact_credential_line, text)
    text = _ENTRY_IN_TEXT.sub(lambda m: m[1] + _redacted(m[2]) if m[2] else m[0], text)
    return _COOKIE_IN_TEXT.sub(lambda m: m[1] + _redacted(m[2]) if m[2] else m[0], text)


def _redact_credential_line(match: re.Match) -> str:
    value = match[2]
    if not value.strip():
        return match[0]
    return match[1] + redact_header_value("Authorization", value)
