"""The addon: mitmproxy's hooks, each handing its flow to the collaborator whose job it is.

- `_options` declares the options; the rules watcher (`_watcher`) holds the rules in force; `_commands` are mitmproxy commands;
- the core (`kubews.decide`) says what to do with a handshake; `_flows` converts both ways;
- the secret keeper (`_secrets`) keeps credentials out of what mitmproxy shows and saves, and the
  log filter (`_logfilter`) out of mitmproxy's own log lines;
- the pins (`_pinning`) keep a stored token on the destination its rule matched;
- the relay (`_relay`) relays accepted streams; `_report` writes log lines and hints;
- `_record` is what the addon keeps on a flow it handled;
- `_tlsbuffers` lets OpenSSL free the buffers of idle TLS connections.

Each flow hook first applies mitmproxy's own guard: a flow that another addon already answered
(`flow.response`), failed or killed (`flow.error`, `not flow.live`) is left alone. Hiding
credentials is the exception: it is never wrong, so it applies to every flow.
"""

from __future__ import annotations

import os

from mitmproxy import ctx, exceptions, http, tcp

from .. import RefusalCode, Refuse, decide, refusal_body, withheld_token
from ..hints import offered_protocols
from ..rulesfile import RulesError
from . import _flows, _options, _record, _report
from ._commands import Commands
from ._logfilter import RedactingFilter
from ._logformat import FORMATS, LogFormat
from ._metrics import FAILED_STATUS, Metrics, Outcome, ReloadResult
from ._pinning import Pins
from ._record import Handled, Stage
from ._relay import Relay
from ._secrets import RevealBeforeSend, SecretKeeper
from ._tlsbuffers import ReleaseTlsBuffers
from ._watcher import RulesWatcher


def _taken(flow: http.HTTPFlow) -> bool:
    """Answered, failed or killed by another addon (or loaded from a file): not ours to change."""
    return bool(flow.response or flow.error or not flow.live)


class K8sWs:
    """Applies the rules to WebSocket upgrades and keeps credentials out of sight."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.log_format = LogFormat(_report.logger)
        self.rules = RulesWatcher(on_reload=lambda ok: self.metrics.reload(ReloadResult.OK if ok else ReloadResult.ERROR))
        self.secrets = SecretKeeper()
        self.pins = Pins()
        self.relay = Relay()
        self._reveal = RevealBeforeSend(self._send)
        self._tls_buffers = ReleaseTlsBuffers()
        self.log_filter = RedactingFilter()
        self._running = False  # between `running` and `done`: a changed metrics endpoint restarts its server
        self.addons = [Commands(self.rules)]  # mitmproxy registers sub-addons and their commands

    # --- options and lifecycle --------------------------------------------------------------

    def load(self, loader) -> None:
        _options.add_options(loader)
        self.log_filter.install()
        unavailable = self.relay.probe()
        if unavailable:
            _report.no_raw_relay(unavailable)

    def configure(self, updated: set[str]) -> None:
        if "k8s_ws_log_format" in updated:  # first: the lines about the rules go where it says
            if ctx.options.k8s_ws_log_format not in FORMATS:  # mitmproxy checks choices only on --set
                raise exceptions.OptionsError(f"k8s_ws_log_format must be one of {', '.join(FORMATS)}")
            self.log_format.use(ctx.options.k8s_ws_log_format)
        if "k8s_ws_metrics" in updated:
            self.metrics.configure(ctx.options.k8s_ws_metrics)
            if self._running:
                self._serve_metrics()
        if "k8s_ws_show_tokens" in updated:
            self.log_filter.enabled = not ctx.options.k8s_ws_show_tokens
        if "k8s_ws_inspect_history" in updated and ctx.options.k8s_ws_inspect_history < 1:
            raise exceptions.OptionsError("k8s_ws_inspect_history must be at least 1")
        if "k8s_ws_rules" in updated:
            try:
                self.rules.load(os.path.expanduser(ctx.options.k8s_ws_rules))
            except RulesError as e:
                raise exceptions.OptionsError(str(e)) from e

    def running(self) -> None:
        # Both run after mitmproxy's own addons: see _secrets.RevealBeforeSend and _tlsbuffers.
        for companion in (self._reveal, self._tls_buffers):
            if companion not in ctx.master.addons.chain:
                ctx.master.addons.add(companion)
        self.rules.start()
        self._running = True
        self._serve_metrics()

    def _serve_metrics(self) -> None:
        try:
            self.metrics.start()
        except exceptions.OptionsError as e:
            _report.metrics_unavailable(e)  # the proxy itself runs on
        else:
            if self.metrics.port is not None:
                _report.metrics_served(self.metrics.endpoint.host, self.metrics.port)

    def done(self) -> None:
        self._running = False
        self.metrics.stop()
        self.log_format.reset()
        self.rules.stop()
        for companion in (self._reveal, self._tls_buffers):
            if companion in ctx.master.addons.chain:
                ctx.master.addons.remove(companion)
        self.secrets.forget_all()
        self.log_filter.uninstall()

    # --- the handshake ----------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        taken = _taken(flow)
        try:
            if not taken:
                self._apply_rules(flow)
            if not ctx.options.k8s_ws_show_tokens:
                self.secrets.hide(flow)
                if taken:
                    self.secrets.forget(flow)  # nothing of it goes upstream from here
        except Exception as e:
            self._fail_closed(flow, e)

    def request(self, flow: http.HTTPFlow) -> None:
        # After a streamed body, the real headers revealed at `requestheaders` are still in.
        self.secrets.rehide(flow)

    def _apply_rules(self, flow: http.HTTPFlow) -> None:
        if self.rules.ruleset is None:
            return
        request = _flows.handshake(flow, ssl_insecure=ctx.options.ssl_insecure)
        verdict = decide(self.rules.ruleset, request)
        withheld = withheld_token(self.rules.ruleset, request)
        if verdict is None:
            if withheld is not None:
                _record.write_withheld(flow, withheld.name)
                _report.token_withheld(flow, withheld.name)
            return
        if isinstance(verdict, Refuse):
            _record.write(flow, Handled(verdict.rule.name, Stage.REFUSED, reason=verdict.reason, status=verdict.status))
            _flows.answer(flow, verdict.status, verdict.body)
            _flows.flag(flow, verdict.body.strip())
            _report.refused(flow, flow.request.host, verdict.rule.name, verdict.status, verdict.reason)
            self.metrics.refusal(verdict.rule.name, verdict.code, verdict.status)
            return
        _record.write(
            flow,
            Handled(
                verdict.rule.name,
                Stage.FORWARDED,
                actions=verdict.actions,
                fingerprint=verdict.fingerprint,
                offered=offered_protocols(request.headers),
                token_withheld_by=withheld and withheld.name,
            ),
        )
        _flows.set_headers(flow.request, verdict.headers)
        if verdict.uses_stored_token:
            self.pins.pin(flow)

    def _send(self, flow: http.HTTPFlow) -> None:
        """The last moment before mitmproxy writes the request upstream: the real credentials go
        back in, unless the request now goes somewhere its stored token must not."""
        try:
            moved_from = self.pins.moved_from(flow)
            if moved_from is None:
                self.secrets.reveal(flow)
                return
            record = _record.read(flow)
            reason = (
                f"the request was redirected to {flow.request.host}:{flow.request.port} after the rule "
                "matched; its stored token is not sent there"
            )
            _record.write(flow, record.replace(stage=Stage.REFUSED, reason=reason, status=500))
            _report.refused(flow, moved_from, record.rule, 500, reason)
            _flows.answer(flow, 500, refusal_body(reason, record.rule))
            _flows.flag(flow, refusal_body(reason, record.rule).strip())
            self.metrics.refusal(record.rule, RefusalCode.REDIRECTED, 500)
            self.secrets.forget(flow)
        except Exception as e:
            self._fail_closed(flow, e)

    def _fail_closed(self, flow: http.HTTPFlow, e: Exception) -> None:
        """Answer 500 rather than let mitmproxy forward a request we may have half changed."""
        _report.internal_error(e)
        record = _record.read(flow)
        reason = f"internal error ({type(e).__name__}); nothing was forwarded"
        _flows.answer(flow, 500, refusal_body(reason, record and record.rule))
        _flows.flag(flow, refusal_body(reason, record and record.rule).strip())
        self.metrics.refusal(record.rule if record else "", RefusalCode.INTERNAL_ERROR, 500)
        if record is not None:
            _record.write(flow, record.replace(stage=Stage.REFUSED, reason=reason, status=500))
        try:
            self.secrets.hide(flow)
            self.secrets.forget(flow)
        except Exception:
            flow.request.headers.fields = ()  # last resort: show nothing rather than a secret

    # --- the answer -------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.secrets.forget(flow)
        if flow.error or not flow.live:
            return
        record = _record.read(flow)
        if record is not None and record.stage is Stage.FORWARDED:
            record = record.replace(
                stage=Stage.ANSWERED,
                status=flow.response.status_code,
                protocol=_report.chosen_protocol(flow.response),
            )
            _record.write(flow, record)
            _report.handled(flow, record)
            outcome = Outcome.ACCEPTED if record.status == 101 else Outcome.REJECTED
            self.metrics.handshake(record.rule, outcome, record.status)

    def error(self, flow: http.HTTPFlow) -> None:
        self.secrets.forget(flow)
        if not flow.live:
            return
        record = _record.read(flow)
        if record is not None and record.stage is Stage.FORWARDED:
            record = record.replace(stage=Stage.FAILED, error=flow.error.msg)
            _record.write(flow, record)
            _report.handled(flow, record)
            self.metrics.handshake(record.rule, Outcome.FAILED, FAILED_STATUS)
        hint = _report.transport_hint(flow)
        if hint and _report.is_hinted(flow, record):
            self._hint(flow, record, "error", hint)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.error or not flow.live:
            return
        record = _record.read(flow)
        if record is not None and record.stage is Stage.ANSWERED and flow.response.status_code == 101:
            relay = self.relay.choose(flow, inspect=ctx.options.k8s_ws_inspect, rawtcp=ctx.options.rawtcp)
            record = record.replace(relay=relay)
            _record.write(flow, record)
            self.metrics.stream_opened(record.rule, flow.client_conn.id)
        if _report.is_hinted(flow, record):
            hint = _report.answer_hint(flow, record)
            if hint:
                self._hint(flow, record, flow.response.status_code, hint)

    @staticmethod
    def _hint(flow: http.HTTPFlow, record: Handled | None, status: int | str, hint) -> None:
        if record is not None:
            _record.write(flow, record.replace(hint=str(hint)))  # for mitmweb and saved flows
        _flows.flag(flow, f"k8s_ws: {hint}")
        _report.failed_handshake(flow, record, status, hint)

    # --- the stream -------------------------------------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if flow.error or not flow.live:
            return
        if _record.read(flow) is not None:
            self.relay.bound_history(flow, ctx.options.k8s_ws_inspect_history)

    def client_disconnected(self, client) -> None:
        # The end of an upgraded connection, whichever layer relayed it (a raw relay's TCP flow
        # runs no hook of its own).
        self.metrics.stream_closed(client.id)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        if flow.error or not flow.live:
            return
        self.relay.tcp_start(flow)
