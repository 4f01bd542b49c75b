"""End to end: how a real mitmdump relays a stream the addon handled, against the strict
Rancher-like test server over TLS, which sends its 101 and first frames in one write.

Two probe scripts share the addon chain with the addon: one before it records what mitmproxy
itself hands to addons (and, once the client is gone, what the TCP flows it saw still hold), one
after it what the dumper, mitmweb and `-w` would get, and whether mitmweb's flow list (flow_to_json)
and flow dump (FlowWriter) can take each flow.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
from pathlib import Path

import pytest
from mitmproxy import io as mitmproxy_io
from websockets.asyncio.client import connect

from fake_rancher import EXEC_OUTPUT, HEALTHY, SUCCESS
from helpers import TOKEN, base64url_entry
from mitmdump_harness import ADDON, Mitmdump

pytestmark = pytest.mark.e2e  # mitmdump processes and the test server

ENTRY = base64url_entry(TOKEN)
PODS = f"/k8s/clusters/{HEALTHY}/api/v1/namespaces/default/pods/p"
EXEC = f"{PODS}/exec?command=sh&stdin=1&stdout=1"
ATTACH = f"{PODS}/attach?stdin=1&stdout=1"  # no rule for it below: mitmproxy's usual relay
RULES = """\
rules:
  - name: exec
    hosts: ["127.0.0.1"]
    paths: ["/k8s/clusters/*/exec"]
"""

PROBE = '''\
"""Records what the addons at this place in mitmproxy's chain get."""
import io, json
from mitmproxy.io import FlowWriter
from mitmproxy.tools.web.app import flow_to_json

RECORDS = {records!r}


def record(client, hook, **fields):
    with open(RECORDS, "a") as out:
        out.write(json.dumps(dict(hook=hook, client_port=client.peername[1], **fields)) + "\\n")


def shown_and_saved(flow):
    try:
        flow_to_json(flow)
        FlowWriter(io.BytesIO()).add(flow)
        return "ok"
    except Exception as e:
        return repr(e)


class Probe:
    name = {name!r}

    def __init__(self):
        self.tcp_flows = []

    def response(self, flow):
        record(flow.client_conn, "response", websocket=flow.websocket is not None,
               k8s_ws=flow.metadata.get("k8s_ws"), shown_and_saved=shown_and_saved(flow))

    def tcp_start(self, flow):
        self.tcp_flows.append(flow)
        record(flow.client_conn, "tcp_start")

    def tcp_message(self, flow):
        content = flow.messages[-1].content
        record(flow.client_conn, "tcp_message", type=type(content).__name__, shown_and_saved=shown_and_saved(flow))

    def tcp_end(self, flow):
        record(flow.client_conn, "tcp_end")

    def websocket_message(self, flow):
        record(flow.client_conn, "websocket_message", messages=len(flow.websocket.messages),
               last=flow.websocket.messages[-1].content.hex(), shown_and_saved=shown_and_saved(flow))

    def websocket_end(self, flow):
        record(flow.client_conn, "websocket_end", messages=len(flow.websocket.messages))

    def client_disconnected(self, client):
        # what the TCP flows of this client hold at the end, whether or not a hook showed them
        held = [len(f.messages) for f in self.tcp_flows if f.client_conn is client]
        record(client, "client_disconnected", tcp_messages_held=held)


addons = [Probe()]
'''


class Probe:
    def __init__(self, directory: Path, name: str):
        self.records_file = directory / f"{name}.jsonl"
        self.script = directory / f"probe_{name}.py"
        self.script.write_text(PROBE.format(records=str(self.records_file), name=f"probe_{name}"))

    def records(self, client_port: int, *, until: str = "client_disconnected", timeout: float = 10) -> list[dict]:
        """The records of one client connection, once `until` is among them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.records_file.read_text().splitlines() if self.records_file.exists() else []
            mine = [r for r in map(json.loads, (line for line in lines if line.endswith("}"))) if r["client_port"] == client_port]
            if any(r["hook"] == until for r in mine):
                return mine
            if time.monotonic() > deadline:
                raise AssertionError(f"no {until} for client port {client_port} within {timeout} s: {mine[-5:]}")
            time.sleep(0.05)

    def hooks(self, client_port: int) -> list[str]:
        return [r["hook"] for r in self.records(client_port)]


# --- fixtures (pki and rancher: conftest.py) -------------------------------------------------


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(RULES)
    return path


def probed_mitmdump(workdir: Path, rancher, pki, rules, *, options=None, args=(), addon=True):
    """mitmdump between a probe before the addon and one after it, in the addon chain."""
    before, after = Probe(workdir, "before"), Probe(workdir, "after")
    scripts = ("-s", str(before.script), *(("-s", str(ADDON)) if addon else ()), "-s", str(after.script))
    proxy = Mitmdump(
        workdir, mode=f"reverse:{rancher.url}", rules=rules, upstream_ca=pki.ca_cert,
        options=options, args=scripts + tuple(args), addon=False,
    )  # fmt: skip
    proxy.before, proxy.after = before, after
    return proxy


@pytest.fixture(scope="module")
def raw(tmp_path_factory, rancher, pki, rules):
    """The default: k8s_ws_inspect off."""
    with probed_mitmdump(tmp_path_factory.mktemp("raw"), rancher, pki, rules) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def inspecting(tmp_path_factory, rancher, pki, rules):
    options = {"k8s_ws_inspect": True, "k8s_ws_inspect_history": 5}
    with probed_mitmdump(tmp_path_factory.mktemp("inspect"), rancher, pki, rules, options=options) as proxy:
        yield proxy


# --- the client ------------------------------------------------------------------------------------


def session(proxy: Mitmdump, path: str = EXEC, protocol: str = "v4.channel.k8s.io", *, token_header=False, compression="deflate"):
    """A kubectl-like WebSocket client through the proxy, over TLS to mitmdump."""
    return connect(
        f"wss://127.0.0.1:{proxy.port}{path}",
        subprotocols=[protocol] if token_header else [protocol, ENTRY],
        additional_headers={"Authorization": f"Bearer {TOKEN}"} if token_header else None,
        compression=compression,
        ssl=ssl.create_default_context(cafile=proxy.ca_cert),
        max_size=None,
        proxy=None,
        open_timeout=10,
    )


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario, 60))


def channel(protocol: str, number: int, data: bytes) -> bytes | str:
    """A message on a channel of the exec protocols (facts §2): a byte, or a digit and base64."""
    if "base64" in protocol:
        return str(number) + base64.b64encode(data).decode()
    return bytes([number]) + data


async def expect_opening(ws, protocol: str) -> None:
    # facts §2: an empty message on stdout right after open (the test server adds its output)
    assert await ws.recv() == channel(protocol, 1, b"")
    assert await ws.recv() == channel(protocol, 1, EXEC_OUTPUT)


def assert_relayed_raw(proxy: Mitmdump, client_port: int) -> None:
    """mitmproxy's TCP layer took the stream over, kept none of it, and showed it to nobody."""
    before, after = proxy.before.records(client_port), proxy.after.records(client_port)
    assert [r["hook"] for r in before] == ["response", "tcp_start", "client_disconnected"]
    assert before[-1]["tcp_messages_held"] == [0]
    assert [r["hook"] for r in after] == ["response", "client_disconnected"]
    assert after[0]["websocket"] is False and after[0]["k8s_ws"]["relay"] == "raw"


# --- correctness under raw relay ------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v5.channel.k8s.io", "v4.base64.channel.k8s.io"],
                         ids=["v4", "v5", "v4.base64"])
def test_exec_channels_both_ways_and_close_from_the_client(raw, protocol):
    async def scenario():
        async with session(raw, protocol=protocol) as ws:
            assert ws.subprotocol == protocol
            await expect_opening(ws, protocol)
            for line in (b"ls -l\n", b"echo \x00\xff\n", b"exit\n"):
                await ws.send(channel(protocol, 0, line))  # stdin
                assert await ws.recv() == channel(protocol, 1, line)  # echoed on stdout
            port = ws.local_address[1]
            await ws.close(4001, "done here")
            return port, ws.protocol.close_rcvd

    port, answer = run(scenario())
    assert (answer.code, answer.reason) == (4001, "done here")  # the server's echo of our close
    assert_relayed_raw(raw, port)


def test_v5_close_of_stdin_ends_the_stream_from_the_server(raw):
    async def scenario():
        async with session(raw, protocol="v5.channel.k8s.io") as ws:
            port = ws.local_address[1]
            await expect_opening(ws, "v5.channel.k8s.io")
            await ws.send(b"\xff\x00")  # v5: close stream 0 (stdin)
            assert await ws.recv() == b"\x03" + SUCCESS  # the exit status on channel 3
            await ws.wait_closed()
            return port, ws.protocol.close_rcvd, ws.protocol.close_rcvd_then_sent

    port, close, server_first = run(scenario())
    assert close.code == 1000 and server_first
    assert_relayed_raw(raw, port)


def test_permessage_deflate_is_negotiated_end_to_end(raw, rancher):
    text = b"the same line again and again\n" * 1000

    async def scenario():
        async with session(raw) as ws:
            port = ws.local_address[1]
            await expect_opening(ws, "v4.channel.k8s.io")
            await ws.send(b"\x00" + text)  # compressed by the client, inflated by the server
            assert await ws.recv() == b"\x01" + text  # and the other way round
            return port, [type(e).__name__ for e in ws.protocol.extensions], ws.response.headers["Sec-WebSocket-Extensions"]

    port, extensions, agreed = run(scenario())
    assert extensions == ["PerMessageDeflate"] and agreed.startswith("permessage-deflate")
    assert rancher.records[-1].header("Sec-WebSocket-Extensions").startswith("permessage-deflate")
    assert_relayed_raw(raw, port)


@pytest.mark.parametrize("compression", ["deflate", None], ids=["deflate", "no compression"])
def test_large_messages(raw, compression):
    big = os.urandom(4 * 1024 * 1024 + 3)

    async def scenario():
        async with session(raw, compression=compression) as ws:
            await expect_opening(ws, "v4.channel.k8s.io")
            for _ in range(2):
                await ws.send(b"\x00" + big)
                assert await ws.recv() == b"\x01" + big
            return ws.local_address[1]

    assert_relayed_raw(raw, run(scenario()))


def test_many_messages_leave_no_message_list(raw):
    async def scenario():
        async with session(raw, compression=None) as ws:
            await expect_opening(ws, "v4.channel.k8s.io")
            for i in range(2000):
                await ws.send(b"\x00message %d" % i)
                assert await ws.recv() == b"\x01message %d" % i
            return ws.local_address[1]

    assert_relayed_raw(raw, run(scenario()))


def test_a_stream_no_rule_handled_keeps_mitmproxys_relay(raw):
    async def scenario():
        async with session(raw, ATTACH, token_header=True) as ws:
            await expect_opening(ws, "v4.channel.k8s.io")
            for i in range(20):
                await ws.send(b"\x00line %d" % i)
                assert await ws.recv() == b"\x01line %d" % i
            return ws.local_address[1]

    records = raw.after.records(run(scenario()))
    assert records[0]["websocket"] is True and records[0]["k8s_ws"] is None
    ends = [r for r in records if r["hook"] == "websocket_end"]
    assert [r["messages"] for r in ends] == [42]  # mitmproxy keeps them all: 2 opening + 20 each way


# --- the server's first frames in the read that brings its 101 ---------------------------------


async def short_exec(proxy: Mitmdump, *, token_header=False) -> int:
    async with session(proxy, compression=None, token_header=token_header) as ws:
        await expect_opening(ws, "v4.channel.k8s.io")
        await ws.send(b"\x00ls -l\n")
        assert await ws.recv() == b"\x01ls -l\n"
        return ws.local_address[1]


def test_plain_mitmdump_gets_a_bytearray_when_the_frames_come_with_the_101(tmp_path, rancher, pki, rules):
    # What the next test guards against, shown: without the addon, and with mitmproxy's TCP layer
    # on every upgrade, the first chunk an addon gets is a bytearray that neither -w nor mitmweb's
    # flow dump can take.
    proxy = probed_mitmdump(tmp_path, rancher, pki, rules, options={"websocket": False}, addon=False)
    with proxy:
        port = run(short_exec(proxy, token_header=True))  # no addon to move the token
        chunks = [r for r in proxy.after.records(port) if r["hook"] == "tcp_message"]
    assert chunks[0]["type"] == "bytearray"
    assert "unserializable object: bytearray" in chunks[0]["shown_and_saved"]


def test_first_frames_with_the_101_break_nothing_shown_or_saved(tmp_path, rancher, pki, rules):
    flows = tmp_path / "flows.mitm"
    proxy = probed_mitmdump(tmp_path, rancher, pki, rules, options={"flow_detail": 4}, args=("-w", str(flows)))
    with proxy:
        port = run(short_exec(proxy))
        assert_relayed_raw(proxy, port)
        assert proxy.after.records(port)[0]["shown_and_saved"] == "ok"
    output = proxy.output()
    assert "101 Switching Protocols" in output  # the handshake, in detail
    assert "Traceback" not in output and "error" not in output.lower()
    assert " tcp " not in output and "hello from exec" not in output  # no chunk reached the dumper
    saved = list(mitmproxy_io.FlowReader(flows.open("rb")).stream())
    assert [(f.type, f.response.status_code, f.websocket) for f in saved] == [("http", 101, None)]
    assert saved[0].metadata["k8s_ws"]["relay"] == "raw"
    assert ENTRY.encode() not in flows.read_bytes() and TOKEN.encode() not in flows.read_bytes()


# --- inspect on ------------------------------------------------------------------------------


def test_inspect_shows_each_message_and_keeps_the_latest(inspecting):
    async def scenario():
        async with session(inspecting) as ws:
            await expect_opening(ws, "v4.channel.k8s.io")
            for i in range(30):
                await ws.send(b"\x00line %d" % i)
                assert await ws.recv() == b"\x01line %d" % i
            return ws.local_address[1]

    records = inspecting.after.records(run(scenario()))
    assert records[0]["websocket"] is True and records[0]["k8s_ws"]["relay"] == "websocket"
    seen = [r for r in records if r["hook"] == "websocket_message"]
    assert len(seen) == 62  # the hooks see every message: 2 opening + 30 each way
    assert max(r["messages"] for r in seen) == 5
    assert seen[-1]["last"] == b"\x01line 29".hex()
    assert {r["shown_and_saved"] for r in seen} == {"ok"}
    assert not any(r["hook"].startswith("tcp") for r in records)


# --- a mitmproxy without what the raw relay relies on (contract §1) --------------------------

#: Loaded ahead of the addon: mitmproxy as a future version might be, its TCP layer no longer
#: testing for a falsy flow (the addon reads that test in the layer's source).
WITHOUT_RAW_RELAY = '''
from mitmproxy.proxy.layers import tcp

_original = tcp.TCPLayer.relay_messages


def relay_messages(self, event):
    return _original(self, event)


tcp.TCPLayer.relay_messages = relay_messages
'''


def test_without_the_internals_streams_go_through_the_websocket_layer(tmp_path, rancher, pki, rules):
    changed = tmp_path / "without_raw_relay.py"
    changed.write_text(WITHOUT_RAW_RELAY)
    proxy = Mitmdump(
        tmp_path, mode=f"reverse:{rancher.url}", rules=rules, upstream_ca=pki.ca_cert,
        args=("-s", str(changed), "-s", str(ADDON)), addon=False,
    )  # fmt: skip

    async def scenario():
        async with session(proxy) as ws:
            await expect_opening(ws, "v4.channel.k8s.io")
            await ws.send(channel("v4.channel.k8s.io", 0, b"ls\n"))
            assert await ws.recv() == channel("v4.channel.k8s.io", 1, b"ls\n")

    with proxy:
        run(scenario())
        output = proxy.output()
    assert output.count("lacks what the raw relay relies on") == 1
    assert "TCPLayer no longer relays a falsy flow" in output
    assert "WebSocket binary message" in output  # mitmproxy's WebSocket layer carried the stream
