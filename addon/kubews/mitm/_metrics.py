"""Prometheus metrics, served on `k8s_ws_metrics` (`host:port`; "" is off) (interface §8).

prometheus-client is an optional dependency (`pip install 'k8s-ws[metrics]'`): it is imported
only when the option is set, and setting it without the package is an OptionsError.

Each addon instance has its own registry and HTTP server: the server starts in `running` and
stops in `done`, so that a script reload neither registers the timeseries twice nor keeps the
port. Labels are bounded: a rule's name (from the rules file), a short name from a fixed set
(`Outcome`, `kubews.RefusalCode`, `ReloadResult`), an HTTP status. Never a host, a path, a
cluster id or anything of a token.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from mitmproxy import exceptions


class Outcome(enum.Enum):
    ACCEPTED = "accepted"  # the upstream switched protocols (101)
    REJECTED = "rejected"  # the upstream answered with another status
    REFUSED = "refused"  # k8s-ws answered the client itself
    FAILED = "failed"  # no answer: the upstream connection failed (mitmproxy answers 502)


class ReloadResult(enum.Enum):
    OK = "ok"
    ERROR = "error"


#: The status a failed upstream connection gets from mitmproxy, for the `status` label.
FAILED_STATUS = 502


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, spec: str) -> Endpoint:
        host, sep, port = spec.rpartition(":")
        host = host.strip("[]")  # [::1]:9100
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise exceptions.OptionsError(f"k8s_ws_metrics: expected host:port (e.g. 127.0.0.1:9100), got {spec!r}")
        return cls(host, int(port))


def _prometheus_client() -> Any:
    try:
        import prometheus_client
    except ImportError as e:
        raise exceptions.OptionsError(
            "k8s_ws_metrics needs prometheus-client, which is not installed: pip install 'k8s-ws[metrics]'"
        ) from e
    return prometheus_client


class Metrics:
    """The addon's counters and gauge; does nothing until `configure` is given an endpoint."""

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None
        self._instruments: _Instruments | None = None
        self._server: Any = None
        self._thread: Any = None
        self._streams: dict[str, str] = {}  # client connection id -> the rule of its open stream

    def configure(self, spec: str) -> None:
        """Parse the option; assigned only on success (a bad value keeps the last good one)."""
        endpoint = Endpoint.parse(spec) if spec else None
        if endpoint is None:
            self.endpoint, self._instruments = None, None
            self._streams.clear()
            return
        if self._instruments is None:
            self._instruments = _Instruments.create(_prometheus_client())
        self.endpoint = endpoint

    def start(self) -> None:
        """Serve /metrics (mitmproxy's `running`); restarted when the endpoint changed."""
        self.stop()
        if self.endpoint is None or self._instruments is None:
            return
        try:
            self._server, self._thread = _prometheus_client().start_http_server(
                self.endpoint.port, addr=self.endpoint.host, registry=self._instruments.registry
            )
        except OSError as e:
            raise exceptions.OptionsError(f"k8s_ws_metrics: cannot listen on {self.endpoint.host}:{self.endpoint.port}: {e}") from e

    @property
    def port(self) -> int | None:
        """The port the server listens on (useful with port 0)."""
        return self._server.server_port if self._server else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    # --- what is counted ------------------------------------------------------------------

    def handshake(self, rule: str, outcome: Outcome, status: int) -> None:
        if self._instruments:
            self._instruments.handshakes.labels(rule=rule, outcome=outcome.value, status=str(status)).inc()

    def refusal(self, rule: str, code: str, status: int) -> None:
        """A handshake k8s-ws answered itself: a refusal, and a handshake refused."""
        if self._instruments:
            self._instruments.refusals.labels(rule=rule, reason=code).inc()
            self.handshake(rule, Outcome.REFUSED, status)

    def stream_opened(self, rule: str, connection_id: str) -> None:
        if self._instruments and connection_id not in self._streams:
            self._streams[connection_id] = rule
            self._instruments.streams.labels(rule=rule).inc()

    def stream_closed(self, connection_id: str) -> None:
        rule = self._streams.pop(connection_id, None)
        if rule is not None and self._instruments:
            self._instruments.streams.labels(rule=rule).dec()

    def reload(self, result: ReloadResult) -> None:
        if self._instruments:
            self._instruments.reloads.labels(result=result.value).inc()


@dataclass(frozen=True)
class _Instruments:
    registry: Any
    handshakes: Any
    refusals: Any
    streams: Any
    reloads: Any

    @classmethod
    def create(cls, prometheus_client: Any) -> _Instruments:
        registry = prometheus_client.CollectorRegistry()
        return cls(
            registry=registry,
            handshakes=prometheus_client.Counter(
                "k8s_ws_handshakes", "WebSocket handshakes a rule handled, by outcome and HTTP status.",
                ["rule", "outcome", "status"], registry=registry,
            ),
            refusals=prometheus_client.Counter(
                "k8s_ws_refusals", "Handshakes k8s-ws answered itself, by reason.", ["rule", "reason"], registry=registry,
            ),
            streams=prometheus_client.Gauge(
                "k8s_ws_streams_active", "Open WebSocket streams a rule handled.", ["rule"], registry=registry,
            ),
            reloads=prometheus_client.Counter(
                "k8s_ws_rules_reloads", "Reloads of the rules file, by result.", ["result"], registry=registry,
            ),
        )  # fmt: skip
