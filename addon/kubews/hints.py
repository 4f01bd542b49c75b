"""Why a WebSocket handshake failed, and what fixes it: pure functions from what went upstream and
what came back to a hint. Shared by the addon's WARNING lines and `k8s-ws diagnose`.

No mitmproxy import, no I/O. A hint quotes only what cannot be a secret: statuses, known messages
of Rancher and kube-apiserver, identifiers from their error bodies, Origin, Host and protocol names
(a bearer entry is shown as "<bearer entry>"). Facts cited as "facts §N" are from
docs/protocol.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs

from ._headers import PROTOCOL_HEADER, Headers, header_elements, header_values, printable
from ._tokens import BEARER_PREFIX, is_bearer_entry

#: How much of an error body the hints look at.
BODY_SNIPPET = 4096

_CHANNEL_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io", "base64.channel.k8s.io")
#: Protocols kube-apiserver accepts per streaming endpoint (facts §2), for the empty 403.
ENDPOINT_PROTOCOLS = {
    "exec": _CHANNEL_PROTOCOLS,
    "attach": _CHANNEL_PROTOCOLS,
    "portforward": ("v4.channel.k8s.io", "v4.base64.channel.k8s.io"),
    "log": ("binary.k8s.io", "base64.binary.k8s.io"),
}

_RANCHER_CLUSTER = re.compile(r"/k8s/(?:clusters|proxy)/([^/]+)")
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


@dataclass(frozen=True)
class Sent:
    """A handshake as it went upstream. Credentials may be redacted: hints only test their presence."""

    path: str  # query excluded
    query: str
    headers: Headers
    offered: tuple[str, ...]  # the protocols the client itself offered, bearer entries left out
    rule: str | None  # the rule that handled the request; None when no rule did
    # The rule whose stored token was withheld: it matched only a name the client asserts.
    token_withheld_by: str | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Headers
    body: bytes | None  # the start of the body; None when it was not read


@dataclass(frozen=True)
class Hint:
    meaning: str  # what the answer means
    fix: str | None = None
    setting: str | None = None  # the rule setting that fixes it, when a rule can


    def __str__(self) -> str:
        return f"{self.meaning}. Fix: {self.fix}" if self.fix else self.meaning


# --- what went upstream -----------------------------------------------------------------------


def shown_protocols(protocols: list[str] | tuple[str, ...]) -> str:
    """A protocol list for a message, bearer entries masked, and so is any element that holds the
    prefix without being an entry (after a DEL, say): what follows it is a token all the same."""
    if not protocols:
        return "none"
    return ", ".join("<bearer entry>" if BEARER_PREFIX in p else p for p in protocols)


def offered_protocols(headers: Headers) -> tuple[str, ...]:
    """The protocols a request offers, bearer entries left out: what may be told and compared."""
    return tuple(p for p in header_elements(headers, PROTOCOL_HEADER) if not is_bearer_entry(p))


def _protocols(sent: Sent) -> list[str]:
    return header_elements(sent.headers, PROTOCOL_HEADER)


def _has_bearer_entry(sent: Sent) -> bool:
    return any(is_bearer_entry(p) for p in _protocols(sent))


def _has_authorization(sent: Sent) -> bool:
    return bool(header_values(sent.headers, "Authorization"))


def _is_watch(sent: Sent) -> bool:
    return parse_qs(sent.query).get("watch", [""])[0] in ("1", "true")


def _host(sent: Sent) -> str:
    return next(iter(header_values(sent.headers, "Host")), "?")


def _cluster(sent: Sent) -> str | None:
    match = _RANCHER_CLUSTER.match(sent.path)
    return match[1] if match else None


def _by_rule(sent: Sent, meaning: str, setting: str, also: str = "") -> Hint:
    """A hint whose fix is a rule setting, said of the rule that handled the request."""
    if sent.rule is not None:
        fix = f"set {setting} in rule '{sent.rule}'"
    else:
        fix = f"no rule handled this request: add one for {_host(sent)} with {setting}"
    return Hint(meaning, fix + also, setting)


# --- what came back ---------------------------------------------------------------------------


def _body_text(answer: Answer) -> str:
    return (answer.body or b"")[:BODY_SNIPPET].decode("utf-8", "replace")


def _body_fields(answer: Answer) -> dict:
    try:
        fields = json.loads(_body_text(answer))
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def _identifier(fields: dict, name: str) -> str | None:
    """A field such as a Status reason or a Rancher error code: quoted only if it is a bare word."""
    value = fields.get(name)
    return value if isinstance(value, str) and _IDENTIFIER.fullmatch(value) else None


def _is_rancher(answer: Answer) -> bool:
    return bool(header_values(answer.headers, "X-Api-Cattle-Auth"))  # on every Rancher answer (facts §4)


def _known_message(answer: Answer, *messages: str) -> str | None:
    text = _body_text(answer)
    return next((m for m in messages if m in text), None)


# --- the hints --------------------------------------------------------------------------------


def handshake_hint(sent: Sent, answer: Answer) -> Hint | None:
    """What an upstream answer to a WebSocket handshake means; None for a 101 the client accepts."""
    if answer.status == 101:
        return _switched(sent, answer)
    if _body_text(answer).startswith("k8s_ws:"):  # one line that never holds a token (interface §4)
        return Hint(f"a k8s-ws proxy answered itself: {_body_text(answer).splitlines()[0][:300]}")
    specific = _BY_STATUS.get(answer.status)
    return (specific and specific(sent, answer)) or _generic(answer)


def transport_hint(message: str, tls_fix: str) -> Hint | None:
    """What a failure to reach the upstream at all means; `tls_fix` says how this tool trusts a CA."""
    lowered = message.lower()
    if "certificate verify failed" in lowered:
        return Hint("the upstream's TLS certificate is not trusted (a private CA, such as Rancher's own, or a wrong host name)", tls_fix)
    if "connection refused" in lowered or "connect call failed" in lowered:
        return Hint("nothing accepts connections at the upstream's address", "check the host and port")
    return None


def _switched(sent: Sent, answer: Answer) -> Hint | None:
    chosen = next(iter(header_values(answer.headers, PROTOCOL_HEADER)), None)
    # Compared as printed: a record read back from a flow holds the offered protocols printable.
    if chosen and printable(chosen) not in {printable(p) for p in sent.offered}:
        return Hint(
            f"the 101 chose protocol '{shown_protocols([chosen])}', which the client did not offer "
            f"(it offered {shown_protocols(sent.offered)}): a browser fails the connection",
            "whatever answers for the API server must choose one of the offered protocols",
        )
    if not chosen and sent.offered:
        return Hint(
            f"the 101 names no protocol although the client offered {shown_protocols(sent.offered)}: "
            "a browser fails the connection (\"Sent non-empty 'Sec-WebSocket-Protocol' header but no response was received\")",
            "whatever answers for the API server must choose one of the offered protocols",
        )
    return None


def _unauthorized(sent: Sent, answer: Answer) -> Hint:
    rancher = _is_rancher(answer)
    said = _known_message(answer, "must authenticate", "not authorized")
    what = f'401 "{said}"' if said else "401 Unauthorized"
    if rancher and _has_bearer_entry(sent) and not _has_authorization(sent):
        return _by_rule(
            sent,
            f"Rancher found no token ({what}): it reads Authorization only, never the bearer entry in "
            f"{PROTOCOL_HEADER} (rancher/rancher#20153)",
            "auth: header",
        )
    who = "Rancher" if rancher else "the API server"
    if not _has_bearer_entry(sent) and not _has_authorization(sent) and sent.token_withheld_by:
        return Hint(
            f"{who} got no token ({what}): rule '{sent.token_withheld_by}' holds one but withheld it, because "
            f"the host it matched, {_host(sent)}, is only the client's word (its Host header)",
            "a stored token goes only to a destination mitmproxy chose or verified: in transparent or WireGuard "
            "mode, add the upstream's address (or the name its certificate is verified for) to the rule's hosts",
        )
    if not _has_bearer_entry(sent) and not _has_authorization(sent):
        return Hint(
            f"{who} got no token ({what})",
            "the client sent none: log in to the console again, or give the rule a token: {env: VAR} or {file: PATH}",
        )
    if not rancher and _has_bearer_entry(sent) and not offered_protocols(sent.headers):
        return Hint(
            f"the API server refused a bearer entry offered alone ({what}): it needs another protocol to answer with",
            "the client must offer a protocol besides the bearer entry",
        )
    scoped = f", or scoped to a cluster other than '{_cluster(sent)}'" if rancher and _cluster(sent) else ""
    return Hint(
        f"{who} refused the token ({what})",
        f"the token is expired, revoked or wrong{scoped}: log in again, or use a valid token",
    )


def _forbidden(sent: Sent, answer: Answer) -> Hint | None:
    if _known_message(answer, "origin not allowed"):
        origins = ", ".join(header_values(sent.headers, "Origin"))
        return _by_rule(
            sent,
            f"Rancher's origin check refused a browser User-Agent whose Origin ({origins}) is not its Host "
            f'({_host(sent)}) (403 "origin not allowed")',
            "origin: match-host",
            " (or user_agent: remove)",
        )
    if not _body_text(answer).strip():
        if _is_watch(sent) and not header_values(sent.headers, "Origin"):
            return _by_rule(
                sent,
                "kube-apiserver refuses a watch that has no Origin (403, empty body)",
                "origin: match-host",
                " (not remove); a client that sends no Origin cannot watch",
            )
        endpoint = sent.path.rstrip("/").rpartition("/")[2]
        supported = ENDPOINT_PROTOCOLS.get(endpoint)
        return Hint(
            f"the API server supports none of the offered protocols (403, empty body): "
            f"{shown_protocols(_protocols(sent))} went upstream",
            f"{endpoint} takes one of: {', '.join(supported)}" if supported else None,
        )
    if _identifier(_body_fields(answer), "reason") == "Forbidden":
        return Hint(
            "the API server knows the user, but RBAC does not allow this (403 Forbidden)",
            "grant the user the verb on this resource (e.g. create on pods/exec, get on pods/log)",
        )
    return None


def _bad_request(sent: Sent, answer: Answer) -> Hint | None:
    if _known_message(answer, "Upgrade request required"):
        return Hint(
            'the API server got no WebSocket upgrade ("Upgrade request required"): a hop between '
            "k8s-ws and it dropped the Upgrade and Connection headers, or spoke HTTP/2",
            "let WebSockets through every proxy, ingress or load balancer in front of the API server, over HTTP/1.1",
        )
    protocols = _protocols(sent)
    if _is_watch(sent) and len(protocols) > 1:
        meaning = f"a watch takes exactly one protocol, and {len(protocols)} went upstream ({shown_protocols(protocols)}) (400)"
        if _has_bearer_entry(sent):
            return _by_rule(sent, meaning, "auth: header")
        return Hint(meaning, "offer a single protocol on watches")
    return None


def _not_found(sent: Sent, answer: Answer) -> Hint | None:
    if _body_fields(answer).get("kind") == "Status":
        return Hint(
            "the API server has no such object (404 NotFound)",
            "check the namespace, the pod and the resource in the path",
        )
    if _cluster(sent):
        return Hint(
            f"Rancher knows no cluster '{_cluster(sent)}' (404)",
            "check the cluster id in the URL: Rancher's Cluster Management shows it (c-m-..., c-... or local)",
        )
    return None


def _unavailable(sent: Sent, answer: Answer) -> Hint | None:
    if _cluster(sent) or _identifier(_body_fields(answer), "code") == "ClusterUnavailable":
        return Hint(
            f"Rancher's cluster '{_cluster(sent) or '?'}' is not available (503): not provisioned yet, or its agent never connected",
            "wait until the cluster is Active in Rancher's Cluster Management",
        )
    return None


def _bad_gateway(sent: Sent, answer: Answer) -> Hint | None:
    if _body_text(answer).strip():
        return None
    if _cluster(sent) and _is_rancher(answer):
        return Hint(
            f"Rancher cannot reach cluster '{_cluster(sent)}' (502, empty body): the tunnel to its cluster agent is down",
            "check the cluster's cattle-cluster-agent and its connection to Rancher (a plain request to the "
            "cluster answers 500 with the cause)",
        )
    return Hint(
        "a gateway in front of the API server could not reach it (502, empty body): the tunnel to a "
        "downstream cluster is down, or TLS between that gateway and its upstream failed",
        "check the gateway's upstream address and the CA it trusts for it",
    )


def _generic(answer: Answer) -> Hint:
    fields = _body_fields(answer)
    details = [
        f"{name} {value}" for name in ("reason", "code") if (value := _identifier(fields, name))
    ]
    if _is_rancher(answer):
        details.append("from Rancher")
    extra = f" ({', '.join(details)})" if details else ""
    return Hint(f"the upstream answered {answer.status} instead of switching to WebSocket{extra}")


_BY_STATUS = {
    400: _bad_request,
    401: _unauthorized,
    403: _forbidden,
    404: _not_found,
    502: _bad_gateway,
    503: _unavailable,
}
