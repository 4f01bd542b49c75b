"""Bearer tokens: the subprotocol entry that carries one, decoding it, and naming it safely.

Kubernetes accepts a token as a `Sec-WebSocket-Protocol` element made of a case-sensitive prefix
and the token in base64url without padding; an entry with nothing after the prefix is no token
(facts §1). Browser consoles differ in the alphabet they encode with (facts §5).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

#: The bearer entry's prefix; case-sensitive, as kube-apiserver matches it.
BEARER_PREFIX = "base64url.bearer.authorization.k8s.io."


class TokenError(ValueError):
    """A bearer entry or token source that does not hold a usable token. Never quotes the token."""


def is_bearer_entry(element: str) -> bool:
    return element.startswith(BEARER_PREFIX)


def bearer_payload(entry: str) -> str:
    """What follows the prefix in a bearer entry: the encoded token."""
    return entry.removeprefix(BEARER_PREFIX)


def fingerprint(secret: str) -> str:
    """A short, stable name for a secret that can be logged: sha256 and its first 8 hex digits."""
    try:
        raw = secret.encode("utf-8", "surrogateescape")  # a header's bytes, as received
    except UnicodeEncodeError:  # a surrogate no byte decodes to: only from text made elsewhere
        raw = secret.encode("utf-8", "surrogatepass")
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:8]


#: Unicode's control characters (category Cc), a set the Unicode stability policy keeps closed.
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")
_URL_ALPHABET = re.compile(r"[-_]")
_STANDARD_ALPHABET = re.compile(r"[+/]")


def check_token(token: str) -> str:
    """Return the token if it can go into an Authorization header; raise TokenError if not."""
    if not token:
        raise TokenError("the token is empty")
    if _CONTROL_CHARACTER.search(token):
        raise TokenError("the token contains control characters")
    return token


def decode_token(encoded: str) -> str:
    """Decode the part of a bearer entry after the prefix. An empty result is no token.

    Lenient where real clients differ: the base64url alphabet (Gardener, kubectl) or the standard
    one (Headlamp, OpenShift: btoa() output, '+' kept), with or without '=' padding (facts §5).
    """
    if not encoded:
        return ""
    if not encoded.isascii():  # base64 is ASCII; b64decode would raise ValueError, not binascii.Error
        raise TokenError("not base64: holds a character outside ASCII")
    unpadded = encoded.rstrip("=")
    if "=" in unpadded or len(encoded) - len(unpadded) > 2:
        raise TokenError("misplaced '=' padding")
    if _URL_ALPHABET.search(unpadded) and _STANDARD_ALPHABET.search(unpadded):
        raise TokenError("mixes the base64url and standard base64 alphabets")
    if len(unpadded) % 4 == 1:
        raise TokenError("truncated base64")
    standard = unpadded.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except binascii.Error as e:
        raise TokenError("not base64") from e
    try:
        token = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError("the decoded token is not UTF-8") from None
    return check_token(token)


def encode_token(token: str) -> str:
    """The bearer entry for a token, as kube-apiserver expects it: base64url without padding."""
    return BEARER_PREFIX + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
