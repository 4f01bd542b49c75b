"""The mitmproxy face of k8s-ws: turns a flow into a call to the core and the answer into edits.

Loaded by `mitmdump -s addon/k8s_ws.py`, which puts addon/ on sys.path: sibling modules are
imported by their k8s_ws_* names, here and in the tests, so each has one identity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
import weakref

from mitmproxy import command, ctx, exceptions, http, tcp
from mitmproxy.net.http import url
from mitmproxy.proxy.mode_specs import RegularMode, ReverseMode, UpstreamMode

import k8s_ws_core as core
import k8s_ws_hints as hints
import k8s_ws_relay
from k8s_ws_explain import describe_rules, explain, parse_header_lines, parse_target
from k8s_ws_rules import RuleSet, RulesError, default_rules_path, load_rules

logger = logging.getLogger("k8s_ws")

#: How often the rules file (and the token files it names) are checked for changes.
RELOAD_POLL_SECONDS = 0.5

#: How mitmproxy is told to trust an upstream's private CA, for the TLS hint.
TLS_FIX = (
    "start mitmproxy with --set ssl_verify_upstream_trusted_ca=FILE, FILE holding the upstream's CA "
    "(for Rancher, the certificate-authority-data of its kubeconfig)"
)

#: Modes in which mitmproxy itself chose the destination from the proxy's own configuration or
#: from where the client asked it to connect; elsewhere (transparent, WireGuard, local...) the
#: Host header and SNI are only the client's word.
_PROXY_CHOSEN_DESTINATION = (RegularMode, ReverseMode, UpstreamMode)


def _str_headers(headers: http.Headers) -> tuple[tuple[str, str], ...]:
    # surrogateescape, as mitmproxy decodes headers: any byte survives the round trip.
    return tuple((k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for k, v in headers.fields)


def _byte_headers(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape")) for k, v in headers)


class _SecretKeeper:
    """Keeps the real credentials of in-flight requests out of the flow that mitmproxy shows.

    A flow holds redacted values, except from the end of the `update` hook that follows its last
    `request` hook (see _RevealBeforeSend) until the upstream's response headers or an error: the
    window in which mitmproxy connects, writes the request upstream, and runs no flow hook.
    """

    def __init__(self) -> None:
        self._real: weakref.WeakKeyDictionary[http.HTTPFlow, dict[tuple[str, str], str]] = (
            weakref.WeakKeyDictionary()
        )

    def hide(self, flow: http.HTTPFlow) -> None:
        secrets = self._real.setdefault(flow, {})
        fields = []
        for name, value in _str_headers(flow.request.headers):
            redacted = core.redact_header_value(name, value)
            if redacted != value:
                secrets[(name.lower(), redacted)] = value
            fields.append((name, redacted))
        flow.request.headers.fields = _byte_headers(tuple(fields))
        if not secrets:
            del self._real[flow]

    def reveal(self, flow: http.HTTPFlow) -> None:
        secrets = self._real.get(flow)
        if secrets:
            flow.request.headers.fields = _byte_headers(
                tuple((n, secrets.get((n.lower(), v), v)) for n, v in _str_headers(flow.request.headers))
            )

    def rehide(self, flow: http.HTTPFlow) -> None:
        if flow in self._real:
            self.hide(flow)

    def forget(self, flow: http.HTTPFlow) -> None:
        """Hide for good: the request has gone upstream, or never will."""
        self.rehide(flow)
        self._real.pop(flow, None)

    def forget_all(self) -> None:
        for flow in list(self._real):
            self.forget(flow)


class _RevealBeforeSend:
    """Added last to mitmproxy's addon chain, so that the real values are back in the request
    only after every other addon (dumper, mitmweb's view, intercept, other scripts) has seen it."""

    name = "k8s_ws_reveal"

    def __init__(self, owner: K8sWs) -> None:
        self.owner = owner
        self._due: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # A streamed request body means mitmproxy sends the headers right after this hook.
        if flow.request.stream:
            self._due.add(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        # An intercepted flow is sent once resumed: keep it redacted while a user looks at it.
        await flow.wait_for_resume()
        self._due.add(flow)

    def update(self, flows) -> None:
        # mitmproxy follows every flow hook with `update` (mitmweb broadcasts the flow then):
        # the end of this chain is the last code that runs before the request is written.
        for flow in flows:
            if flow in self._due:
                self._due.discard(flow)
                self._reveal(flow)

    def _reveal(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return  # answered here: nothing goes upstream
        try:
            if self.owner.destination_moved(flow):
                return
            self.owner.secrets.reveal(flow)
        except Exception as e:
            self.owner.fail_closed(flow, e)


class K8sWs:
    """The addon: applies the rules to WebSocket upgrades and keeps credentials out of sight."""

    def __init__(self) -> None:
        self.ruleset: RuleSet | None = None
        self.secrets = _SecretKeeper()
        # Where a flow carrying a rule's stored token was bound when the rule matched it.
        self._pinned: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[str, str, int]] = weakref.WeakKeyDictionary()
        self.relay = k8s_ws_relay.Relay()
        self._reveal = _RevealBeforeSend(self)
        self._watch_task: asyncio.Task | None = None
        self._watched: tuple | None = None

    # --- options and rules ----------------------------------------------------------------

    def load(self, loader) -> None:
        loader.add_option(
            "k8s_ws_rules", str, str(default_rules_path()), "k8s-ws: path of the rules file."
        )
        loader.add_option(
            "k8s_ws_show_tokens",
            bool,
            False,
            "k8s-ws: show tokens and Authorization values in flows, logs and saved files "
            "(off: they are replaced by their sha256 fingerprint).",
        )
        loader.add_option(
            "k8s_ws_inspect",
            bool,
            False,
            "k8s-ws: let mitmproxy parse and show the messages of the streams a rule handled "
            "(off: they are relayed as raw bytes once the handshake is through, and not kept).",
        )
        loader.add_option(
            "k8s_ws_inspect_history",
            int,
            100,
            "k8s-ws: with k8s_ws_inspect, how many of the latest messages of a handled stream "
            "its flow keeps (at least 1).",
        )

    def configure(self, updated: set[str]) -> None:
        if "k8s_ws_inspect_history" in updated and ctx.options.k8s_ws_inspect_history < 1:
            raise exceptions.OptionsError("k8s_ws_inspect_history must be at least 1")
        if "k8s_ws_rules" in updated:
            try:
                ruleset = load_rules(os.path.expanduser(ctx.options.k8s_ws_rules))
            except RulesError as e:
                raise exceptions.OptionsError(str(e)) from e
            self._use(ruleset, "loaded")

    def running(self) -> None:
        if self._reveal not in ctx.master.addons.chain:
            ctx.master.addons.add(self._reveal)
        if self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_rules())

    def done(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        if self._reveal in ctx.master.addons.chain:
            ctx.master.addons.remove(self._reveal)
        self.secrets.forget_all()

    def _use(self, ruleset: RuleSet, verb: str) -> None:
        self.ruleset = ruleset
        self._watched = _file_states(ruleset.watched_files())
        logger.info(f"k8s_ws: {verb} {len(ruleset.rules)} rules from {ruleset.path}")
        for name, token in ruleset.tokens.items():
            if isinstance(token, core.TokenError):
                logger.warning(f"k8s_ws: rule '{name}': its token source cannot be read: {token}")

    def reload(self) -> None:
        """Re-read the rules; on error, log it and keep the rules in force."""
        assert self.ruleset is not None
        try:
            ruleset = load_rules(self.ruleset.path)
        except RulesError as e:
            self._watched = _file_states(self.ruleset.watched_files())  # report each broken edit once
            logger.error(f"{e}\nk8s_ws: keeping the last good rules ({len(self.ruleset.rules)} rules)")
            return
        self._use(ruleset, "reloaded")

    # --- commands (mitmproxy's console, mitmweb's command bar) --------------------------------

    @command.command("kubews.rules")
    def rules_command(self) -> str:
        """The k8s-ws rules in force."""
        return describe_rules(self.ruleset.path, self.ruleset.rules, self.ruleset.tokens)

    @command.command("kubews.reload")
    def reload_command(self) -> str:
        """Re-read the k8s-ws rules file now."""
        in_force = self.ruleset
        self.reload()
        if self.ruleset is in_force:
            return f"{self.ruleset.path} has errors (see the event log): the last good rules stay in force"
        return f"reloaded {len(self.ruleset.rules)} rules from {self.ruleset.path}"

    @command.command("kubews.explain")
    def explain_command(self, url: str, *headers: str) -> str:
        """The rule a WebSocket upgrade to URL with headers ('Name: value') matches, and the request
        as it would be forwarded, tokens redacted."""
        try:
            target = parse_target(url)
            fields = parse_header_lines(list(headers))
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from e
        return explain(self.ruleset.rules, self.ruleset.tokens, target, fields)

    async def _watch_rules(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL_SECONDS)
            if self.ruleset is not None and _file_states(self.ruleset.watched_files()) != self._watched:
                self.reload()

    # --- flows ------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._handle(flow)
            if not ctx.options.k8s_ws_show_tokens:
                self.secrets.hide(flow)
        except Exception as e:
            self.fail_closed(flow, e)

    def request(self, flow: http.HTTPFlow) -> None:
        # After a streamed body, the real headers revealed at `requestheaders` are still in.
        self.secrets.rehide(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.secrets.forget(flow)
        decision = flow.metadata.get("k8s_ws")
        if decision and "refused" not in decision and "status" not in decision:
            decision["status"] = flow.response.status_code
            protocol = flow.response.headers.get(core.PROTOCOL_HEADER)
            decision["protocol"] = protocol and core.redact_header_value(core.PROTOCOL_HEADER, protocol)
            logger.info(_describe(flow, decision))

    def error(self, flow: http.HTTPFlow) -> None:
        self.secrets.forget(flow)
        decision = flow.metadata.get("k8s_ws")
        if decision and "status" not in decision:
            decision["status"] = f"error: {flow.error.msg}" if flow.error else "error"
            logger.warning(_describe(flow, decision))
        hint = flow.error and hints.transport_hint(flow.error.msg, TLS_FIX)
        if hint and _is_handshake(flow):
            self._warn(flow, "error", hint)

    def response(self, flow: http.HTTPFlow) -> None:
        self.relay.response(flow, inspect=ctx.options.k8s_ws_inspect, rawtcp=ctx.options.rawtcp)
        self._hint_answer(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        self.relay.websocket_message(flow, history=ctx.options.k8s_ws_inspect_history)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self.relay.tcp_start(flow)

    def _handle(self, flow: http.HTTPFlow) -> None:
        if self.ruleset is None:
            return
        request = core.Handshake(
            destinations=_destinations(flow),
            port=flow.request.port,
            path=flow.request.path.partition("?")[0],
            headers=_str_headers(flow.request.headers),
            scheme=flow.request.scheme,
            host=flow.request.host_header or "",
        )
        verdict = core.decide(self.ruleset.rules, self.ruleset.tokens, request)
        if verdict is None:
            return
        flow.metadata["k8s_ws"] = decision = {"rule": verdict.rule}
        if isinstance(verdict, core.Refuse):
            decision.update(refused=verdict.status, reason=verdict.reason)
            self._answer(flow, verdict.status, verdict.body)
            logger.warning(f"k8s_ws: refused {request.path} on {flow.request.host}: {verdict.reason}")
            return
        # what the client offered, tokens left out: a 101 must choose one of these
        decision.update(
            actions=list(verdict.actions),
            fingerprint=verdict.fingerprint,
            offered=list(hints.offered_protocols(request.headers)),
        )
        flow.request.headers.fields = _byte_headers(verdict.headers)
        if verdict.uses_stored_token:
            self._pinned[flow] = _bound_for(flow)

    def destination_moved(self, flow: http.HTTPFlow) -> bool:
        """Refuse a flow with a stored token that another addon (map_remote, a script...) sent
        elsewhere after the rule matched: the token goes only where its rule names."""
        pinned = self._pinned.pop(flow, None)
        if pinned is None or pinned == _bound_for(flow):
            return False
        rule = flow.metadata["k8s_ws"]["rule"]
        reason = f"the request was redirected to {flow.request.host}:{flow.request.port} after the rule matched; its stored token is not sent there"
        flow.metadata["k8s_ws"].update(refused=500, reason=reason)
        logger.warning(f"k8s_ws: refused {flow.request.path.partition('?')[0]} on {pinned[1]}: rule '{rule}': {reason}")
        self._answer(flow, 500, f"k8s_ws: rule '{rule}': {reason}\n")
        self.secrets.forget(flow)
        return True

    def _hint_answer(self, flow: http.HTTPFlow) -> None:
        """A WARNING with a hint when the upstream's answer means the handshake failed."""
        if not _is_handshake(flow):
            return
        decision = flow.metadata.get("k8s_ws")
        headers = _str_headers(flow.request.headers)  # redacted by now: hints only test for credentials
        path, _, query = flow.request.path.partition("?")
        sent = hints.Sent(
            path=path,
            query=query,
            headers=headers,
            offered=tuple(decision["offered"]) if decision else hints.offered_protocols(headers),
            rule=decision and decision["rule"],
        )
        body = flow.response.get_content(strict=False)  # None when streamed
        answer = hints.Answer(flow.response.status_code, _str_headers(flow.response.headers), body)
        hint = hints.handshake_hint(sent, answer)
        if hint:
            self._warn(flow, flow.response.status_code, hint)

    @staticmethod
    def _warn(flow: http.HTTPFlow, status: int | str, hint: hints.Hint) -> None:
        decision = flow.metadata.get("k8s_ws")
        if decision is not None:
            decision["hint"] = str(hint)  # for mitmweb
        who = f"rule '{decision['rule']}'" if decision else "no rule"
        logger.warning(f"k8s_ws: {who} {flow.request.host} {flow.request.path.partition('?')[0]}: upstream {status}: {hint}")

    def fail_closed(self, flow: http.HTTPFlow, e: Exception) -> None:
        """Answer 500 rather than let mitmproxy forward a request we may have half changed."""
        # The exception's message may quote header values: log where it happened, not what it says.
        where = "".join(traceback.format_list(traceback.extract_tb(e.__traceback__)))
        logger.error(f"k8s_ws: internal error ({type(e).__name__}); the request was not forwarded\n{where}")
        rule = (flow.metadata.get("k8s_ws") or {}).get("rule")
        about = f"rule '{rule}': " if rule else ""
        self._answer(flow, 500, f"k8s_ws: {about}internal error ({type(e).__name__}); nothing was forwarded\n")
        try:
            self.secrets.hide(flow)
            self.secrets.forget(flow)
        except Exception:
            flow.request.headers.fields = ()  # last resort: show nothing rather than a secret

    @staticmethod
    def _answer(flow: http.HTTPFlow, status: int, body: str) -> None:
        flow.response = http.Response.make(status, body.encode(), {"Content-Type": "text/plain"})


def _destinations(flow: http.HTTPFlow) -> tuple[core.Destination, ...]:
    # request.host is where mitmproxy connects: the CONNECT or absolute-form target, the
    # reverse-mode upstream, or the original destination address in transparent mode.
    names = [core.Destination(flow.request.host, verified=True)]
    if not isinstance(flow.client_conn.proxy_mode, _PROXY_CHOSEN_DESTINATION):
        if flow.request.scheme == "https" and flow.client_conn.sni:
            # mitmproxy verifies the upstream certificate against this name unless ssl_insecure.
            names.append(core.Destination(flow.client_conn.sni, verified=not ctx.options.ssl_insecure))
        if flow.request.host_header:
            host, _ = url.parse_authority(flow.request.host_header, check=False)
            names.append(core.Destination(host, verified=False))
    return tuple(names)


def _bound_for(flow: http.HTTPFlow) -> tuple[str, str, int]:
    return flow.request.scheme, flow.request.host, flow.request.port


def _is_handshake(flow: http.HTTPFlow) -> bool:
    """A WebSocket handshake that a rule handled and sent upstream, or that no rule matched on a
    Kubernetes API path: the requests whose failures get a hint."""
    decision = flow.metadata.get("k8s_ws")
    if decision is not None:
        return "offered" in decision  # set only when the rule forwarded it
    path = flow.request.path.partition("?")[0]
    return core.is_k8s_api_path(path) and core.is_websocket_upgrade(_str_headers(flow.request.headers))


def _describe(flow: http.HTTPFlow, decision: dict) -> str:
    actions = ", ".join(decision.get("actions", ()))
    token = decision.get("fingerprint") or "none"
    protocol = decision.get("protocol") or "none"
    return (
        f"k8s_ws: rule '{decision['rule']}' {flow.request.host} {flow.request.path.partition('?')[0]}: "
        f"{actions}; token {token}; upstream {decision['status']}, protocol {protocol}"
    )


def _file_states(paths) -> tuple:
    states = []
    for path in paths:
        try:
            st = os.stat(path)
            states.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            states.append((path, None))
    return tuple(states)
