"""An independent oracle for the tests of adversarial protocol lists: how the upstream reads a
`Sec-WebSocket-Protocol` header, how the contract says a bearer entry decodes, and so what a rule
under each `auth` must do with a request.

Written from the facts (docs/protocol.md §1, §6: Go's net/textproto and `strings.TrimSpace` in
kube-apiserver) and the contract (interface §4), never from kubews: nothing here imports it, so
that a test compares the code with a second reading, not with itself.
"""

from __future__ import annotations

import base64
import itertools
import re
import string
import sys
import unicodedata
from dataclasses import dataclass

from helpers import BEARER_PREFIX

# --- Go's reading of a header ------------------------------------------------------------------

#: What Go's `strings.TrimSpace` trims: `unicode.IsSpace`, which is '\t', '\n', '\v', '\f', '\r',
#: ' ', U+0085 (NEL), U+00A0 (NBSP) in Latin-1, and above it the White_Space property, which there
#: is exactly Unicode's category Z (Zs, Zl, Zp).
GO_SPACE = "\t\n\v\f\r \x85\xa0" + "".join(
    chr(c) for c in range(0x100, sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp")
)

#: Characters that look like white space, or that Python counts as such, but that Go keeps: the
#: ASCII information separators (Python's str.isspace() is true for them), the zero-width and
#: joiner characters, the BOM, the Mongolian vowel separator (not white space since Unicode 6.3),
#: NUL and DEL.
NOT_GO_SPACE = "\x1c\x1d\x1e\x1f\u200b\u200c\u200d\u2060\ufeff\u180e\x00\x7f"

#: An obs-fold as mitmproxy keeps it inside a value: CRLF, then the next line's leading SP or HTAB.
_FOLD = re.compile(r"\r\n(?=[ \t])")


def go_trim_space(text: str) -> str:
    return text.strip(GO_SPACE)


def go_unfold(value: str) -> str:
    """A header value as Go's textproto reads it (`readContinuedLineSlice`, then `TrimLeft` of the
    value): each line trimmed of SP and HTAB, continuation lines joined with one SP. mitmproxy keeps each continuation as CRLF
    and the line (facts §6); every CRLF in a value it hands over starts one."""
    lines = _FOLD.split(value)
    # The name's line is trimmed with it, so an empty first line leaves no SP at the start.
    return " ".join(line.strip(" \t") for line in lines).lstrip(" \t")


def go_elements(values: list[str]) -> list[str]:
    """kube-apiserver's reading of the protocol lines (facts §1): every line unfolded, split at
    ',', each element trimmed with TrimSpace; empty elements kept, as Go keeps them."""
    return [go_trim_space(element) for value in values for element in go_unfold(value).split(",")]


def go_protocols(values: list[str]) -> list[str]:
    """The elements that name something: RFC 9110 §5.6.1 has a recipient ignore empty ones."""
    return [element for element in go_elements(values) if element]


PROTOCOL_HEADER_NAME = "Sec-WebSocket-Protocol"


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    """A request head as a server receives it (CRLF line ends): its request line, and its header
    lines as (name, value), a continuation line kept in its value as CRLF and the line (as
    mitmproxy keeps it); bytes that are not UTF-8 read as lone surrogates."""
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + "\r\n" + line)
        else:
            name, _, value = line.partition(":")
            headers.append((name, value.strip(" \t")))
    return (lines[0] if lines else ""), headers


def lines_of(headers, name: str) -> list[str]:
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


def is_entry(element: str) -> bool:
    return element.startswith(BEARER_PREFIX)  # case-sensitive (facts §1)


# --- the contract's decoding of a bearer entry (interface §4) ----------------------------------

_URL = frozenset(string.ascii_letters + string.digits + "-_")
_STD = frozenset(string.ascii_letters + string.digits + "+/")


@dataclass(frozen=True)
class Token:
    value: str


REFUSE = "refuse"  # the request is refused (400)
NO_TOKEN = "no token"  # the entry carries no token


def payload_outcomes(payload: str) -> frozenset:
    """What an entry whose part after the prefix is `payload` may mean: a set of REFUSE, NO_TOKEN
    and Token(...). One outcome where the contract decides; two where it is silent (a wrong
    amount of '=' padding, padding alone), so that the tests accept either reading."""
    if payload == "":
        return frozenset({NO_TOKEN})  # "An entry with an empty token counts as no token"
    body = payload.rstrip("=")
    pads = len(payload) - len(body)
    if body == "":
        return frozenset({REFUSE, NO_TOKEN})
    # "base64url or standard alphabet": one or the other, not a mix; anything else does not decode
    if not (set(body) <= _URL or set(body) <= _STD):
        return frozenset({REFUSE})
    if len(body) % 4 == 1:  # no base64 string has this length
        return frozenset({REFUSE})
    needed = -len(body) % 4
    raw = base64.b64decode(body.replace("-", "+").replace("_", "/") + "=" * needed, validate=True)
    try:
        token = raw.decode("utf-8")
    except UnicodeDecodeError:
        outcome = REFUSE  # "The result must be non-empty UTF-8 ..."
    else:
        # "... with no control characters" (Unicode's Cc)
        outcome = Token(token) if token and not any(unicodedata.category(c) == "Cc" for c in token) else REFUSE
    if pads in (0, needed):  # "with or without = padding"
        return frozenset({outcome})
    return frozenset({outcome, REFUSE})


def token_of(payload: str) -> str | None:
    """The token an entry may carry, if any of its readings has one."""
    return next((o.value for o in payload_outcomes(payload) if isinstance(o, Token)), None)


# --- what a rule must do -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    refused: bool
    token: str | None = None  # forwarded: the entry's token, if it carried one


def expected_verdicts(protocol_lines: list[str], auth: str) -> frozenset[Verdict]:
    """Every verdict the contract admits for a request a rule with this `auth` matched (interface
    §4): refused when an entry does not decode, when two carry a token (an empty entry is no
    token), or under `header` when no other protocol is left; else forwarded with the one token."""
    protocols = go_protocols(protocol_lines)
    entries = [p for p in protocols if is_entry(p)]
    others = [p for p in protocols if not is_entry(p)]
    verdicts = set()
    for reading in itertools.product(*(payload_outcomes(e[len(BEARER_PREFIX):]) for e in entries)):
        tokens = [o.value for o in reading if isinstance(o, Token)]
        if REFUSE in reading or len(tokens) > 1 or (entries and not others and auth == "header"):
            verdicts.add(Verdict(refused=True))
        else:
            verdicts.add(Verdict(refused=False, token=tokens[0] if tokens else None))
    return frozenset(verdicts)


def entry_payloads(protocol_lines: list[str]) -> list[str]:
    """The part after the prefix of every entry the upstream reads."""
    return [p[len(BEARER_PREFIX):] for p in go_protocols(protocol_lines) if is_entry(p)]


# --- what must not be shown: the secrets in a header value or in free text ----------------------

#: A secret that the redaction replaced (interface §6).
REDACTED = re.compile(r"<redacted sha256:[0-9a-f]{8}>")
#: Stands for a secret in the residue of an input; no generated value holds it.
SEPARATOR = "\uffff"
#: A run of a malformed payload this long is a piece of someone's token, not a coincidence.
MIN_PIECE = 8
_BLANKS = re.compile(f"[{re.escape(GO_SPACE + NOT_GO_SPACE)}\\s]+")


def payload_secrets(payload: str) -> set[str]:
    """What must not be shown of an entry's payload (or of a credential): the token it decodes to,
    in every form (tests/helpers.py `secret_forms`), and, decoded or not, the payload itself and
    its runs of MIN_PIECE characters or more."""
    from helpers import secret_forms

    found = {piece for piece in _BLANKS.split(payload) if len(piece) >= MIN_PIECE}
    if len(payload) >= MIN_PIECE:
        found.add(payload)
    token = token_of(payload)
    if token is not None:
        found.update(secret_forms(token))
    return found


@dataclass(frozen=True)
class Secrets:
    strings: frozenset[str]  # what must not be shown
    residue: str  # the input, unfolded, with each secret replaced by SEPARATOR: what may be shown

    def longer_than(self, length: int) -> Secrets:
        return Secrets(frozenset(s for s in self.strings if len(s) >= length), self.residue)

    def leaked(self, shown: str) -> list[str]:
        """The secrets in `shown` (a redacted value or text, unfolded) that the residue does not
        also hold: a token that also stands in the clear elsewhere in the input is no leak."""
        shown = REDACTED.sub(SEPARATOR, shown)
        return sorted(s for s in self.strings if s in shown and s not in self.residue)


def protocol_value_secrets(value: str) -> Secrets:
    """The secrets of one Sec-WebSocket-Protocol value: the payloads of the entries the upstream
    reads in it (an element that starts with the prefix once trimmed)."""
    strings, pieces = set(), []
    for piece in go_unfold(value).split(","):
        element = go_trim_space(piece)
        if is_entry(element) and len(element) > len(BEARER_PREFIX):
            strings |= payload_secrets(element[len(BEARER_PREFIX):])
            start = piece.index(element) + len(BEARER_PREFIX)
            piece = piece[:start] + SEPARATOR + piece[start + len(element) - len(BEARER_PREFIX):]
        pieces.append(piece)
    return Secrets(frozenset(strings), ",".join(pieces))


def unfold_text(text: str) -> str:
    """Free text with every line break that a line starting with SP or HTAB continues replaced by
    one SP, as in go_unfold."""
    lines = re.split(r"\r?\n", text)
    logical: list[str] = []
    for line in lines:
        if logical and line[:1] in (" ", "\t"):
            logical[-1] = logical[-1].rstrip(" \t") + " " + line.strip(" \t")
        else:
            logical.append(line)
    return "\n".join(logical)


_CREDENTIAL_LINE = re.compile(r"(?i)^[ \t]*(?:proxy-)?authorization(?:[ \t]*:|[ \t]+)[ \t]*")
_COOKIE_LINE = re.compile(r"(?i)^[ \t]*cookie[ \t]*:")


def cookie_secrets(value: str) -> tuple[set[str], str]:
    """The secrets of a Cookie value: the value of each cookie-pair named R_SESS (RFC 6265 §4.2.1,
    pairs separated by ';'), and the value with them replaced by SEPARATOR."""
    strings, pairs = set(), []
    for pair in value.split(";"):
        name, equals, secret = pair.partition("=")
        if equals and name.strip(" \t") == "R_SESS" and secret.strip(" \t"):
            strings |= payload_secrets(secret.strip(" \t"))
            pair = name + equals + SEPARATOR
        pairs.append(pair)
    return strings, ";".join(pairs)


def head_secrets(text: str) -> Secrets:
    """The secrets in a request head given as text (complete, cut short, or holding lines no
    parser takes): every Authorization and Proxy-Authorization value past its scheme (the whole
    value when it has none), even on a line with no colon; the payload after every occurrence of
    the bearer prefix, up to a comma or the end of its line; every R_SESS cookie's value."""
    strings, lines = set(), []
    for line in unfold_text(text).split("\n"):
        if credential := _CREDENTIAL_LINE.match(line):
            value = line[credential.end():].strip(" \t")
            scheme, blank, rest = value.partition(" ")
            secret = rest.strip(" \t") if blank else value
            if secret:
                strings |= payload_secrets(secret)
                line = line[: credential.end()] + (scheme + " " if blank else "") + SEPARATOR  # the scheme is no secret
        if cookie := _COOKIE_LINE.match(line):
            found, value = cookie_secrets(line[cookie.end():])
            strings |= found
            line = line[: cookie.end()] + value
        out, position = [], 0
        while (found_at := line.find(BEARER_PREFIX, position)) >= 0:
            start = found_at + len(BEARER_PREFIX)
            # to a comma or the end of the line; a bare CR ends it too, as some readers take it
            end = min((i for i in (line.find(",", start), line.find("\r", start)) if i >= 0), default=len(line))
            payload = go_trim_space(line[start:end])
            if payload:
                strings |= payload_secrets(payload)
                out.append(line[position:start] + SEPARATOR)
            else:
                out.append(line[position:end])
            position = end
        lines.append("".join(out) + line[position:])
    return Secrets(frozenset(strings), "\n".join(lines))
