"""Property tests (hypothesis) of the sans-IO core over adversarial Sec-WebSocket-Protocol lines
(issue 10): `kubews.decide`, `kubews.header_elements`, `kubews.redact_header_value` and
`kubews.redact_text`.

The inputs are header lines as mitmproxy hands them to the addon (facts §6: a value stripped of
ASCII white space, an obs-fold kept as CRLF and the continuation line; every byte that is not
UTF-8 read as a lone surrogate): folds with SP and HTAB, every character Go's TrimSpace trims and
lookalikes it keeps (U+200B, U+001C...), bearer entries in both alphabets, padded or not, empty,
huge, mangled, with non-ASCII and raw bytes, near-miss prefixes, several entries, several lines.
The expectations come from tests/oracle.py, a second reading written from the facts and the
contract (interface §4, §6), never from kubews.

Run:

    python3 -m pytest tests/test_properties.py                               # CI-sized (the default): 150 examples each
    K8S_WS_HYPOTHESIS=thorough python3 -m pytest tests/test_properties.py    # 100,000 examples per property
    K8S_WS_HYPOTHESIS=20000 python3 -m pytest tests/test_properties.py       # any number

The CI-sized run takes about 12 s on a 2-core machine; the thorough one about two hours (20,000
examples per property took 24 minutes). A number instead of a profile name sets the examples per
property. Failing examples are kept in .pytest_cache/hypothesis and tried first on the next run.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

import kubews as core
import oracle
from helpers import BEARER_PREFIX, UPGRADES, b64std, b64url, fingerprint_of
from kubews import Auth, ClientAuthorization, Destination, Forward, Handshake, OriginAction, Refuse, Rule, RuleSet, TokenSource
from oracle import go_protocols, go_unfold, is_entry, lines_of

# --- profiles ----------------------------------------------------------------------------------

# Hypothesis keeps its example database (failing examples are tried first on the next run) and
# its patches in a directory of its own: in pytest's cache, which git ignores, not in the tree.
set_hypothesis_home_dir(Path(__file__).resolve().parent.parent / ".pytest_cache" / "hypothesis")
_COMMON = dict(
    deadline=None,  # a shared 2-core VM: timing says nothing here
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("k8s-ws-ci", max_examples=150, **_COMMON)
settings.register_profile("k8s-ws-thorough", max_examples=100_000, **_COMMON)
PROFILE_NAME = os.environ.get("K8S_WS_HYPOTHESIS", "ci")
if PROFILE_NAME.isdigit():  # a number of examples per property, e.g. to time a run
    PROFILE = settings(settings.get_profile("k8s-ws-ci"), max_examples=int(PROFILE_NAME))
elif PROFILE_NAME in ("ci", "thorough"):
    PROFILE = settings.get_profile(f"k8s-ws-{PROFILE_NAME}")
else:
    raise pytest.UsageError(f"K8S_WS_HYPOTHESIS={PROFILE_NAME!r}: use 'ci' (the default), 'thorough', or a number of examples")

# The suite's per-test timeout is for the CI-sized run; a longer run takes as long as it takes.
pytestmark = [] if PROFILE_NAME == "ci" else [pytest.mark.timeout(0)]

PROTOCOL = "Sec-WebSocket-Protocol"

# --- the pieces of a header line, as bytes --------------------------------------------------------

FOLD = object()  # where a line ends and a continuation line starts
#: How a continuation line may start once mitmproxy has kept it (it writes CRLF SP; the core also
#: has to read a tab, and more white space, as any recipient does).
FOLDS = [b"\r\n ", b"\r\n\t", b"\r\n \t "]
#: Around elements: every character Go trims (LF only inside a fold), every lookalike it keeps,
#: and single bytes that are not UTF-8 (Latin-1 NBSP and NEL, 0xff, a lead byte alone).
PADDING = [c.encode() for c in oracle.GO_SPACE if c != "\n"] + [c.encode() for c in oracle.NOT_GO_SPACE]
RAW_BYTES = [b"\xa0", b"\x85", b"\xff", b"\xc2", b"\xe3\x80"]
NEAR_MISSES = [
    "Base64url.bearer.authorization.k8s.io.",  # the prefix is case-sensitive
    "base64url.bearer.authorization.k8s.io",  # no dot
    "base64.bearer.authorization.k8s.io.",
    "\u200b" + BEARER_PREFIX,  # Go does not trim U+200B
    "\x1c" + BEARER_PREFIX,  # nor U+001C, which Python's str.strip() would
]
KNOWN_PROTOCOLS = ["v4.channel.k8s.io", "base64.binary.k8s.io", "channel.k8s.io", "v5.channel.k8s.io", "binary.k8s.io"]
#: Characters that break a payload: outside both alphabets, padding, mixed alphabets, non-ASCII.
MANGLERS = ["!", "*", ".", "=", " ", "é", "\xa0", "\u200b", "\x00", "\x7f", "+", "/", "-", "_", "\u3000"]


def no_newline(data: bytes) -> bytes:
    return data.replace(b"\n", b"")


_ATOMS = [*PADDING, *RAW_BYTES, FOLD]
#: Padding around an element, drawn in one go (a draw costs: the CI profile has seconds, not
#: minutes): nothing, one atom, or a short run of them.
padding = st.one_of(
    st.just([]),
    st.sampled_from(_ATOMS).map(lambda atom: [atom]),
    st.lists(st.sampled_from(_ATOMS), min_size=2, max_size=4),
)
#: Text as the addon gets it from mitmproxy: any character, and a lone surrogate only for a byte
#: that was not UTF-8 (surrogateescape: U+DC80..U+DCFF).
_characters = st.characters(exclude_categories=("Cs",), exclude_characters=oracle.SEPARATOR)
_escaped = st.sampled_from(["\udc80", "\udcc2", "\udca0", "\udcff"])
wire_text = st.one_of(
    st.binary(max_size=16).map(lambda data: data.decode("utf-8", "surrogateescape")),
    st.lists(st.one_of(st.text(_characters, max_size=6), _escaped), max_size=3).map("".join),
)
any_text = wire_text
tokens = st.one_of(
    # Rancher's name:key (facts §4), its key of letters and digits
    st.builds(lambda name, key: f"token-{name.hex()}:{base64.b64encode(key).decode().strip('=+/')}",
              st.binary(min_size=3, max_size=3), st.binary(min_size=6, max_size=40)),
    # anything: spaces, controls, non-ASCII (a token is decoded UTF-8: no surrogate)
    st.binary(min_size=1, max_size=24).map(lambda data: data.decode("latin-1")),
    st.text(_characters, min_size=1, max_size=8),
    # bytes whose encodings differ by alphabet ('-_' against '+/')
    st.text(">?~", min_size=3, max_size=12),
)


# Strategies are made once, here: making one inside a composite, on every draw, costs more than
# the draw itself.
_payload_kinds = st.sampled_from(["token"] * 6 + ["mangled"] * 3 + ["empty", "junk", "huge"])
_manglings = st.sampled_from(["insert", "raw byte", "delete", "extra padding", "cut", "fold"])
_encoders = st.sampled_from([b64url, b64std])
_positions = st.integers(0, 2**16)
_manglers = st.sampled_from(MANGLERS)
_raw_bytes = st.sampled_from(RAW_BYTES)
_extra_padding = st.sampled_from([b"=", b"==", b"==="])
_junk = st.binary(max_size=12).map(no_newline)
_element_kinds = st.sampled_from(["entry"] * 4 + ["near miss", "known", "known", "junk", "empty"])
_near_misses = st.sampled_from([prefix.encode() for prefix in NEAR_MISSES])
_known = st.sampled_from([protocol.encode() for protocol in KNOWN_PROTOCOLS])
_junk_protocols = st.one_of(any_text.map(lambda t: no_newline(t.encode("utf-8", "surrogateescape"))), _junk)
_continuation_starts = st.sampled_from([b" ", b"\t", b"  "])
_folds = st.sampled_from(FOLDS)


@st.composite
def payloads(draw) -> list:
    """The part of an entry after its prefix, as pieces (bytes, or FOLD)."""
    kind = draw(_payload_kinds)
    if kind == "empty":
        return []
    if kind == "junk":
        return [draw(_junk)]
    token = draw(tokens)
    if kind == "huge":
        token = (token * (9000 // len(token) + 1))[:9000]
    encoded = draw(_encoders)(token, pad=draw(st.booleans()))
    if kind == "token":
        return [encoded.encode()]
    position = draw(_positions) % (len(encoded) + 1)
    how = draw(_manglings)
    head, tail = encoded[:position].encode(), encoded[position:].encode()
    if how == "insert":
        return [head, draw(_manglers).encode(), tail]
    if how == "raw byte":
        return [head, draw(_raw_bytes), tail]
    if how == "delete":
        return [head, tail[1:]]
    if how == "extra padding":
        return [encoded.encode(), draw(_extra_padding)]
    if how == "cut":
        return [head]
    return [head, FOLD, tail]  # a fold inside the payload: the upstream reads a space there


@st.composite
def elements(draw) -> list:
    kind = draw(_element_kinds)
    if kind == "entry":
        body = [BEARER_PREFIX.encode(), *draw(payloads())]
    elif kind == "near miss":
        body = [draw(_near_misses), *draw(payloads())]
    elif kind == "known":
        body = [draw(_known)]
    elif kind == "junk":
        body = [draw(_junk_protocols)]
    else:
        body = []
    return [*draw(padding), *body, *draw(padding)]


_element_lists = st.lists(elements(), min_size=1, max_size=4)


@st.composite
def raw_value(draw) -> list[bytes]:
    """One header line's value as the client sends it: the line, then its continuation lines
    (each starting with SP or HTAB), without CRLF."""
    pieces = []
    for i, part in enumerate(draw(_element_lists)):
        if i:
            pieces.append(b",")
        pieces.extend(part)
    lines, current = [], b""
    for piece in pieces:
        if piece is FOLD:
            lines.append(current)
            current = draw(_continuation_starts)
        else:
            current += piece
    return [*lines, current]


def as_mitmproxy_keeps_it(lines: list[bytes], folds: list[bytes]) -> str:
    """The value mitmproxy hands over for these raw lines (mitmproxy/net/http/http1/read.py
    `_read_headers`: each line stripped of ASCII white space, continuations joined with CRLF SP),
    with the fold spelled as given, decoded as the addon decodes header bytes."""
    value = lines[0].strip()
    for line, fold in zip(lines[1:], folds, strict=True):
        value += fold + line.strip()
    return value.decode("utf-8", "surrogateescape")


@st.composite
def protocol_values(draw) -> str:
    lines = draw(raw_value())
    folds = [draw(_folds) for _ in lines[1:]]
    return as_mitmproxy_keeps_it(lines, folds)


protocol_names = st.sampled_from([PROTOCOL, "sec-websocket-protocol", "SEC-WEBSOCKET-PROTOCOL"])

# --- requests and rules -----------------------------------------------------------------------

API_PATH = "/k8s/clusters/c-1/api/v1/namespaces/d/pods/p/exec"
RULE_HOST = "rancher.test"


@dataclass(frozen=True)
class Case:
    handshake: Handshake
    ruleset: RuleSet
    auth: str
    replace: bool
    applies: bool  # an upgrade to the rule's host, on a path it matches

    @property
    def protocol_lines(self) -> list[str]:
        return lines_of(self.handshake.headers, PROTOCOL)

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        lines = "\n".join(f"    {name}: {value!r}" for name, value in self.handshake.headers)
        return f"Case(auth={self.auth}, replace={self.replace}, applies={self.applies}, path={self.handshake.path!r}\n{lines})"


def ruleset(auth: str, replace: bool) -> RuleSet:
    authorization = ClientAuthorization.REPLACE if replace else ClientAuthorization.KEEP
    return RuleSet((Rule(name="fuzz", hosts=(RULE_HOST,), auth=Auth(auth), authorization=authorization),))


_upgrades = st.sampled_from([param.values for param in UPGRADES] + [(["websocket"], True)] * 6)
_hosts = st.sampled_from([RULE_HOST] * 5 + ["elsewhere.test"])
_paths = st.sampled_from([API_PATH] * 5 + ["/healthz", "/k8s/clusters/c-1/v1/namespaces/d/pods/p/exec"])
_auths = st.sampled_from(["header", "header", "both", "subprotocol"])
_client_authorizations = st.sampled_from([[]] * 3 + [["Bearer client-own-credential"], ["Basic dXNlcjpwYXNz", "Bearer second-line"]])
_folded_others = st.sampled_from([None, None, "a,\r\n b", "\r\n c", "d\r\n\t e"])
_protocol_lines = st.lists(st.tuples(protocol_names, protocol_values(), st.booleans()), max_size=3)


@st.composite
def cases(draw) -> Case:
    upgrade_lines, is_upgrade = draw(_upgrades)
    host, path, auth, replace = draw(_hosts), draw(_paths), draw(_auths), draw(st.booleans())
    headers = [("Host", host), ("Connection", "Upgrade"), *(("Upgrade", line) for line in upgrade_lines)]
    headers += [("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
    headers += [("Authorization", value) for value in draw(_client_authorizations)]
    if folded := draw(_folded_others):
        headers.append(("X-Folded", folded))
    for name, value, between in draw(_protocol_lines):
        if between:
            headers.append(("X-Between", "1"))
        headers.append((name, value))
    request = Handshake(
        destinations=(Destination(host, verified=True),),
        port=443,
        path=path,
        headers=tuple(headers),
        scheme="https",
        host_header=host,
    )
    return Case(request, ruleset(auth, replace), auth, replace, applies=is_upgrade and host == RULE_HOST and path == API_PATH)


def all_secrets(values: list[str]) -> oracle.Secrets:
    found = [oracle.protocol_value_secrets(value) for value in values]
    return oracle.Secrets(frozenset().union(*(s.strings for s in found)), "\n".join(s.residue for s in found))


# --- decide -----------------------------------------------------------------------------------

ENTRY = BEARER_PREFIX + b64url("secret-token")


def issue_10(protocols: str) -> Case:
    """A handshake of issue 10's reproductions: H and this Sec-WebSocket-Protocol value."""
    headers = (("Upgrade", "websocket"), (PROTOCOL, protocols))
    return Case(Handshake((Destination(RULE_HOST, True),), 443, API_PATH, headers, "https", RULE_HOST), ruleset("header", False),
                "header", False, True)


@PROFILE
@given(cases())
@example(issue_10(f"v4.channel.k8s.io,\r\n {ENTRY}"))  # a folded entry
@example(issue_10(f"v4.channel.k8s.io, {ENTRY[:-2]}\xe9"))  # a non-ASCII byte in the entry
@example(issue_10(f"v4.channel.k8s.io\udcff, {ENTRY}"))  # a byte that is not UTF-8 beside it
def test_decide_does_what_the_contract_says_with_any_protocol_list(case):
    verdict = core.decide(case.ruleset, case.handshake)
    if not case.applies:
        assert verdict is None, "a request that is not an upgrade, or that no rule matches, is left alone"
        return
    allowed = oracle.expected_verdicts(case.protocol_lines, case.auth)
    secrets = all_secrets(case.protocol_lines)
    if isinstance(verdict, Refuse):
        assert oracle.Verdict(refused=True) in allowed, f"refused ({verdict.reason}); the contract says {allowed}"
        assert verdict.status == 400
        assert verdict.body.startswith("k8s_ws: rule 'fuzz': ") and verdict.body.count("\n") == 1 and verdict.body.endswith("\n")
        # The body is new text: a secret too short to be told from its words is not looked for.
        assert not secrets.longer_than(oracle.MIN_PIECE).leaked(verdict.body), "the refusal names a token"
        return
    assert isinstance(verdict, Forward), verdict
    forwards = [v for v in allowed if not v.refused]
    assert forwards, f"forwarded; the contract says {allowed}"
    (expected,) = forwards
    sent = verdict.headers

    # Nothing folded, no line break at all, goes upstream.
    assert not [(n, v) for n, v in sent if "\n" in n + v or "\r" in n], "a line break goes upstream"

    # The protocol list as the upstream will read it: under `header` no entry, the others in order.
    offered = go_protocols(case.protocol_lines)
    received = go_protocols(lines_of(sent, PROTOCOL))
    if case.auth == "header":
        assert received == [p for p in offered if not is_entry(p)]  # so no entry is left
    else:
        assert received == offered

    # Authorization: exactly the decoded token where the rule puts it, else the client's own.
    client = lines_of(case.handshake.headers, "Authorization")
    if case.auth == "subprotocol":
        wanted = [] if expected.token is not None and client and case.replace else client
    else:
        wanted = [f"Bearer {expected.token}"] if expected.token is not None and (not client or case.replace) else client
    assert lines_of(sent, "Authorization") == wanted
    if expected.token is not None and not client and case.auth != "subprotocol":
        assert verdict.fingerprint == fingerprint_of(expected.token)

    # Every other line as it came, in order (unfolded).
    def rest(headers):
        return [(n, go_unfold(v)) for n, v in headers if n.lower() not in (PROTOCOL.lower(), "authorization")]

    assert rest(sent) == rest(case.handshake.headers)


any_value = st.lists(
    st.one_of(
        st.sampled_from([BEARER_PREFIX, ",", "\r\n ", "\r\n\t", "\n", "\r", "=", "Bearer ", "R_SESS=", ";", "websocket", "\xa0"]),
        wire_text,
    ),
    max_size=8,
).map("".join)
any_name = st.one_of(
    st.sampled_from([PROTOCOL, "upgrade", "Connection", "Authorization", "Proxy-Authorization", "Cookie", "Origin", "User-Agent", "Host"]),
    st.text(max_size=6),
)
_ANY = dict(hosts=("*",), paths=("*",), token=TokenSource("env", "T"))
RULESETS = [
    ruleset("header", False),
    ruleset("subprotocol", True),
    RuleSet((Rule(name="stored", auth=Auth.BOTH, user_agent="remove", origin=OriginAction.MATCH_HOST, **_ANY),), {"stored": "a-token"}),
    RuleSet((Rule(name="unreadable", user_agent="x/1", origin=OriginAction.REMOVE, **_ANY),), {"unreadable": core.TokenError("unset")}),
]


@PROFILE
@given(st.lists(st.tuples(any_name, any_value), max_size=8), st.sampled_from(range(len(RULESETS))), any_value)
def test_the_core_never_raises_on_any_text(headers, which, text):
    headers = (("Upgrade", "websocket"), *headers)
    request = Handshake((Destination(RULE_HOST, True),), 443, API_PATH, headers, "https", RULE_HOST)
    verdict = core.decide(RULESETS[which], request)
    assert verdict is None or isinstance(verdict, (Forward, Refuse))
    core.header_elements(headers, PROTOCOL)
    for name, value in headers:
        assert isinstance(core.redact_header_value(name, value), str)
    assert isinstance(core.redact_text(text), str)
    assert isinstance(core.redact_text(repr(text.encode("utf-8", "surrogatepass"))), str)


# --- reading the list ---------------------------------------------------------------------------


@PROFILE
@given(st.lists(st.tuples(protocol_names, protocol_values()), min_size=1, max_size=3))
def test_header_elements_are_what_the_upstream_reads(lines):
    assert core.header_elements(tuple(lines), PROTOCOL) == go_protocols([value for _, value in lines])


# --- redaction ---------------------------------------------------------------------------------


@PROFILE
@given(protocol_names, protocol_values())
def test_redacting_a_protocol_line_leaves_no_form_of_a_token(name, value):
    shown = core.redact_header_value(name, value)
    secrets = oracle.protocol_value_secrets(value)
    assert not secrets.leaked(shown) and not secrets.leaked(go_unfold(shown))
    # and changes nothing else: the same protocols, the same number of entries
    before, after = go_protocols([value]), go_protocols([shown])
    assert [p for p in after if not is_entry(p)] == [p for p in before if not is_entry(p)]
    assert len([p for p in after if is_entry(p)]) == len([p for p in before if is_entry(p)])
    assert core.redact_header_value(name, shown) == shown  # a flow can be redacted again


credentials = st.one_of(
    tokens,
    payloads().map(lambda pieces: b"".join(p for p in pieces if p is not FOLD).decode("utf-8", "surrogateescape")),
)


@PROFILE
@given(
    st.sampled_from(["Authorization", "proxy-authorization"]),
    st.sampled_from(["Bearer ", "bearer\t", "Basic ", "Bearer  ", "", "Bearer\r\n "]),
    credentials,
    st.lists(st.sampled_from(["a=1", "R_SESS_OLD=x", "xR_SESS=y", " b = 2 "]), max_size=3),
    st.sampled_from(["R_SESS=", "R_SESS= ", " R_SESS=\t", "R_SESS =", "R_SESS\t="]),  # every way Go's net/http reads it
)
def test_redacting_credentials_leaves_no_form_of_them(name, scheme, credential, cookies, session):
    credential = credential.strip(" \t").replace("\r", "").replace("\n", "")
    value = scheme + credential
    shown = core.redact_header_value(name, value)
    secrets = oracle.head_secrets(f"{name}: {value}")
    assert not secrets.leaked(shown) and not secrets.leaked(oracle.unfold_text(shown))
    cookie = "; ".join([*cookies, session + credential.replace(";", "")])
    shown = core.redact_header_value("Cookie", cookie)
    secrets = oracle.head_secrets(f"Cookie: {cookie}")
    assert not secrets.leaked(shown)


_head_line_kinds = st.lists(st.sampled_from(["protocol", "protocol", "authorization", "cookie", "bad", "other"]), min_size=1, max_size=4)
_colons = st.sampled_from([b": ", b":", b":\t"])
_credential_names = st.sampled_from([b"Authorization", b"AUTHORIZATION", b"Proxy-Authorization"])
_credential_separators = st.sampled_from([b": ", b":\t", b" ", b":"])
_schemes = st.sampled_from([b"Bearer ", b"Basic ", b""])
#: R_SESS as a cookie-pair, spelled every way a Go server reads it (it trims the name).
_session_cookies = st.sampled_from(
    [b"Cookie: a=1; R_SESS=", b"Cookie: R_SESS=", b"Cookie: a=1;R_SESS=", b"Cookie: a=1; R_SESS =", b"Cookie:R_SESS=", b"Cookie:\tR_SESS="]
)
_cookie_tails = st.sampled_from([b"", b"; b=2"])
_other_values = st.binary(max_size=10).map(no_newline)
_cut = st.one_of(st.none(), st.integers(1, 2**16))


def _line_safe(text: str) -> bytes:
    return text.replace("\r", "").replace("\n", "").encode("utf-8", "surrogateescape")


@st.composite
def heads(draw) -> bytes:
    """A request head as a client sends it, possibly cut short (the client hung up), possibly with
    lines no parser takes."""
    lines = [b"GET " + API_PATH.encode() + b" HTTP/1.1", b"Host: x", b"Upgrade: websocket"]
    for kind in draw(_head_line_kinds):
        if kind == "protocol":
            value = draw(raw_value())
            lines.append(draw(protocol_names).encode() + draw(_colons) + value[0])
            lines.extend(value[1:])
        elif kind == "authorization":
            credential = _line_safe(draw(credentials))
            name, separator, scheme = draw(_credential_names), draw(_credential_separators), draw(_schemes)
            if draw(st.booleans()):
                lines += [name + separator + scheme.strip(), b" " + credential]  # folded after the scheme
            else:
                lines.append(name + separator + scheme + credential)
        elif kind == "cookie":
            # A cookie-value has no white space (RFC 6265 §4.1.1; Rancher's are name:key)
            secret = _line_safe("".join(draw(tokens).split())).replace(b";", b"")
            lines.append(draw(_session_cookies) + secret + draw(_cookie_tails))
        elif kind == "bad":
            lines.append(b"X " + BEARER_PREFIX.encode() + b64std(draw(tokens)).encode())  # no colon
        else:
            lines.append(b"X-Other: " + draw(_other_values))
    head = b"\r\n".join(lines) + b"\r\n"
    cut = draw(_cut)
    return head if cut is None else head[: cut % len(head) + 1]


def _shown_as_is_in_a_repr(secret: str) -> bool:
    return secret.isascii() and secret.isprintable() and not any(c in secret for c in "\\'\" ")


@PROFILE
@given(heads())
def test_redact_text_leaves_no_form_of_a_token_in_a_head(head):
    text = head.decode("utf-8", "surrogateescape")
    secrets = oracle.head_secrets(text)
    shown = core.redact_text(text)
    assert not secrets.leaked(shown) and not secrets.leaked(oracle.unfold_text(shown))
    # mitmproxy's line for a client that hung up mid-head (facts §6): the head as a bytes repr
    said = "Client closed connection before completing request headers: "
    line = core.redact_text(f"{said}{head!r}")
    # A secret of printable ASCII reads the same in the repr; the residue is compared as a repr too
    # (an escape such as \x0c holds digits), with mitmproxy's words.
    residue = said + repr(secrets.residue.encode("utf-8", "surrogateescape"))
    visible = oracle.Secrets(frozenset(s for s in secrets.strings if _shown_as_is_in_a_repr(s)), residue)
    assert not visible.leaked(line)


# --- what the properties found ------------------------------------------------------------------

SESSION = "token-sessn:" + "z" * 24  # an R_SESS value (Rancher's session: a token, facts §4)


@pytest.mark.parametrize(
    "redact, shown",
    [
        # Go's readCookies trims the cookie-name (textproto.TrimString), so Rancher takes this one:
        # it shows in flows, -w files and --flow-detail output.
        pytest.param(lambda v: core.redact_header_value("Cookie", v), f"a=1; R_SESS ={SESSION}", id="a space before '=', header value"),
        pytest.param(core.redact_text, f"Cookie: a=1; R_SESS ={SESSION}", id="a space before '=', free text"),
        # mitmproxy's line for a client that hung up mid-head (the header value redaction reads these)
        pytest.param(core.redact_text, repr(f"Cookie:R_SESS={SESSION}".encode()), id="no space after the colon, a bytes repr"),
        pytest.param(core.redact_text, repr(f"Cookie:\tR_SESS={SESSION}".encode()), id="a tab before the name, a bytes repr"),
    ],
)
def test_a_session_cookie_spelled_loosely_is_redacted(redact, shown):
    assert SESSION not in redact(shown)
