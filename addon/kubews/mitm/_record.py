"""What the addon keeps on a flow that a rule handled: a typed record with an explicit stage.

It is stored in `flow.metadata["k8s_ws"]` as plain values, so that a flow saved with `-w` keeps
it and mitmweb shows it; `read` and `write` are the only ways in and out. Its strings come from
the client's headers, which may hold bytes that are not UTF-8: they are stored printable, or
tnetstring could not save the flow.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from mitmproxy import http

from .. import printable

KEY = "k8s_ws"


class Stage(enum.Enum):
    REFUSED = "refused"  # k8s-ws answered the client itself; nothing went upstream
    FORWARDED = "forwarded"  # the rewritten handshake went upstream; no answer yet
    ANSWERED = "answered"  # the upstream answered the handshake
    FAILED = "failed"  # the upstream connection failed before an answer


@dataclass(frozen=True)
class Handled:
    rule: str  # the rule's name
    stage: Stage
    reason: str | None = None  # REFUSED: why (never a token)
    actions: tuple[str, ...] = ()  # what the rule did
    fingerprint: str | None = None  # of the token that went upstream
    offered: tuple[str, ...] = ()  # the client's protocols, bearer entries left out: a 101 must choose one
    status: int | None = None  # REFUSED: k8s-ws's answer; ANSWERED: the upstream's
    protocol: str | None = None  # ANSWERED: the protocol the upstream chose, redacted
    error: str | None = None  # FAILED: mitmproxy's message
    relay: str | None = None  # an accepted upgrade: "raw" or "websocket"
    hint: str | None = None  # why the handshake failed, and the fix
    token_withheld_by: str | None = None  # a rule whose stored token was withheld (see kubews.withheld_token)

    def forwarded(self) -> bool:
        return self.stage is not Stage.REFUSED

    def outcome(self) -> str:
        """The upstream's status, or the error that stood for it, for the log."""
        return f"error: {self.error}" if self.stage is Stage.FAILED else str(self.status)

    def replace(self, **changes) -> Handled:
        return dataclasses.replace(self, **changes)


def read(flow: http.HTTPFlow) -> Handled | None:
    """The record of a flow a rule handled; None for any other flow."""
    stored = flow.metadata.get(KEY)
    if not isinstance(stored, dict):
        return None
    try:
        fields = {**stored, "stage": Stage(stored["stage"])}
        fields["actions"] = tuple(stored.get("actions", ()))
        fields["offered"] = tuple(stored.get("offered", ()))
        return Handled(**fields)
    except (KeyError, TypeError, ValueError):
        return None  # not written by this version of k8s-ws: as if no rule had handled it


#: On a flow no rule handled: the rule whose stored token was withheld from it.
WITHHELD_KEY = "k8s_ws_token_withheld_by"


def token_withheld_by(flow: http.HTTPFlow) -> str | None:
    record = read(flow)
    return record.token_withheld_by if record else flow.metadata.get(WITHHELD_KEY)


def write_withheld(flow: http.HTTPFlow, rule: str) -> None:
    """A flow no rule handled, from which a rule's stored token was withheld."""
    flow.metadata[WITHHELD_KEY] = rule


def write(flow: http.HTTPFlow, record: Handled) -> None:
    stored = {name: _storable(value) for name, value in dataclasses.asdict(record).items() if value not in (None, ())}
    stored["stage"] = record.stage.value
    flow.metadata[KEY] = stored


def _storable(value):
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, tuple):
        return [_storable(item) for item in value]
    return value
