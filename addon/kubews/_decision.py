"""The decision: what to do with a WebSocket handshake that a rule matched.

A handshake is read once and changed once. Three jobs make the new headers: reading what the
client offered (the bearer entries), placing the credentials where the rule's `auth` says, and
adjusting the headers that give a browser away (User-Agent, Origin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ._handshake import Handshake
from ._headers import PROTOCOL_HEADER, Headers, header_index, is_folded, replace_headers, split_elements, unfold
from ._rules import USER_AGENT_KEEP, USER_AGENT_REMOVE, Auth, ClientAuthorization, OriginAction, Rule, RuleSet, StoredToken
from ._tokens import TokenError, bearer_payload, decode_token, encode_token, fingerprint, is_bearer_entry


def refusal_body(reason: str, rule: str | None = None) -> str:
    """The one line k8s-ws answers a request with when it answers it itself; never holds a token."""
    about = f"rule '{rule}': " if rule else ""
    return f"k8s_ws: {about}{reason}\n"


@dataclass(frozen=True)
class Forward:
    """Forward the request with these headers."""

    rule: Rule
    headers: Headers
    actions: tuple[str, ...]  # what was done, for the log
    fingerprint: str | None  # of the token that goes upstream, if any
    # The rule's stored token was injected: it may go only to the destination the rule matched.
    uses_stored_token: bool = False


class RefusalCode:
    """Why k8s-ws answered a request itself, as a short name from a fixed set: for metrics."""

    SEVERAL_ENTRIES = "several_entries"
    UNDECODABLE_ENTRY = "undecodable_entry"
    NO_OTHER_PROTOCOL = "no_other_protocol"
    TOKEN_SOURCE = "token_source"
    REDIRECTED = "redirected"  # the stored token's destination changed after the rule matched
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Refuse:
    """Answer the client ourselves; nothing goes upstream."""

    rule: Rule
    status: int
    reason: str  # never contains a token
    code: str  # a RefusalCode

    @property
    def body(self) -> str:
        return refusal_body(self.reason, self.rule.name)


class _Refusal(Exception):
    def __init__(self, status: int, code: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


class _Offer(NamedTuple):
    """What the client's protocol list holds."""

    others: list[str]  # the protocols that are not bearer entries, in order
    has_entries: bool  # at least one bearer entry, empty ones included
    token: str | None  # the one token offered


@dataclass(slots=True)
class _Edits:
    """Header changes in the order they were decided, and what they mean for the log."""

    changes: dict[str, list[str]] = field(default_factory=dict)  # header -> its new lines (none: removed)
    actions: list[str] = field(default_factory=list)


def decide(ruleset: RuleSet, request: Handshake) -> Forward | Refuse | None:
    """What to do with a request: None when no rule applies (forward it untouched)."""
    index = header_index(request.headers)
    rule = ruleset.match(request, index.get("upgrade", []))
    if rule is None:
        return None
    edits = _Edits()
    try:
        offer = _read_offer(index.get(PROTOCOL_HEADER.lower(), []))
        used, injected = _place_credentials(rule, ruleset.stored_token(rule), offer, index.get("authorization", []), edits)
    except _Refusal as refusal:
        return Refuse(rule, refusal.status, refusal.reason, refusal.code)
    _adjust_user_agent(rule, index.get("user-agent", []), edits)
    _adjust_origin(rule, request, index.get("origin", []), edits)
    headers = _without_folds(replace_headers(request.headers, edits.changes), edits)
    return Forward(
        rule=rule,
        headers=headers,
        actions=tuple(edits.actions) or ("nothing to change",),
        fingerprint=fingerprint(used) if used is not None else None,
        uses_stored_token=injected,
    )


def _read_offer(protocol_values: list[str]) -> _Offer:
    """The client's protocols and its token; a refusal when the entries are not one clean token."""
    entries, others = [], []
    for protocol in split_elements(protocol_values):
        (entries if is_bearer_entry(protocol) else others).append(protocol)
    offered = []
    for position, entry in enumerate(entries, 1):
        try:
            token = decode_token(bearer_payload(entry))
        except TokenError as e:
            raise _Refusal(
                400, RefusalCode.UNDECODABLE_ENTRY, f"bearer entry {position} in {PROTOCOL_HEADER} does not decode: {e}"
            ) from None
        if token:  # an entry with an empty token counts as no token (facts §1)
            offered.append(token)
    if len(offered) > 1:
        raise _Refusal(400, RefusalCode.SEVERAL_ENTRIES, f"{len(offered)} bearer entries in {PROTOCOL_HEADER}; at most one is allowed")
    return _Offer(others, bool(entries), offered[0] if offered else None)


def _place_credentials(
    rule: Rule, stored: StoredToken | None, offer: _Offer, client_authorization: list[str], edits: _Edits
) -> tuple[str | None, bool]:
    """Put the token where the rule's `auth` says; return the token that goes upstream and whether
    it is the rule's stored one."""
    if offer.has_entries and not offer.others and rule.auth is Auth.HEADER:
        raise _Refusal(
            400,
            RefusalCode.NO_OTHER_PROTOCOL,
            f"no other protocol left in {PROTOCOL_HEADER} once the bearer entry is removed (the server must have one to answer with)",
        )
    injected = _token_to_inject(rule, stored, offer, client_authorization)
    # The client's own Authorization stays when the rule keeps it; otherwise the offered token wins.
    client_keeps = bool(client_authorization) and rule.authorization is ClientAuthorization.KEEP
    if rule.auth is Auth.SUBPROTOCOL:
        _place_in_subprotocol(offer, injected, client_authorization, client_keeps, edits)
    else:
        _place_in_header(rule, offer, injected, client_authorization, client_keeps, edits)
    return (injected if injected is not None else offer.token), injected is not None


def _token_to_inject(rule: Rule, stored: StoredToken | None, offer: _Offer, client_authorization: list[str]) -> str | None:
    """The rule's stored token, when the client sent no credentials of its own."""
    if offer.token is not None or client_authorization or rule.token is None:
        return None
    if not isinstance(stored, str):
        raise _Refusal(500, RefusalCode.TOKEN_SOURCE, f"the token source ({rule.token}) cannot be read: {stored}")
    return stored


def _place_in_subprotocol(offer: _Offer, injected: str | None, client_authorization: list[str], client_keeps: bool, edits: _Edits) -> None:
    if injected is not None:
        edits.changes[PROTOCOL_HEADER] = [", ".join([*offer.others, encode_token(injected)])]
        edits.actions.append("token injected as bearer entry")
    elif offer.token is not None and client_authorization and not client_keeps:
        edits.changes["Authorization"] = []
        edits.actions.append("client Authorization removed, bearer entry kept")
    elif offer.token is not None:
        edits.actions.append("token kept in subprotocol")


def _place_in_header(
    rule: Rule, offer: _Offer, injected: str | None, client_authorization: list[str], client_keeps: bool, edits: _Edits
) -> None:
    """`auth: header` (the bearer entry removed) or `both` (kept)."""
    if rule.auth is Auth.HEADER and offer.has_entries:
        edits.changes[PROTOCOL_HEADER] = [", ".join(offer.others)]
    if injected is not None:
        edits.changes["Authorization"] = [f"Bearer {injected}"]
        edits.actions.append("token injected as Authorization")
    elif offer.token is not None and client_keeps:
        edits.actions.append("client Authorization kept")
    elif offer.token is not None:
        edits.changes["Authorization"] = [f"Bearer {offer.token}"]
        edits.actions.append("token replaced client Authorization" if client_authorization else "token moved to Authorization")
    if offer.has_entries:
        edits.actions.append("bearer entry removed" if rule.auth is Auth.HEADER else "bearer entry kept")


def _without_folds(headers: Headers, edits: _Edits) -> Headers:
    """The headers with every folded line unfolded: what we read is what the upstream gets, and no
    hop after us can read a fold differently (RFC 9112 §5.2 asks a proxy to do this)."""
    if not any(is_folded(value) for _, value in headers):
        return headers
    edits.actions.append("folded header lines unfolded")
    return tuple((name, unfold(value)) for name, value in headers)


def _adjust_user_agent(rule: Rule, agents: list[str], edits: _Edits) -> None:
    if rule.user_agent == USER_AGENT_KEEP:
        return
    if rule.user_agent == USER_AGENT_REMOVE:
        if agents:
            edits.actions.append("User-Agent removed")
        edits.changes["User-Agent"] = []
        return
    if agents != [rule.user_agent]:
        edits.actions.append("User-Agent replaced")
    edits.changes["User-Agent"] = [rule.user_agent]


def _adjust_origin(rule: Rule, request: Handshake, origins: list[str], edits: _Edits) -> None:
    if not origins or rule.origin is OriginAction.KEEP:
        return
    if rule.origin is OriginAction.REMOVE:
        edits.actions.append("Origin removed")
        edits.changes["Origin"] = []
        return
    matching = f"{request.scheme}://{request.host_header}"
    if origins != [matching]:
        edits.actions.append("Origin set to match Host")
    edits.changes["Origin"] = [matching]


def withheld_token(ruleset: RuleSet, request: Handshake) -> Rule | None:
    """The rule whose stored token would have gone upstream, were the destination name it
    matched not only the client's word (the Host header in transparent mode): the token was
    withheld, and the log and the hint for a 401 must say so. None when nothing was withheld."""
    if not ruleset.has_stored_tokens:
        return None  # the shipped rules: no second reading of the headers
    index = header_index(request.headers)
    if index.get("authorization") or any(is_bearer_entry(p) for p in split_elements(index.get(PROTOCOL_HEADER.lower(), []))):
        return None  # the client's own credentials: a stored token would not have been used
    return ruleset.withheld_token_rule(request, index.get("upgrade", []))
