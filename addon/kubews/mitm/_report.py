"""The addon's log lines, and the hints for failed handshakes, from flows and their records.

Lines about a request name its path without the query; no line holds a token.
"""

from __future__ import annotations

import logging
import traceback

from mitmproxy import http

from .. import (
    PROTOCOL_HEADER,
    RuleSet,
    TokenError,
    hints,
    is_k8s_api_path,
    is_websocket_upgrade,
    redact_header_value,
    split_target,
)
from ..rulesfile import RulesError
from . import _record
from ._flows import request_path, str_headers
from ._record import Handled, Stage

logger = logging.getLogger("k8s_ws")

#: How mitmproxy is told to trust an upstream's private CA, for the TLS hint.
TLS_FIX = (
    "start mitmproxy with --set ssl_verify_upstream_trusted_ca=FILE, FILE holding the upstream's CA "
    "(for Rancher, the certificate-authority-data of its kubeconfig)"
)


def rules_in_force(ruleset: RuleSet, verb: str) -> None:
    logger.info(f"k8s_ws: {verb} {len(ruleset.rules)} rules from {ruleset.path}")
    for name, token in ruleset.tokens.items():
        if isinstance(token, TokenError):
            logger.warning(f"k8s_ws: rule '{name}': its token source cannot be read: {token}")


def no_raw_relay(reason: str) -> None:
    logger.warning(
        "k8s_ws: this mitmproxy lacks what the raw relay relies on "
        f"({reason}); handled streams go through mitmproxy's WebSocket layer, history bounded "
        "by k8s_ws_inspect_history"
    )


def metrics_served(host: str, port: int) -> None:
    logger.info(f"k8s_ws: metrics at http://{host}:{port}/metrics")


def metrics_unavailable(error: Exception) -> None:
    logger.error(f"k8s_ws: no metrics: {error}")


def rules_broken(error: RulesError, in_force: RuleSet) -> None:
    logger.error(f"{error}\nk8s_ws: keeping the last good rules ({len(in_force.rules)} rules)")


def _fields(flow: http.HTTPFlow, rule: str | None, **more) -> dict:
    """The fields of a line about a request, for `k8s_ws_log_format=json` (`_logformat`)."""
    fields = {"rule": rule, "host": flow.request.host, "path": request_path(flow), **more}
    return {"k8s_ws": {name: value for name, value in fields.items() if value is not None}}


def handled(flow: http.HTTPFlow, record: Handled) -> None:
    """The line for a handshake a rule handled, once the upstream answered (or failed to)."""
    line = (
        f"k8s_ws: rule '{record.rule}' {flow.request.host} {request_path(flow)}: "
        f"{', '.join(record.actions)}; token {record.fingerprint or 'none'}; "
        f"upstream {record.outcome()}, protocol {record.protocol or 'none'}"
    )
    if record.token_withheld_by:
        line += f"; {_withheld(flow, record.token_withheld_by)}"
    fields = _fields(
        flow, record.rule, actions=list(record.actions), token=record.fingerprint,
        status=record.status, protocol=record.protocol,
    )  # fmt: skip
    logger.log(logging.WARNING if record.stage is Stage.FAILED else logging.INFO, line, extra=fields)


def _withheld(flow: http.HTTPFlow, rule: str) -> str:
    return (
        f"the token of rule '{rule}' was withheld: {flow.request.host_header or '?'} is only the client's word "
        "(its Host header), and a stored token goes only to a destination mitmproxy chose or verified"
    )


def token_withheld(flow: http.HTTPFlow, rule: str) -> None:
    """A request no rule handled, from which a rule's stored token was withheld."""
    logger.info(
        f"k8s_ws: {flow.request.host} {request_path(flow)}: no rule applied; {_withheld(flow, rule)}",
        extra=_fields(flow, None, actions=[f"token of rule '{rule}' withheld"]),
    )


def refused(flow: http.HTTPFlow, host: str, rule: str, status: int, reason: str) -> None:
    logger.warning(
        f"k8s_ws: refused {request_path(flow)} on {host} ({status}): rule '{rule}': {reason}",
        extra=_fields(flow, rule, host=host, status=status),
    )


def failed_handshake(flow: http.HTTPFlow, record: Handled | None, status: int | str, hint: hints.Hint) -> None:
    who = f"rule '{record.rule}'" if record else "no rule"
    logger.warning(
        f"k8s_ws: {who} {flow.request.host} {request_path(flow)}: upstream {status}: {hint}",
        extra=_fields(flow, record and record.rule, status=status if isinstance(status, int) else None, hint=str(hint)),
    )


def internal_error(e: Exception) -> None:
    # The exception's message may quote header values: log where it happened, not what it says.
    where = "".join(traceback.format_list(traceback.extract_tb(e.__traceback__)))
    logger.error(f"k8s_ws: internal error ({type(e).__name__}); the request was not forwarded\n{where}")


def is_hinted(flow: http.HTTPFlow, record: Handled | None) -> bool:
    """A handshake whose failure gets a hint: one a rule forwarded, or one on a Kubernetes API
    path that no rule matched."""
    if record is not None:
        return record.forwarded()
    return is_k8s_api_path(request_path(flow)) and is_websocket_upgrade(str_headers(flow.request.headers))


def answer_hint(flow: http.HTTPFlow, record: Handled | None) -> hints.Hint | None:
    """What the upstream's answer to a handshake means, when it means that it failed."""
    headers = str_headers(flow.request.headers)  # redacted by now: hints only test for credentials
    path, query = split_target(flow.request.path)
    sent = hints.Sent(
        path=path,
        query=query,
        headers=headers,
        offered=record.offered if record else hints.offered_protocols(headers),
        rule=record and record.rule,
        token_withheld_by=_record.token_withheld_by(flow),
    )
    body = flow.response.get_content(strict=False)  # None when streamed
    return hints.handshake_hint(sent, hints.Answer(flow.response.status_code, str_headers(flow.response.headers), body))


def transport_hint(flow: http.HTTPFlow) -> hints.Hint | None:
    return flow.error and hints.transport_hint(flow.error.msg, TLS_FIX)


def chosen_protocol(response: http.Response) -> str | None:
    """The protocol a 101 chose, as it may be shown."""
    protocol = response.headers.get(PROTOCOL_HEADER)
    return protocol and redact_header_value(PROTOCOL_HEADER, protocol)
