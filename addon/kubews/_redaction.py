"""Redaction: header values with every credential replaced by its fingerprint.

Credentials are Authorization and Proxy-Authorization values, bearer entries, and Rancher's
`R_SESS` session cookie, which authenticates like a token (facts §4). A redacted value reads
`<redacted sha256:xxxxxxxx>`, so that tokens can still be told apart.
"""

from __future__ import annotations

import re

from ._headers import PROTOCOL_HEADER
from ._tokens import BEARER_PREFIX, TokenError, bearer_payload, decode_token, fingerprint, is_bearer_entry

_REDACTED = re.compile(r"<redacted sha256:[0-9a-f]{8}>")

#: Rancher's session cookie: a cookie-pair named R_SESS, after the start or a ';' and spaces.
_SESSION_COOKIE = re.compile(r"(?<![^;\s])(R_SESS=)([^;]*)")


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
    stripped = element.strip(" \t")
    if not is_bearer_entry(stripped) or not bearer_payload(stripped):  # no entry, or one with no token
        return element
    encoded = bearer_payload(stripped)
    try:
        secret = decode_token(encoded)
    except TokenError:
        secret = encoded  # still a secret, only malformed
    return element.replace(stripped, BEARER_PREFIX + _redacted(secret))
