"""Small upstream servers for the fuzz and fault tests (issue 10): one that records every request
head byte for byte, and ones that misbehave on purpose. Test code, not part of the product.

Each runs on 127.0.0.1, on an ephemeral port, in a thread of its own (like tests/fake_rancher.py),
so that synchronous test code can start it, talk through mitmdump, and read what it saw.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from oracle import PROTOCOL_HEADER_NAME, go_protocols, is_entry, parse_head

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ThreadedServer:
    """An asyncio server whose connections `handler` serves, in a thread of its own."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None):
        self._handler, self._tls = handler, tls
        self.port = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task] = set()

    def __enter__(self) -> ThreadedServer:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True, name="fault-server")
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        if self._thread:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
            self._thread = None

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls, limit=1 << 20)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()


def switching_protocols(head: bytes, *, choose: bool = True) -> bytes:
    """A 101 for a WebSocket upgrade head. It chooses (unless told not to) the first protocol the
    client offered, bearer entries aside (as kube-apiserver would, facts §1, §2), byte for byte."""
    headers = parse_head(head)[1]
    key = next((v for n, v in headers if n.lower() == "sec-websocket-key"), "")
    offered = [p for p in go_protocols([v for n, v in headers if n.lower() == PROTOCOL_HEADER_NAME.lower()]) if not is_entry(p)]
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Accept: {accept_key(key)}"]
    if offered and choose:
        lines.append(f"{PROTOCOL_HEADER_NAME}: {offered[0]}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


_MARKER = re.compile(rb"fz\d+")


@dataclass(frozen=True)
class Seen:
    head: bytes  # the request head as it arrived, up to and including the blank line


class RecordingUpstream(ThreadedServer):
    """Records every request head as it arrived, byte for byte, by the marker (`fz<digits>`) in
    its target; answers an upgrade (one with Sec-WebSocket-Key) with a 101 (choosing no protocol
    when the target holds "no-protocol") and holds the connection until the client closes it,
    and anything else with 200."""

    def __init__(self) -> None:
        super().__init__(self._exchange)
        self._seen: dict[str, list[Seen]] = {}
        self._lock = threading.Lock()

    def seen(self, marker: str) -> list[Seen]:
        with self._lock:
            return list(self._seen.get(marker, ()))

    def count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._seen.values())

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b"\r\n", 1)[0]
            found = _MARKER.search(target)
            with self._lock:
                self._seen.setdefault(found[0].decode() if found else "", []).append(Seen(head))
            if re.search(rb"(?im)^sec-websocket-key:", head):
                writer.write(switching_protocols(head, choose=b"no-protocol" not in target))
                await writer.drain()
                while await reader.read(65536):
                    pass
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
            await writer.drain()


# --- faults --------------------------------------------------------------------------------------


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def close_after_head(reader, writer) -> None:
    """Reads the request head, then closes without a word."""
    await read_head(reader)


async def reset_after_101(reader, writer) -> None:
    """Answers 101, then resets the connection (RST, not FIN)."""
    head = await read_head(reader)
    writer.write(switching_protocols(head))
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def garbage(reader, writer) -> None:
    """Answers with bytes that are no HTTP at all."""
    await read_head(reader)
    writer.write(b"\x16\x03\x01\x00\xff garbage, not HTTP \x00\xff\r\n\r\n")
    await writer.drain()


def slow(seconds: float) -> Handler:
    """Answers 101 after `seconds`, then echoes what it reads."""

    async def handler(reader, writer) -> None:
        head = await read_head(reader)
        await asyncio.sleep(seconds)
        writer.write(switching_protocols(head))
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    return handler


async def echo_after_101(reader, writer) -> None:
    """A well-behaved upstream: 101, then every byte echoed."""
    await slow(0)(reader, writer)


def closed_port() -> int:
    """A port of 127.0.0.1 on which nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
