"""How a stream that k8s-ws handled is relayed once its handshake is through.

The addon only needs the handshake. With `k8s_ws_inspect` off (the default), a handled stream is
relayed as raw bytes: no frame parsing, no hook per chunk, nothing of its data kept. With it on,
mitmproxy's WebSocket view and hooks see the messages, and the flow keeps only the latest
`k8s_ws_inspect_history` of them. Streams no rule handled are left to mitmproxy.

What this relies on in mitmproxy 11.0.2:
- proxy/layers/http/__init__.py, HttpStream: `flow.websocket` is set just before the `response`
  hook; `flow_done` then hands the upgraded connection to `websocket.WebsocketLayer` if it is
  still set, else (option `rawtcp`, on by default) to `tcp.TCPLayer`, which does not parse frames.
- proxy/layers/tcp.py, TCPLayer: it makes a TCPFlow of the same client and server connections,
  runs `tcp_start` for it, and then, for every chunk read, appends it to `flow.messages` and runs
  `tcp_message` (a hook through every addon, then `update`, per chunk) only `if self.flow:`;
  otherwise it just sends the chunk on. It tests `if self.flow:` again before `tcp_end`.
- proxy/layers/http/_http1.py, make_pipe: when the server's first frames come in the same read as
  its 101, the first chunk is the rest of h11's buffer, a `bytearray`, which tnetstring (`-w`,
  mitmweb's flow dump) and the content views (the dumper at flow_detail >= 3) refuse.
- addonmanager.py, trigger_event: an addon that raises AddonHalt ends the event's run through
  the chain; the addons after it never see it.
- proxy/layers/websocket.py: every message is appended to `flow.websocket.messages` before the
  `websocket_message` hook, and kept until the flow is dropped (mitmproxy issue #6620).

So a handled stream's TCP flow is made falsy at its `tcp_start` and kept from the addons after
this one: the TCP layer then relays the bytes and nothing else, no chunk lands in a flow that
grows or that anything shows or saves, the first one included.

The same holds in mitmproxy 12.3.1. Whether it still holds is checked when the addon loads
(`missing_internals`): the hand-off in HttpStream.flow_done, TCPLayer's test of a falsy flow and
AddonHalt. When one is gone, the addon says so in one WARNING and leaves every handled stream to
mitmproxy's WebSocket layer, with its history bounded as under `k8s_ws_inspect`: slower, never
broken, and it still loads.
"""

from __future__ import annotations

import inspect
import weakref

from mitmproxy import exceptions, http, tcp


class RelayedTCPFlow(tcp.TCPFlow):
    """The TCP flow of a stream relayed raw: mitmproxy's TCP layer records nothing for a falsy
    flow and runs no hook for it. Never shown nor saved (its flow type is "relayedtcp")."""

    def __bool__(self) -> bool:
        return False


def _connections(flow: http.HTTPFlow | tcp.TCPFlow) -> tuple[str, str]:
    return flow.client_conn.id, flow.server_conn.id


def missing_internals() -> str | None:
    """What the raw relay needs of mitmproxy's internals and does not find, or None."""
    try:
        from mitmproxy.proxy.layers import http as http_layers
        from mitmproxy.proxy.layers import tcp as tcp_layer

        hand_off = inspect.getsource(http_layers.HttpStream.flow_done)
        relay = inspect.getsource(tcp_layer.TCPLayer.relay_messages)
        exceptions.AddonHalt  # noqa: B018 - its presence is what is checked
    except (ImportError, AttributeError, OSError, TypeError) as e:  # OSError: no source to read
        return f"{type(e).__name__}: {e}"
    if "rawtcp" not in hand_off or "TCPLayer" not in hand_off:
        return "HttpStream.flow_done no longer hands an upgrade without a WebSocket layer to TCPLayer"
    if "if self.flow:" not in relay:
        return "TCPLayer no longer relays a falsy flow without recording it"
    return None


class Relay:
    """The relay of handled streams; the addon calls it from mitmproxy's hooks."""

    def __init__(self) -> None:
        # Why the raw relay cannot be used in this mitmproxy (None: it can); set by `probe`.
        self.unavailable: str | None = None
        # Handled upgrades that go to raw relay, until mitmproxy starts the TCP flow of their
        # connections. Weak: an upgrade killed after its `response` hook never starts one.
        self._raw_upgrades: weakref.WeakValueDictionary[tuple[str, str], http.HTTPFlow] = (
            weakref.WeakValueDictionary()
        )

    def probe(self) -> str | None:
        """Check mitmproxy's internals once, when the addon loads; the reason they fall short."""
        self.unavailable = missing_internals()
        return self.unavailable

    def choose(self, flow: http.HTTPFlow, *, inspect: bool, rawtcp: bool) -> str:
        """Choose how a handled upgrade that the upstream accepted (101) is relayed: "raw" or
        "websocket". mitmproxy acts on the choice right after the `response` hook."""
        # Without rawtcp, mitmproxy would close a 101 that has no WebSocket layer.
        if not inspect and rawtcp and self.unavailable is None:
            flow.websocket = None
        if flow.websocket is None:
            self._raw_upgrades[_connections(flow)] = flow
            return "raw"
        return "websocket"

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        if self._raw_upgrades.pop(_connections(flow), None) is not None:
            flow.__class__ = RelayedTCPFlow
            raise exceptions.AddonHalt()  # nothing after this addon sees a flow that stays empty

    @staticmethod
    def bound_history(flow: http.HTTPFlow, history: int) -> None:
        """A handled stream that mitmproxy parses (inspect on, or rawtcp off): keep its latest messages."""
        if flow.websocket is not None:
            excess = len(flow.websocket.messages) - history
            if excess > 0:
                del flow.websocket.messages[:excess]
