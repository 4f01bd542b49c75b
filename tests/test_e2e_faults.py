"""End to end, soak and faults (issue 10, build 4), bounded for CI: a real mitmdump with the addon
and the shipped rules, as a regular proxy (flow_detail 4, debug, -w), in front of small upstreams
of tests/fault_servers.py and of a `websockets` echo server.

- Soak: 50 handled sessions open at once, each with a token of its own: each upstream session saw
  its own token as the only Authorization and no bearer entry, and every byte each client sent
  came back to it, and to it only. (bench/memory.py runs 1,000.)
- Faults of the upstream (closes right after the head, resets after the 101, answers garbage,
  answers slowly, shows a certificate mitmproxy cannot verify, does not listen) and of the client
  (hangs up mid-head, resets mid-stream).

After all of it: no traceback in mitmdump's output, no token in it nor in the -w file, and
mitmdump still serves a handled session.

    python3 -m pytest tests/test_e2e_faults.py            # 50 sessions
    K8S_WS_SOAK=300 python3 -m pytest tests/test_e2e_faults.py
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import ssl
import struct
import tempfile
import time

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

import fault_servers
from fake_rancher import make_test_pki
from fault_servers import ThreadedServer
from helpers import BEARER_PREFIX, PAGE_ORIGIN, b64std, b64url, flow_strings, read_flows, secret_forms, shown
from mitmdump_harness import Mitmdump

pytestmark = pytest.mark.e2e

SESSIONS = int(os.environ.get("K8S_WS_SOAK", "50"))
MESSAGES = 8  # per session, 1 byte to 48 KiB each
PROTOCOL = "v4.channel.k8s.io"


def token(name: str) -> str:
    """A Rancher-style token of its own for each session and fault (facts §4)."""
    return f"token-{name}:" + "".join(random.Random(name).choices("abcdefghijklmnopqrstuvwxyz0123456789", k=40))


def entry(secret: str, n: int = 0) -> str:
    # both alphabets, as Headlamp (standard) and kubectl-style clients (base64url) send them
    return BEARER_PREFIX + (b64std(secret) if n % 2 else b64url(secret))


def exec_path(name: str) -> str:
    return f"/k8s/clusters/c-m-soak/api/v1/namespaces/{name}/pods/p/exec?command=sh&stdin=1&stdout=1"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    proxy = Mitmdump(workdir, options={"flow_detail": 4}, args=("-w", str(workdir / "flows.mitm")))
    with proxy:
        yield proxy


@pytest.fixture(scope="module")
def secrets() -> set[str]:
    """Every token a test of this module sent, in every form: filled in as they go."""
    return set()


# --- soak --------------------------------------------------------------------------------------------


async def _soak(proxy: Mitmdump, count: int) -> list[str]:
    """Runs `count` sessions at once through the proxy; returns what went wrong, if anything."""
    seen: dict[str, dict] = {}

    async def upstream(ws):
        name = ws.request.path.split("/namespaces/")[1].split("/")[0]
        headers = ws.request.headers
        seen[name] = {"authorization": headers.get_all("Authorization"), "protocols": headers.get_all("Sec-WebSocket-Protocol")}
        await ws.send(json.dumps({"session": name}))
        async for message in ws:
            await ws.send(message)

    problems: list[str] = []
    all_open = asyncio.Barrier(count)

    async def session(n: int, port: int) -> None:
        name = f"soak-{n}"
        rng = random.Random(n)
        payloads = [name.encode() + rng.randbytes(rng.randint(0, 48 * 1024)) for _ in range(MESSAGES)]
        async with connect(
            f"ws://127.0.0.1:{port}{exec_path(name)}",
            proxy=proxy.url,
            subprotocols=[PROTOCOL, entry(token(name), n)],
            origin=PAGE_ORIGIN,
            open_timeout=60,
            max_size=None,
            ping_interval=None,
            compression=None,
        ) as ws:
            hello = json.loads(await ws.recv())
            async with asyncio.timeout(120):
                await all_open.wait()  # every session is open now
            echoed = []
            for payload in payloads:
                await ws.send(payload)
                echoed.append(await ws.recv())
        if hello != {"session": name}:
            problems.append(f"{name}: greeted as {hello}")
        if echoed != payloads:
            changed = sum(a != b for a, b in zip(echoed, payloads, strict=True))
            problems.append(f"{name}: {changed} of {MESSAGES} messages came back changed")
        got = seen.get(name, {})
        if got.get("authorization") != [f"Bearer {token(name)}"]:
            problems.append(f"{name}: the upstream saw Authorization {got.get('authorization')} (its token: {n})")
        if any(BEARER_PREFIX in line for line in got.get("protocols", [])) or got.get("protocols") != [PROTOCOL]:
            problems.append(f"{name}: the upstream saw protocols {got.get('protocols')}")

    async with serve(upstream, "127.0.0.1", 0, subprotocols=[PROTOCOL], max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        results = await asyncio.gather(*(session(n, port) for n in range(count)), return_exceptions=True)
    problems += [f"soak-{n}: {type(r).__name__}: {r}" for n, r in enumerate(results) if isinstance(r, BaseException)]
    return problems


def test_soak_concurrent_sessions_with_distinct_tokens(proxy, secrets):
    secrets.update(form for n in range(SESSIONS) for form in secret_forms(token(f"soak-{n}")))
    problems = asyncio.run(_soak(proxy, SESSIONS))
    assert not problems, "\n".join(problems[:20])


# --- faults ------------------------------------------------------------------------------------------


def raw(port: int, request: bytes, *, timeout: float = 30) -> tuple[bytes, socket.socket]:
    """Send a request through the proxy; return the answer's head and the still open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, sock


def upgrade(target: str, name: str) -> bytes:
    """A handled upgrade in absolute form (regular proxy, no CONNECT), with a token of its own."""
    return (
        f"GET {target}{exec_path(name)} HTTP/1.1\r\nHost: {target.split('://')[1]}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {PROTOCOL}, {entry(token(name))}\r\nX-After: 1\r\n\r\n"
    ).encode()


def status_of(head: bytes) -> int | None:
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def untrusted_tls() -> ssl.SSLContext:
    pki = make_test_pki(tempfile.mkdtemp(prefix="k8s-ws-untrusted-"))  # a CA mitmproxy does not know
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert, pki.key)
    return context


@pytest.mark.parametrize(
    "name, fault, wanted",
    [
        pytest.param("close-after-head", fault_servers.close_after_head, 502, id="upstream closes right after the head"),
        pytest.param("reset-after-101", fault_servers.reset_after_101, 101, id="upstream resets after the 101"),
        pytest.param("garbage", fault_servers.garbage, 502, id="upstream answers garbage"),
        pytest.param("slow", fault_servers.slow(3), 101, id="upstream answers after 3 s"),
        pytest.param("untrusted-tls", "untrusted tls", 502, id="upstream certificate mitmproxy cannot verify"),
        pytest.param("closed-port", "closed port", 502, id="nothing listens upstream"),
    ],
)
def test_upstream_fault(proxy, secrets, name, fault, wanted):
    secrets.update(secret_forms(token(name)))
    mark = len(proxy.output())
    if fault == "closed port":
        head, sock = raw(proxy.port, upgrade(f"http://127.0.0.1:{fault_servers.closed_port()}", name))
        sock.close()
    else:
        tls = untrusted_tls() if fault == "untrusted tls" else None
        handler = fault_servers.echo_after_101 if tls else fault
        with ThreadedServer(handler, tls=tls) as server:
            scheme = "https" if tls else "http"
            head, sock = raw(proxy.port, upgrade(f"{scheme}://127.0.0.1:{server.port}", name))
            with sock:
                if wanted == 101 and fault is not fault_servers.reset_after_101:
                    sock.sendall(b"\x81\x85stdin")  # any bytes: the raw relay echoes them back
                    assert sock.recv(64) == b"\x81\x85stdin"
                if fault is fault_servers.reset_after_101:
                    assert closed_within(sock, 10), "the client is still connected after the upstream reset"
    assert status_of(head) == wanted, head
    if wanted != 101:
        proxy.wait_for_output(exec_path(name).split("?")[0], start=mark)
    assert "Traceback" not in proxy.output()[mark:]


def test_client_hangs_up_mid_head(proxy, secrets):
    name = "client-mid-head"
    secrets.update(secret_forms(token(name)))
    mark = len(proxy.output())
    with ThreadedServer(fault_servers.echo_after_101) as server:
        request = upgrade(f"http://127.0.0.1:{server.port}", name)
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(request[: request.index(b"\r\nX-After")])  # the entry, and no blank line
    proxy.wait_for_output("Client closed connection before completing request headers", start=mark)
    assert "Traceback" not in proxy.output()[mark:]


def test_client_resets_mid_stream(proxy, secrets):
    name = "client-mid-stream"
    secrets.update(secret_forms(token(name)))
    mark = len(proxy.output())
    with ThreadedServer(fault_servers.echo_after_101) as server:
        head, sock = raw(proxy.port, upgrade(f"http://127.0.0.1:{server.port}", name))
        assert status_of(head) == 101
        sock.sendall(b"\x82\x7e\x40\x00" + bytes(16 * 1024))  # half of a 16 KiB frame... then gone
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        time.sleep(1)
    proxy.wait_for_output("client disconnect", start=mark)
    assert "Traceback" not in proxy.output()[mark:]


# --- and after all of it ------------------------------------------------------------------------------


def test_after_the_faults_mitmdump_still_serves_and_shows_no_token(proxy, secrets, tmp_path):
    secrets.update(form for n in range(5) for form in secret_forms(token(f"soak-{n}")))
    assert not asyncio.run(_soak(proxy, 5)), "a handled session after the faults"
    proxy.stop()
    output = proxy.output()
    assert "Traceback" not in output and "Addon error" not in output
    assert not shown(output, secrets), "a token in mitmdump's output"
    flows = read_flows(proxy.workdir / "flows.mitm")
    assert flows and not shown("\n".join(flow_strings(flows)), secrets), "a token in the -w file"
