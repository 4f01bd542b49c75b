"""The relay of handled streams, against mitmproxy's own TCP and WebSocket layers.

mitmproxy's proxy layers are sans-IO: `Driver` feeds one of them events and runs the hooks it asks
for through mitmproxy's addon manager, as its connection handler does, so that these tests
exercise the real `tcp.TCPLayer`, `websocket.WebsocketLayer` and addon chain of mitmproxy 11.0.2.
The chain: a recorder for what comes before the addon (core addons, earlier scripts), the addon,
then the dumper at flow_detail 4 and a recorder for what comes after (later scripts, mitmweb's
view, `-w`), which also does to each flow what mitmweb and `-w` do.
"""

import gc
import io

import pytest
import wsproto
import wsproto.events
from mitmproxy import connection, exceptions, hooks, http, tcp
from mitmproxy import flow as mitmproxy_flow
from mitmproxy import io as mitmproxy_io
from mitmproxy.addons import dumper
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import tcp as tcp_layer
from mitmproxy.proxy.layers import websocket as websocket_layer
from mitmproxy.test import taddons, tflow
from mitmproxy.tools.web.app import flow_to_json
from mitmproxy.websocket import WebSocketData

from helpers import TOKEN, base64url_entry
from kubews.mitm import K8sWs

EXEC = "/k8s/clusters/c-m-healthy/api/v1/namespaces/default/pods/p/exec?command=sh&stdin=1"
RULES = """\
rules:
  - name: rancher
    hosts: ["rancher.test"]
    paths: ["/k8s/clusters/*"]
"""


class Recorder:
    """The hooks that reach this place in the chain; and what mitmweb (its flow list, its flow
    dump) and `-w` do with each flow there."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[str, mitmproxy_flow.Flow]] = []
        self.saved = io.BytesIO()

    def hooks(self, flow) -> list[str]:
        return [hook for hook, f in self.seen if f is flow]

    def _record(self, hook: str, flow) -> None:
        self.seen.append((hook, flow))
        flow_to_json(flow)
        mitmproxy_io.FlowWriter(self.saved).add(flow)

    def tcp_start(self, flow):
        self._record("tcp_start", flow)

    def tcp_message(self, flow):
        self._record("tcp_message", flow)

    def tcp_end(self, flow):
        self._record("tcp_end", flow)

    def websocket_message(self, flow):
        self._record("websocket_message", flow)


class Chain:
    def __init__(self, tctx, addon: K8sWs, before: Recorder, after: Recorder, output: io.StringIO):
        self.tctx, self.addon, self.before, self.after, self.output = tctx, addon, before, after, output

    def hook(self, hook) -> None:
        """As mitmproxy runs a hook for a proxy layer: through the chain, then `update`."""
        self.tctx.master.addons.trigger(hook)
        subject = hook.args()[0]
        if isinstance(subject, mitmproxy_flow.Flow):
            self.tctx.master.addons.trigger(hooks.UpdateHook([subject]))

    def upgrade(self, *, path=EXEC, status=101) -> http.HTTPFlow:
        """A WebSocket upgrade through the addon's hooks, as mitmproxy runs them, up to `response`."""
        entry = base64url_entry(TOKEN)
        request = http.Request.make(
            "GET",
            f"https://rancher.test{path}",
            headers=[
                (b"Host", b"rancher.test"),
                (b"Connection", b"Upgrade"),
                (b"Upgrade", b"websocket"),
                (b"Sec-WebSocket-Version", b"13"),
                (b"Sec-WebSocket-Protocol", f"v4.channel.k8s.io, {entry}".encode()),
            ],
        )
        flow = tflow.tflow(req=request, client_conn=open_connection(connection.Client), server_conn=open_connection(connection.Server))
        self.addon.requestheaders(flow)
        self.addon.request(flow)
        flow.response = http.Response.make(status, b"", {"Upgrade": "websocket", "Connection": "Upgrade"})
        self.addon.responseheaders(flow)
        if status == 101:
            flow.websocket = WebSocketData()  # what mitmproxy does right before the `response` hook
        self.addon.response(flow)
        return flow


@pytest.fixture
def chain(tmp_path, caplog):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    before, addon, output, after = Recorder("before"), K8sWs(), io.StringIO(), Recorder("after")
    dump = dumper.Dumper(output)
    with taddons.context(before, addon, dump, after) as tctx:
        tctx.configure(addon, k8s_ws_rules=str(rules))
        tctx.configure(dump, flow_detail=4)
        yield Chain(tctx, addon, before, after, output)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []  # no addon failed


def open_connection(kind):
    conn = tflow.tclient_conn() if kind is connection.Client else tflow.tserver_conn()
    conn.state = connection.ConnectionState.OPEN
    return conn


class Driver:
    """Runs a proxy layer as mitmproxy's connection handler does, minus the sockets."""

    def __init__(self, layer, chain: Chain):
        self.layer, self.chain = layer, chain
        self.sent: dict[connection.Connection, bytearray] = {}

    def feed(self, event: events.Event) -> None:
        pending = [event]
        while pending:
            for command in self.layer.handle_event(pending.pop(0)):
                if isinstance(command, commands.StartHook):
                    self.chain.hook(command)
                    pending.append(events.HookCompleted(command))
                elif isinstance(command, commands.SendData):
                    self.sent.setdefault(command.connection, bytearray()).extend(command.data)


def context_of(flow: http.HTTPFlow, tctx) -> Context:
    context = Context(flow.client_conn, tctx.options)
    context.server = flow.server_conn
    return context


def tcp_relay(chain: Chain, upgrade: http.HTTPFlow) -> tuple[Driver, tcp.TCPFlow]:
    """The TCP layer mitmproxy puts on an upgraded connection when `flow.websocket` is None."""
    layer = tcp_layer.TCPLayer(context_of(upgrade, chain.tctx))
    driver = Driver(layer, chain)
    driver.feed(events.Start())
    return driver, layer.flow


def close_both(driver: Driver, flow: tcp.TCPFlow) -> None:
    for conn in (flow.server_conn, flow.client_conn):
        conn.state = connection.ConnectionState.CLOSED
        driver.feed(events.ConnectionClosed(conn))


# --- options --------------------------------------------------------------------------------


def test_options_default_to_raw_relay(chain):
    assert chain.tctx.options.k8s_ws_inspect is False
    assert chain.tctx.options.k8s_ws_inspect_history == 100


def test_history_bound_must_keep_a_message(chain):
    with pytest.raises(exceptions.OptionsError, match="k8s_ws_inspect_history"):
        chain.tctx.configure(chain.addon, k8s_ws_inspect_history=0)


# --- which streams go raw -------------------------------------------------------------------


def test_handled_upgrade_goes_raw(chain):
    flow = chain.upgrade()
    assert flow.metadata["k8s_ws"]["rule"] == "rancher"
    assert flow.websocket is None  # so mitmproxy puts its TCP layer, not its WebSocket layer, on it
    assert flow.metadata["k8s_ws"]["relay"] == "raw"


def test_inspect_keeps_the_websocket_layer(chain):
    chain.tctx.configure(chain.addon, k8s_ws_inspect=True)
    flow = chain.upgrade()
    assert flow.websocket is not None
    assert flow.metadata["k8s_ws"]["relay"] == "websocket"


def test_without_rawtcp_the_websocket_layer_stays(chain):
    # mitmproxy closes a 101 that has neither a WebSocket layer nor rawtcp.
    chain.tctx.configure(chain.addon, rawtcp=False)
    assert chain.upgrade().websocket is not None


def test_unhandled_upgrade_keeps_the_websocket_layer(chain):
    flow = chain.upgrade(path="/elsewhere/api/v1/watch")
    assert "k8s_ws" not in flow.metadata
    assert flow.websocket is not None


def test_refused_handshake_is_left_alone(chain):
    flow = chain.upgrade(status=401)
    assert flow.metadata["k8s_ws"]["status"] == 401
    assert "relay" not in flow.metadata["k8s_ws"]


# --- raw relay ------------------------------------------------------------------------------


def test_raw_relay_runs_no_hook_and_keeps_nothing(chain):
    driver, flow = tcp_relay(chain, chain.upgrade())
    assert chain.before.hooks(flow) == ["tcp_start"]  # mitmproxy's TCP layer took the stream over
    assert chain.after.hooks(flow) == []  # nothing after the addon ever sees its flow
    # The server's first frames, in the read that brought its 101: a bytearray (see kubews.mitm._relay).
    first = bytearray(b"\x82\x01\x01\x82\x11\x01hello from exec\n")
    driver.feed(events.DataReceived(flow.server_conn, first))
    expected = {flow.client_conn: bytearray(first), flow.server_conn: bytearray()}
    for i in range(2000):
        frame = b"\x82\x06\x00stdin%d" % (i % 10) if i % 2 else b"\x82\x07\x01stdout%d" % (i % 10)
        source, destination = (flow.client_conn, flow.server_conn) if i % 2 else (flow.server_conn, flow.client_conn)
        driver.feed(events.DataReceived(source, frame))
        expected[destination].extend(frame)
    assert driver.sent == expected  # every byte relayed, in order, both ways
    assert flow.messages == []
    close_both(driver, flow)
    assert chain.before.hooks(flow) == ["tcp_start"] and chain.after.hooks(flow) == []
    assert " tcp " not in chain.output.getvalue() and "hello" not in chain.output.getvalue()


def test_unhandled_tcp_flow_keeps_mitmproxys_behaviour(chain):
    unrelated = tflow.tflow(client_conn=open_connection(connection.Client), server_conn=open_connection(connection.Server))
    driver, flow = tcp_relay(chain, unrelated)
    for i in range(50):
        driver.feed(events.DataReceived(flow.client_conn, b"chunk %d" % i))
    close_both(driver, flow)
    assert chain.after.hooks(flow) == ["tcp_start", *["tcp_message"] * 50, "tcp_end"]
    assert len(flow.messages) == 50
    assert chain.output.getvalue().count(" tcp ") == 50


def test_upgrade_that_never_starts_a_stream_leaves_nothing_behind(chain):
    flow = chain.upgrade()
    client, server = flow.client_conn, flow.server_conn
    del flow
    gc.collect()
    _, later = tcp_relay(chain, tflow.tflow(client_conn=client, server_conn=server))
    assert chain.after.hooks(later) == ["tcp_start"]


# --- inspect --------------------------------------------------------------------------------


def websocket_relay(chain: Chain, upgrade: http.HTTPFlow) -> Driver:
    driver = Driver(websocket_layer.WebsocketLayer(context_of(upgrade, chain.tctx), upgrade), chain)
    driver.feed(events.Start())
    return driver


def client_frame(payload: bytes) -> bytes:
    return wsproto.Connection(wsproto.ConnectionType.CLIENT).send(wsproto.events.BytesMessage(payload))


def test_inspect_shows_messages_with_a_bounded_history(chain):
    chain.tctx.configure(chain.addon, k8s_ws_inspect=True, k8s_ws_inspect_history=5)
    flow = chain.upgrade()
    driver = websocket_relay(chain, flow)
    for i in range(40):
        driver.feed(events.DataReceived(flow.client_conn, client_frame(b"\x00message %d" % i)))
    assert [m.content for m in flow.websocket.messages] == [b"\x00message %d" % i for i in range(35, 40)]
    assert chain.after.hooks(flow) == ["websocket_message"] * 40  # every message was seen
    assert chain.output.getvalue().count("WebSocket binary message") == 40


def test_unhandled_websocket_keeps_every_message(chain):
    chain.tctx.configure(chain.addon, k8s_ws_inspect=True, k8s_ws_inspect_history=5)
    flow = chain.upgrade(path="/elsewhere/api/v1/watch")
    driver = websocket_relay(chain, flow)
    for i in range(40):
        driver.feed(events.DataReceived(flow.client_conn, client_frame(b"message %d" % i)))
    assert len(flow.websocket.messages) == 40


# --- streams another addon took: mitmproxy's guard --------------------------------------------


def test_a_stream_another_addon_killed_at_its_start_is_left_alone(chain):
    upgrade = chain.upgrade()
    chain.before.tcp_start = lambda flow: flow.kill()  # an addon ahead of k8s-ws, e.g. a script
    _, flow = tcp_relay(chain, upgrade)
    assert type(flow) is tcp.TCPFlow  # not made into a relayed flow...
    assert chain.after.hooks(flow) == ["tcp_start"]  # ... nor hidden from the addons after k8s-ws


def test_the_messages_of_a_killed_stream_are_left_alone(chain):
    chain.tctx.configure(chain.addon, k8s_ws_inspect=True, k8s_ws_inspect_history=5)
    flow = chain.upgrade()
    driver = websocket_relay(chain, flow)
    for i in range(10):
        driver.feed(events.DataReceived(flow.client_conn, client_frame(b"message %d" % i)))
    flow.websocket.messages.extend(flow.websocket.messages[:3])  # as mitmproxy appends before the hook
    flow.kill()
    chain.addon.websocket_message(flow)
    assert len(flow.websocket.messages) == 8


# --- a mitmproxy without what the raw relay relies on ------------------------------------------


def _relay_messages_without_the_falsy_flow_test(self, event):
    return tcp_layer.TCPLayer.__dict__["_original"](self, event)


@pytest.fixture(
    params=[
        pytest.param("removed", id="TCPLayer.relay_messages removed"),
        pytest.param("changed", id="TCPLayer records even a falsy flow"),
        pytest.param("no hand-off", id="HttpStream.flow_done removed"),
    ]
)
def internals_missing(request, monkeypatch):
    """Before the addon loads: mitmproxy's internals as a future version might have them."""
    from mitmproxy.proxy.layers import http as http_layers

    if request.param == "removed":
        monkeypatch.delattr(tcp_layer.TCPLayer, "relay_messages")
    elif request.param == "changed":
        monkeypatch.setattr(tcp_layer.TCPLayer, "relay_messages", _relay_messages_without_the_falsy_flow_test)
    else:
        monkeypatch.delattr(http_layers.HttpStream, "flow_done")


def test_without_the_internals_it_loads_warns_once_and_uses_the_websocket_layer(internals_missing, chain, caplog):
    loading = caplog.get_records("setup")  # the addon loaded while the chain was set up
    warnings = [r.getMessage() for r in loading if r.levelname == "WARNING" and "raw relay" in r.getMessage()]
    assert len(warnings) == 1 and "WebSocket layer" in warnings[0]
    chain.tctx.configure(chain.addon, k8s_ws_inspect_history=5)
    flow = chain.upgrade()
    assert flow.websocket is not None and flow.metadata["k8s_ws"]["relay"] == "websocket"
    driver = websocket_relay(chain, flow)
    for i in range(40):
        driver.feed(events.DataReceived(flow.client_conn, client_frame(b"\x00message %d" % i)))
    assert driver.sent[flow.server_conn]  # relayed
    assert [m.content for m in flow.websocket.messages] == [b"\x00message %d" % i for i in range(35, 40)]


def test_with_the_internals_there_is_no_warning(chain, caplog):
    assert not [r for r in caplog.get_records("setup") if "raw relay" in r.getMessage()]
    assert chain.upgrade().metadata["k8s_ws"]["relay"] == "raw"
