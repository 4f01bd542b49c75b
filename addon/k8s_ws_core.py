"""The sans-IO core of k8s-ws: what to do with a WebSocket handshake, as pure functions.

Nothing here imports mitmproxy or touches the network or the file system. The addon and the
command line turn their inputs into these plain values and apply the decision themselves.
Facts cited as "facts §N" are from shared/spec/protocol-facts.md.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
from dataclasses import dataclass
from fnmatch import translate
from functools import lru_cache

#: The bearer entry's prefix; case-sensitive, as kube-apiserver matches it (facts §1).
BEARER_PREFIX = "base64url.bearer.authorization.k8s.io."

#: Kubernetes API paths, after an optional Rancher (/k8s/clusters/<id>, /k8s/proxy/<id>) or
#: Headlamp (/clusters/<name>) prefix.
K8S_API_PATH = re.compile(r"(?:/k8s/(?:clusters|proxy)/[^/]+|/clusters/[^/]+)?/apis?/")

PROTOCOL_HEADER = "Sec-WebSocket-Protocol"


class Auth(enum.Enum):
    HEADER = "header"
    SUBPROTOCOL = "subprotocol"
    BOTH = "both"


class ClientAuthorization(enum.Enum):
    KEEP = "keep"
    REPLACE = "replace"


class OriginAction(enum.Enum):
    KEEP = "keep"
    REMOVE = "remove"
    MATCH_HOST = "match-host"


#: The two user_agent values that are actions; any other string is the new User-Agent.
USER_AGENT_KEEP = "keep"
USER_AGENT_REMOVE = "remove"


@dataclass(frozen=True)
class TokenSource:
    kind: str  # "env" or "file"
    ref: str  # the variable's name or the file's path

    def __str__(self) -> str:
        return f"{self.kind} {self.ref}"


@dataclass(frozen=True)
class Rule:
    name: str
    hosts: tuple[str, ...]
    paths: tuple[str, ...] | None = None  # None: every Kubernetes API path
    auth: Auth = Auth.HEADER
    authorization: ClientAuthorization = ClientAuthorization.KEEP
    user_agent: str = USER_AGENT_KEEP
    origin: OriginAction = OriginAction.KEEP
    token: TokenSource | None = None


@dataclass(frozen=True)
class Destination:
    """A name the request's destination goes by, and whether it is more than the client's word."""

    name: str
    verified: bool


@dataclass(frozen=True)
class Handshake:
    """What the rules need to know of a request, as plain values."""

    destinations: tuple[Destination, ...]  # names to match the rules' hosts against
    port: int  # the destination port
    path: str  # the request path, query excluded
    headers: tuple[tuple[str, str], ...]  # as received: order, case and repeated lines kept
    scheme: str  # "https" when the upstream connection is TLS, else "http"
    host: str  # the Host header as it goes upstream


@dataclass(frozen=True)
class Forward:
    """Forward the request with these headers."""

    rule: str
    headers: tuple[tuple[str, str], ...]
    actions: tuple[str, ...]  # what was done, for the log
    fingerprint: str | None  # of the token that goes upstream, if any
    # The rule's stored token was injected: it may go only to the destination the rule matched.
    uses_stored_token: bool = False


@dataclass(frozen=True)
class Refuse:
    """Answer the client ourselves; nothing goes upstream."""

    rule: str
    status: int
    reason: str  # never contains a token

    @property
    def body(self) -> str:
        return f"k8s_ws: rule '{self.rule}': {self.reason}\n"


class TokenError(ValueError):
    """A bearer entry or token source that does not hold a usable token. Never quotes the token."""


class _Refusal(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- tokens -----------------------------------------------------------------------------------


def fingerprint(secret: str) -> str:
    """A short, stable name for a secret that can be logged: sha256 and its first 8 hex digits."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:8]


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

    Lenient where real clients differ (facts §5): the base64url alphabet (Gardener, kubectl) or the
    standard one (Headlamp, OpenShift: btoa() output, '+' kept), with or without '=' padding.
    """
    if not encoded:
        return ""
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


# --- headers ----------------------------------------------------------------------------------


def header_values(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


def header_lines(headers: tuple[tuple[str, str], ...]) -> dict[str, list[str]]:
    """The lines of every header by lower-cased name, read in one pass."""
    lines: dict[str, list[str]] = {}
    for key, value in headers:
        lines.setdefault(key.lower(), []).append(value)
    return lines


def header_elements(lines: list[str]) -> list[str]:
    """The comma-separated elements of a header's lines, trimmed, empty ones dropped."""
    return [element.strip(" \t") for line in lines for element in line.split(",") if element.strip(" \t")]


def header_tokens(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    """The comma-separated elements of every line of a header, trimmed, empty ones dropped."""
    return header_elements(header_values(headers, name))


def set_headers(
    headers: tuple[tuple[str, str], ...], replacements: dict[str, list[str]]
) -> tuple[tuple[str, str], ...]:
    """Replace every line of each header in `replacements` with its values (none: remove it).

    The first lines keep their place and spelling; extra values go at the end, in the order of
    `replacements`: the same as a set_header per header, in that order, in one pass.
    """
    remaining = {name.lower(): list(values) for name, values in replacements.items()}
    result = []
    for line in headers:
        pending = remaining.get(line[0].lower())
        if pending is None:
            result.append(line)
        elif pending:
            result.append((line[0], pending.pop(0)))
    for name in replacements:
        result.extend([(name, value) for value in remaining[name.lower()]])
    return tuple(result)


def set_header(
    headers: tuple[tuple[str, str], ...], name: str, values: list[str]
) -> tuple[tuple[str, str], ...]:
    """Replace every line of a header with `values` (none: remove it).

    The first lines keep their place and spelling; extra values go at the end.
    """
    return set_headers(headers, {name: values})


def is_websocket_upgrade(headers: tuple[tuple[str, str], ...]) -> bool:
    return _upgrades_to_websocket(header_values(headers, "Upgrade"))


def _upgrades_to_websocket(upgrade_lines: list[str]) -> bool:
    return any(t.lower() == "websocket" for t in header_elements(upgrade_lines))


# --- rules ------------------------------------------------------------------------------------


#: A host glob: a host name with glob characters, and an optional port (itself a glob).
HOST_GLOB = re.compile(r"[A-Za-z0-9.*?!\[\]_-]+(?P<port>:[0-9*?!\[\]-]+)?")


@lru_cache(maxsize=4096)
def _compiled_host_glob(glob: str):
    """Whether the glob names a port, and the match of its lower-cased form (as fnmatchcase's)."""
    shape = HOST_GLOB.fullmatch(glob)
    return bool(shape and shape["port"]), re.compile(translate(glob.lower())).match


@lru_cache(maxsize=4096)
def _compiled_path_globs(globs: tuple[str, ...]):
    """One match for a rule's path globs: any of them, as fnmatchcase's."""
    return re.compile("|".join(f"(?:{translate(glob)})" for glob in globs)).match


def host_glob_matches(glob: str, name: str, port: int) -> bool:
    """Shell-style, case-insensitive; against "host:port" when the glob names a port."""
    with_port, match = _compiled_host_glob(glob)
    return match((f"{name}:{port}" if with_port else name).lower()) is not None


def is_k8s_api_path(path: str) -> bool:
    return K8S_API_PATH.match(path) is not None


def rule_matches_path(rule: Rule, path: str) -> bool:
    if rule.paths is None:
        return is_k8s_api_path(path)
    return bool(rule.paths) and _compiled_path_globs(rule.paths)(path) is not None


def rule_matches_host(rule: Rule, request: Handshake) -> bool:
    # A stored token goes only where the rule names: never on a name that only the client asserts.
    names = [d.name for d in request.destinations if d.verified or rule.token is None]
    return any(host_glob_matches(g, n, request.port) for g in rule.hosts for n in names)


@dataclass(frozen=True)
class _HostIndex:
    """Which rules may match a destination, so that a request is tried against those only.

    A glob with no '*', '?' or '[' matches only itself (any case): a rule whose host globs are all
    such literals can match only a request whose name, or "name:port", is one of them.
    """

    by_literal: dict[str, tuple[int, ...]]  # lower-cased literal glob -> positions of its rules
    wildcard: tuple[int, ...]  # positions of the rules with at least one wildcard glob


def _build_host_index(rules: tuple[Rule, ...]) -> _HostIndex:
    by_literal: dict[str, list[int]] = {}
    wildcard = []
    for position, rule in enumerate(rules):
        if any(c in glob for glob in rule.hosts for c in "*?["):
            wildcard.append(position)
        else:
            for glob in rule.hosts:
                by_literal.setdefault(glob.lower(), []).append(position)
    return _HostIndex({glob: tuple(positions) for glob, positions in by_literal.items()}, tuple(wildcard))


# The index of the rules decide() was last given: the same tuple, for every request until a reload.
_last_index: tuple[tuple[Rule, ...], _HostIndex] | None = None


def _host_index(rules: tuple[Rule, ...]) -> _HostIndex:
    global _last_index
    if _last_index is None or _last_index[0] is not rules:
        _last_index = (rules, _build_host_index(rules))
    return _last_index[1]


def match_rule(rules: tuple[Rule, ...], request: Handshake, lines: dict[str, list[str]]) -> Rule | None:
    """The first rule that applies to a request, or None. Only WebSocket upgrades ever match.

    `lines`: the request's header_lines, which decide() reads once for this and the rewrite.
    """
    if not _upgrades_to_websocket(lines.get("upgrade", [])):
        return None
    index = _host_index(rules)
    candidates = set(index.wildcard)
    for destination in request.destinations:
        candidates.update(index.by_literal.get(destination.name.lower(), ()))
        candidates.update(index.by_literal.get(f"{destination.name}:{request.port}".lower(), ()))
    for position in sorted(candidates):
        rule = rules[position]
        if rule_matches_path(rule, request.path) and rule_matches_host(rule, request):
            return rule
    return None


def decide(
    rules: tuple[Rule, ...],
    stored_tokens: dict[str, str | TokenError],
    request: Handshake,
) -> Forward | Refuse | None:
    """What to do with a request: None when no rule applies (forward it untouched).

    `stored_tokens` maps a rule's name to the token its `token:` source gave when the rules were
    loaded, or to the error that reading it raised.
    """
    lines = header_lines(request.headers)
    rule = match_rule(rules, request, lines)
    if rule is None:
        return None
    try:
        return _rewrite(rule, stored_tokens.get(rule.name), request, lines)
    except _Refusal as refusal:
        return Refuse(rule.name, refusal.status, refusal.reason)


def _rewrite(rule: Rule, stored: str | TokenError | None, request: Handshake, lines: dict[str, list[str]]) -> Forward:
    # Read once, changed once: the headers read here are none of those changed before reading them.
    changes: dict[str, list[str]] = {}  # header -> its new lines, in the order they were decided
    protocols = header_elements(lines.get(PROTOCOL_HEADER.lower(), []))
    others = [p for p in protocols if not p.startswith(BEARER_PREFIX)]
    entries = [p for p in protocols if p.startswith(BEARER_PREFIX)]
    offered = []
    for position, entry in enumerate(entries, 1):
        try:
            token = decode_token(entry[len(BEARER_PREFIX) :])
        except TokenError as e:
            raise _Refusal(400, f"bearer entry {position} in {PROTOCOL_HEADER} does not decode: {e}")
        if token:  # an entry with an empty token counts as no token (facts §1)
            offered.append(token)
    if len(offered) > 1:
        raise _Refusal(400, f"{len(offered)} bearer entries in {PROTOCOL_HEADER}; at most one is allowed")
    if entries and not others and rule.auth is Auth.HEADER:
        raise _Refusal(
            400,
            f"no other protocol left in {PROTOCOL_HEADER} once the bearer entry is removed "
            "(the server must have one to answer with)",
        )

    token = offered[0] if offered else None
    client_authorization = lines.get("authorization", [])
    actions = []
    injected = None
    if token is None and not client_authorization and rule.token is not None:
        if not isinstance(stored, str):
            raise _Refusal(500, f"the token source ({rule.token}) cannot be read: {stored}")
        injected = stored

    if rule.auth is Auth.SUBPROTOCOL:
        if injected is not None:
            changes[PROTOCOL_HEADER] = [", ".join([*others, encode_token(injected)])]
            actions.append("token injected as bearer entry")
        elif token is not None and client_authorization and rule.authorization is ClientAuthorization.REPLACE:
            changes["Authorization"] = []
            actions.append("client Authorization removed, bearer entry kept")
        elif token is not None:
            actions.append("token kept in subprotocol")
    else:
        if rule.auth is Auth.HEADER and entries:
            changes[PROTOCOL_HEADER] = [", ".join(others)]
        if injected is not None:
            changes["Authorization"] = [f"Bearer {injected}"]
            actions.append("token injected as Authorization")
        elif token is not None and client_authorization and rule.authorization is ClientAuthorization.KEEP:
            actions.append("client Authorization kept")
        elif token is not None:
            changes["Authorization"] = [f"Bearer {token}"]
            actions.append(
                "token replaced client Authorization" if client_authorization else "token moved to Authorization"
            )
        if entries:
            actions.append("bearer entry removed" if rule.auth is Auth.HEADER else "bearer entry kept")

    _rewrite_user_agent(rule, lines.get("user-agent", []), changes, actions)
    _rewrite_origin(rule, request, lines.get("origin", []), changes, actions)
    used = injected if injected is not None else token
    return Forward(
        rule=rule.name,
        headers=set_headers(request.headers, changes),
        actions=tuple(actions) or ("nothing to change",),
        fingerprint=fingerprint(used) if used is not None else None,
        uses_stored_token=injected is not None,
    )


def _rewrite_user_agent(rule: Rule, agents: list[str], changes: dict[str, list[str]], actions: list[str]) -> None:
    if rule.user_agent == USER_AGENT_KEEP:
        return
    if rule.user_agent == USER_AGENT_REMOVE:
        if agents:
            actions.append("User-Agent removed")
        changes["User-Agent"] = []
        return
    if agents != [rule.user_agent]:
        actions.append("User-Agent replaced")
    changes["User-Agent"] = [rule.user_agent]


def _rewrite_origin(
    rule: Rule, request: Handshake, origins: list[str], changes: dict[str, list[str]], actions: list[str]
) -> None:
    if not origins or rule.origin is OriginAction.KEEP:
        return
    if rule.origin is OriginAction.REMOVE:
        actions.append("Origin removed")
        changes["Origin"] = []
        return
    matching = f"{request.scheme}://{request.host}"
    if origins != [matching]:
        actions.append("Origin set to match Host")
    changes["Origin"] = [matching]


# --- redaction --------------------------------------------------------------------------------


_REDACTED = re.compile(r"<redacted sha256:[0-9a-f]{8}>")


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


#: Rancher's session cookie, which authenticates like a token (facts §4).
_SESSION_COOKIE = re.compile(r"(?<![^;\s])(R_SESS=)([^;]*)")


def _redact_cookie(match: re.Match) -> str:
    value = match[2].strip()
    return match[1] + _redacted(value) if value else match[0]


def _redact_protocol_element(element: str) -> str:
    stripped = element.strip(" \t")
    if not stripped.startswith(BEARER_PREFIX):
        return element
    encoded = stripped[len(BEARER_PREFIX) :]
    if not encoded:
        return element
    try:
        secret = decode_token(encoded)
    except TokenError:
        secret = encoded  # still a secret, only malformed
    return element.replace(stripped, BEARER_PREFIX + _redacted(secret))
