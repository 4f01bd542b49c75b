"""`k8s-ws diagnose`: try a WebSocket handshake against a real server in the variants that matter,
say what each got and why, and which rule makes a browser console's handshake work.

Each variant is a rule applied by the core to the handshake a browser console sends (token in a
bearer entry, a Mozilla User-Agent, the console page's Origin), so the rule recommended is exactly
the one whose result was probed. The probing is a raw HTTP/1.1 upgrade over asyncio streams; the
rest is pure and tested as tables.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
from dataclasses import dataclass
from itertools import product

from ._decision import Forward, decide
from ._handshake import Handshake
from ._headers import PROTOCOL_HEADER, Headers, header_elements, header_values
from ._rules import USER_AGENT_KEEP, USER_AGENT_REMOVE, Auth, OriginAction, Rule, RuleSet
from ._tokens import encode_token
from .explain import Target, upgrade_request
from .hints import BODY_SNIPPET, Answer, Hint, Sent, handshake_hint, offered_protocols, transport_hint

BROWSER_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"
#: The page of a browser console: an origin that is never the server's own.
FOREIGN_ORIGIN = "https://console.invalid"
_HEADLAMP_EXEC = ("base64.binary.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
#: What Headlamp offers per endpoint (facts §5); the bearer entry comes on top.
CONSOLE_PROTOCOLS = {"exec": _HEADLAMP_EXEC, "attach": _HEADLAMP_EXEC, "portforward": ("v4.channel.k8s.io",)}
DEFAULT_CONSOLE_PROTOCOLS = ("base64.binary.k8s.io",)  # log, watch
TLS_FIX = "pass --cacert with the server's CA (for Rancher, the certificate-authority-data of its kubeconfig), or --insecure"

_TOKEN_LABELS = {None: "none", Auth.SUBPROTOCOL: "subprotocol", Auth.HEADER: "header"}
_USER_AGENT_LABELS = {USER_AGENT_KEEP: "browser", USER_AGENT_REMOVE: "none"}
_ORIGIN_LABELS = {OriginAction.KEEP: "foreign", OriginAction.MATCH_HOST: "matching", OriginAction.REMOVE: "absent"}


@dataclass(frozen=True)
class Variant:
    """A way to send the handshake, as the rule that turns a browser's handshake into it."""

    auth: Auth | None  # None: no token to place
    user_agent: str  # USER_AGENT_KEEP or USER_AGENT_REMOVE
    origin: OriginAction

    @property
    def rule(self) -> Rule:
        return Rule(
            name="diagnose",
            hosts=("*",),
            auth=self.auth or Auth.SUBPROTOCOL,
            user_agent=self.user_agent,
            origin=self.origin,
        )

    @property
    def changes(self) -> int:
        """How many settings differ from what a browser sends."""
        return (self.auth is Auth.HEADER) + (self.user_agent != USER_AGENT_KEEP) + (self.origin is not OriginAction.KEEP)

    @property
    def labels(self) -> tuple[str, str, str]:
        return _TOKEN_LABELS[self.auth], _USER_AGENT_LABELS[self.user_agent], _ORIGIN_LABELS[self.origin]

    def __str__(self) -> str:
        token, user_agent, origin = self.labels
        return f"token {'in ' + token if self.auth else token}, User-Agent {user_agent}, Origin {origin}"


def variants(with_token: bool) -> list[Variant]:
    """Every variant, in table order: the browser's own handshake first."""
    auths = (Auth.SUBPROTOCOL, Auth.HEADER) if with_token else (None,)
    user_agents = (USER_AGENT_KEEP, USER_AGENT_REMOVE)
    origins = (OriginAction.KEEP, OriginAction.MATCH_HOST, OriginAction.REMOVE)
    return [Variant(a, u, o) for a, u, o in product(auths, user_agents, origins)]


def console_handshake(target: Target, token: str | None) -> Handshake:
    """The upgrade a browser console sends to target."""
    endpoint = target.path.rstrip("/").rpartition("/")[2]
    protocols = list(CONSOLE_PROTOCOLS.get(endpoint, DEFAULT_CONSOLE_PROTOCOLS))
    if token is not None:
        protocols.append(encode_token(token))
    headers = (
        ("User-Agent", BROWSER_USER_AGENT),
        ("Origin", FOREIGN_ORIGIN),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", base64.b64encode(os.urandom(16)).decode()),
        (PROTOCOL_HEADER, ", ".join(protocols)),
    )
    return upgrade_request(target, headers)


def variant_headers(variant: Variant, console: Handshake) -> Headers:
    verdict = decide(RuleSet((variant.rule,)), console)
    if not isinstance(verdict, Forward):  # the console handshake is well-formed by construction
        raise AssertionError(f"unexpected verdict for {variant}: {type(verdict).__name__}")
    return verdict.headers


@dataclass(frozen=True)
class Outcome:
    variant: Variant
    status: int | None  # None: no HTTP answer
    protocol: str | None
    hint: Hint | None  # None for a 101 that a browser accepts

    @property
    def worked(self) -> bool:
        return self.status == 101 and self.hint is None

    @property
    def meaning(self) -> str:
        return f"works (protocol {self.protocol or 'none'})" if self.hint is None else self.hint.meaning


def judge(variant: Variant, target: Target, console: Handshake, sent: Headers, answer: Answer) -> Outcome:
    """What a probe's answer means; `sent` are the headers of the variant, `console` the handshake it came from."""
    return Outcome(
        variant,
        answer.status,
        next(iter(header_values(answer.headers, PROTOCOL_HEADER)), None),
        handshake_hint(Sent(target.path, target.query, sent, offered_protocols(console.headers), rule=None), answer),
    )


def unreachable(variant: Variant, error: str) -> Outcome:
    """The outcome of a probe that got no HTTP answer."""
    return Outcome(variant, None, None, transport_hint(error, TLS_FIX) or Hint(f"no answer: {error}"))


def recommended(outcomes: list[Outcome]) -> Variant | None:
    """The variant to make a rule of: of those that worked, the one with fewest changes. Among
    equals, variants() order decides: a changed Origin before a removed User-Agent, match-host
    before remove (a watch needs an Origin)."""
    worked = [o.variant for o in outcomes if o.worked]
    return min(worked, key=lambda v: v.changes) if worked else None


def rule_entry(variant: Variant, target: Target) -> str:
    """The rules.yaml entry that turns a browser console's handshake into the variant."""
    lines = [f"- name: {json.dumps(target.host)}", f"  hosts: [{json.dumps(target.host_header)}]"]
    if variant.auth is not None:
        lines.append(f"  auth: {variant.auth.value}")
    lines += [f"  user_agent: {variant.user_agent}", f"  origin: {variant.origin.value}"]
    return "\n".join(lines)


def root_causes(outcomes: list[Outcome]) -> list[Hint]:
    """When nothing worked: the distinct hints that no rule setting fixes (every setting was tried)."""
    hints = [o.hint for o in outcomes if o.hint is not None]
    causes = [h for h in hints if h.setting is None] or hints
    return list(dict.fromkeys(causes))


def report(target: Target, outcomes: list[Outcome], token_fingerprint: str | None) -> str:
    """The table of outcomes, then the rule that works or what stands in the way."""
    token = f"token {token_fingerprint}" if token_fingerprint else "no token (--token-env VAR or --token-file F)"
    rows = [("#", "token", "User-Agent", "Origin", "status", "what it means")]
    rows += [
        (str(i), *o.variant.labels, str(o.status or "-"), o.meaning) for i, o in enumerate(outcomes, 1)
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = [f"{target.scheme}://{target.host_header}{target.path}, {token}", ""]
    lines += ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)), row[5]]).rstrip() for row in rows]
    lines.append("")
    best = recommended(outcomes)
    if best is not None:
        lines += [f"works: {best}", "rules.yaml entry:", ""]
        lines += [f"  {line}" for line in rule_entry(best, target).splitlines()]
    else:
        lines.append("no variant worked:")
        lines += [f"  {hint}" for hint in root_causes(outcomes)]
    return "\n".join(lines)


# --- probing ----------------------------------------------------------------------------------


class NoAnswer(Exception):
    """The server answered with something other than HTTP/1.1."""


def tls_context(target: Target, cacert: str | None, insecure: bool, cadata: str | None = None) -> ssl.SSLContext | None:
    """cacert: a PEM file; cadata: PEM text (a kubeconfig's certificate-authority-data); neither:
    the system's roots."""
    if target.scheme != "https":
        return None
    context = ssl.create_default_context(cafile=cacert, cadata=cadata)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])  # HTTP/2 cannot carry a 101 (facts §6)
    return context


async def exchange(
    target: Target, headers: Headers, tls: ssl.SSLContext | None, timeout: float
) -> Answer:
    """Send one upgrade request on a new connection; read the answer's head and the start of its body."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            target.host, target.port, ssl=tls, server_hostname=target.host if tls else None
        )
        try:
            lines = [f"GET {target.request_target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers), "", ""]
            writer.write("\r\n".join(lines).encode("utf-8"))
            status, answer_headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            body = None if status == 101 else await _read_body(reader, answer_headers)
            return Answer(status, answer_headers, body)
        finally:
            writer.close()


def _parse_head(head: bytes) -> tuple[int, Headers]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise NoAnswer("the server did not answer with HTTP/1.1")
    headers = tuple((name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines) if name)
    return int(code), headers


async def _read_body(reader: asyncio.StreamReader, headers: Headers) -> bytes:
    """Up to BODY_SNIPPET bytes of the body: by Content-Length, chunks, or until the server closes."""
    if "chunked" in [t.lower() for t in header_elements(headers, "Transfer-Encoding")]:
        body = b""
        while len(body) < BODY_SNIPPET:
            size = int((await reader.readline()).partition(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            body += (await reader.readexactly(size + 2))[:-2]
        return body[:BODY_SNIPPET]
    lengths = header_values(headers, "Content-Length")
    try:
        return await reader.readexactly(min(int(lengths[0]), BODY_SNIPPET)) if lengths else await reader.read(BODY_SNIPPET)
    except asyncio.IncompleteReadError as e:
        return e.partial


async def probe_all(target: Target, token: str | None, tls: ssl.SSLContext | None, timeout: float, progress) -> list[Outcome]:
    """Probe every variant in order, calling progress(index, total, outcome) after each. Stops at the
    first probe without an HTTP answer: the others would meet the same."""
    console = console_handshake(target, token)
    todo = variants(with_token=token is not None)
    outcomes = []
    for index, variant in enumerate(todo, 1):
        headers = variant_headers(variant, console)
        try:
            outcome = judge(variant, target, console, headers, await exchange(target, headers, tls, timeout))
        except TimeoutError:
            outcome = unreachable(variant, f"no answer within {timeout:g} s")
        except asyncio.IncompleteReadError:
            outcome = unreachable(variant, "the server closed the connection without an answer")
        except (OSError, NoAnswer, asyncio.LimitOverrunError, ValueError) as e:
            outcome = unreachable(variant, str(e) or type(e).__name__)
        outcomes.append(outcome)
        progress(index, len(todo), outcome)
        if outcome.status is None:
            break
    return outcomes
