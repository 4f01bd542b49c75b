"""`explain`: the rule a WebSocket upgrade would match and the request as it would be forwarded.

Pure: one place for `k8s-ws explain` and the `kubews.explain` command. Credentials in the output
are redacted with redact_header_value, as in the flows mitmproxy shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ._decision import Refuse, decide
from ._handshake import Destination, Handshake
from ._headers import Headers, header_values, is_websocket_upgrade
from ._redaction import redact_header_value
from ._rules import Rule, RuleSet, StoredToken
from ._tokens import fingerprint

_SCHEMES = {"https": "https", "wss": "https", "http": "http", "ws": "http"}
_DEFAULT_PORTS = {"https": 443, "http": 80}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class Target:
    """Where a WebSocket URL points."""

    scheme: str  # "https" for wss:// and https://, "http" for ws:// and http://
    host: str
    port: int
    path: str
    query: str

    @property
    def host_header(self) -> str:
        """The Host a browser sends: the port only when it is not the scheme's default."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == _DEFAULT_PORTS[self.scheme] else f"{name}:{self.port}"

    @property
    def request_target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def parse_target(url: str) -> Target:
    """A ws://, wss://, http:// or https:// URL; ValueError saying what is wrong with it."""
    parts = urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"the URL must start with wss://, https://, ws:// or http:// (not {parts.scheme or 'nothing'})")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    port = parts.port or _DEFAULT_PORTS[scheme]  # .port raises ValueError for a bad port
    return Target(scheme, parts.hostname, port, parts.path or "/", parts.query)


def parse_header_lines(lines: list[str]) -> Headers:
    """`Name: value` lines, as given to -H; the error names the line's position, never its value."""
    headers = []
    for position, line in enumerate(lines, 1):
        name, colon, value = line.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header {position} is not of the form 'Name: value'")
        headers.append((name, value.strip(" \t")))
    return tuple(headers)


def upgrade_request(target: Target, headers: Headers) -> Handshake:
    """A WebSocket upgrade to the target with these headers, as the proxy would see it in regular
    or reverse mode: Host, Connection and Upgrade added unless given."""
    given = {name.lower() for name, _ in headers}
    defaults = (("Host", target.host_header), ("Connection", "Upgrade"), ("Upgrade", "websocket"))
    headers = tuple(h for h in defaults if h[0].lower() not in given) + headers
    return Handshake(
        destinations=(Destination(target.host, verified=True),),
        port=target.port,
        path=target.path,
        headers=headers,
        scheme=target.scheme,
        host_header=next(iter(header_values(headers, "Host")), ""),
    )


def describe_rule(rule: Rule, stored: StoredToken | None = None) -> str:
    """A rule on one line; its token only as a fingerprint."""
    fields = [
        f"hosts {', '.join(rule.hosts)}",
        f"paths {', '.join(rule.paths)}" if rule.paths else "paths: every Kubernetes API path",
        f"auth {rule.auth.value}",
        f"authorization {rule.authorization.value}",
        f"user_agent {rule.user_agent}",
        f"origin {rule.origin.value}",
    ]
    if rule.token is not None:
        state = fingerprint(stored) if isinstance(stored, str) else f"cannot be read: {stored}"
        fields.append(f"token {rule.token} ({state})")
    return f"rule '{rule.name}': " + "; ".join(fields)


def describe_rules(ruleset: RuleSet) -> str:
    lines = [f"{len(ruleset.rules)} rules from {ruleset.path}"]
    lines += [f"  {describe_rule(rule, ruleset.stored_token(rule))}" for rule in ruleset.rules]
    return "\n".join(lines)


def render_request(target: Target, headers: Headers) -> list[str]:
    lines = [f"GET {target.request_target} HTTP/1.1"]
    return lines + [f"{name}: {redact_header_value(name, value)}" for name, value in headers]


def explain(ruleset: RuleSet, target: Target, headers: Headers) -> str:
    """Which rule a WebSocket upgrade to target would match, and what would go upstream."""
    request = upgrade_request(target, headers)
    verdict = decide(ruleset, request)
    if verdict is None:
        if not is_websocket_upgrade(request.headers):
            why = "not a WebSocket upgrade (no Upgrade: websocket)"
        else:
            why = f"no rule's hosts and paths match {target.host}:{target.port} {target.path}"
        lines = [f"no rule: {why}", "forwarded unchanged:"]
        forwarded = request.headers
    else:
        lines = [describe_rule(verdict.rule, ruleset.stored_token(verdict.rule))]
        if isinstance(verdict, Refuse):
            return "\n".join([*lines, f"refused with {verdict.status}: {verdict.body.strip()}", "nothing is forwarded"])
        lines += [
            f"does: {', '.join(verdict.actions)}; token {verdict.fingerprint or 'none'}",
            "forwarded as:",
        ]
        forwarded = verdict.headers
    return "\n".join(lines + [f"  {line}" for line in render_request(target, forwarded)])
