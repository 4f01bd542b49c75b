"""A strict stand-in for Rancher in front of a kube-apiserver (docs/test-server.md).

It behaves on the wire like the real servers described in docs/protocol.md ("§n" in
the comments) and refuses everything they refuse, so that a test passing against it means something.
Run by hand: python tests/fake_rancher.py [--plain-apiserver] [--tls-dir DIR] [--port N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime
import hashlib
import ipaddress
import json
import re
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake

# The test tokens (Rancher's name:key, §4) live in helpers.py, beside the tests that use them. This
# server accepts every one of TOKENS; SCOPED_TOKEN is valid on HEALTHY only.
from helpers import BEARER_PREFIX, SCOPED_TOKEN, TOKEN, TOKENS

HEALTHY, LOCAL, DEAD, PENDING = "c-m-healthy", "local", "c-m-dead", "c-m-pending"  # any other id: unknown

# Subprotocols per endpoint (§2). Exec refuses an empty offer: this server is stricter than the
# kubelet there, which would take it for channel.k8s.io.
CHANNEL_PROTOCOLS = ("channel.k8s.io", "base64.channel.k8s.io", "v4.channel.k8s.io",
                     "v4.base64.channel.k8s.io", "v5.channel.k8s.io")
PORTFORWARD_PROTOCOLS = ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")
LOG_PROTOCOLS = ("binary.k8s.io", "base64.binary.k8s.io", "")  # "": nothing offered
LOG_LINES = (b"line 1\n", b"line 2\n", b"line 3\n")
EXEC_OUTPUT = b"hello from exec\n"
SUCCESS = b'{"metadata":{},"status":"Success"}'  # the v4/v5 exit status on channel 3
ORIGIN_DENIED = {"Code": {"Code": "PermissionDenied", "Status": 403}, "Message": "origin not allowed",
                 "Cause": None, "FieldName": ""}


@dataclass(frozen=True)
class TestPKI:
    __test__ = False  # not a pytest test class

    ca_cert: str
    cert: str
    key: str


def make_test_pki(directory) -> TestPKI:
    """A CA and a leaf for localhost and 127.0.0.1, as PEM files in directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject, key, issuer, issuer_key, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        return builder.sign(issuer_key, hashes.SHA256())

    def usage(**allowed):
        names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                 "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
        return x509.KeyUsage(**{name: allowed.get(name, False) for name in names})

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-rancher test CA")])
    ca = certificate(ca_name, ca_key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (usage(key_cert_sign=True, crl_sign=True), True)])
    leaf = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), key, ca_name, ca_key, [
        (x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (usage(digital_signature=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)])
    pki = TestPKI(str(directory / "ca.pem"), str(directory / "cert.pem"), str(directory / "key.pem"))
    Path(pki.ca_cert).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    Path(pki.cert).write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    Path(pki.key).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return pki


def _lines(headers, name: str) -> list[str]:
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


@dataclass(frozen=True)
class Record:
    """A request as the server received it, and what it answered."""
    method: str
    target: str
    path: str
    headers: tuple[tuple[str, str], ...]  # as received: case, order and repeated lines kept
    status: int
    subprotocol: str | None
    body: bytes  # b"" for a 101

    def header(self, name: str) -> str | None:
        lines = _lines(self.headers, name)
        return ", ".join(lines) if lines else None

    def header_lines(self, name: str) -> list[str]:
        return _lines(self.headers, name)


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    path: str
    headers: tuple[tuple[str, str], ...]

    def first(self, name: str) -> str | None:
        """The first line only, as Go's Header.Get reads it."""
        return next(iter(_lines(self.headers, name)), None)

    def lines(self, name: str) -> list[str]:
        return _lines(self.headers, name)

    def tokens(self, name: str) -> set[str]:
        """The lowercased elements of a comma-separated header, over all its lines."""
        return {token.strip().lower() for line in self.lines(name) for token in line.split(",")}


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunked: bool = False  # a streamed GET (log, watch) that ends after its body


@dataclass
class _Accept:
    """An accepted WebSocket upgrade: the 101, the messages sent in the same write, then the session."""
    subprotocol: str | None
    text: bool  # the protocol uses text frames (base64 variants, watch's JSON)
    first: list[bytes]
    session: Callable[[_WebSocket], Awaitable[None]]
    headers: list[tuple[str, str]] = field(default_factory=list)


def _json(status: int, obj) -> _Reply:
    return _Reply(status, json.dumps(obj, separators=(",", ":")).encode(), [("Content-Type", "application/json")])


def _text(status: int, text: str) -> _Reply:
    return _Reply(status, text.encode(), [("Content-Type", "text/plain; charset=utf-8")])


def _status(code: int, reason: str, message: str) -> _Reply:
    return _json(code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": message, "reason": reason, "code": code})


def _norman(status: int, code: str, message: str) -> _Reply:
    return _json(status, {"type": "error", "status": str(status), "code": code, "message": message})


def _head(status: int, headers) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_request(head: bytes) -> _Request | None:
    request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():  # no obs-fold, no space before ':'
            return None
        headers.append((name, value.strip(" \t")))
    return _Request(parts[0], parts[1], urlsplit(parts[1]).path, tuple(headers))


def _is_websocket(request: _Request) -> bool:
    # wsstream.IsWebSocketRequest, on the first lines as Go's Header.Get gives them
    return ((request.first("Upgrade") or "").lower() == "websocket"
            and re.match(r"(^|.*,\s*)upgrade($|\s*,)", (request.first("Connection") or "").lower()) is not None)


def _decode_raw_url(encoded: str) -> str | None:
    # Go's base64.RawURLEncoding: URL alphabet, no padding ('+', '/', '=' are invalid); then UTF-8 (§1)
    if not re.fullmatch(r"[A-Za-z0-9_-]*", encoded) or len(encoded) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except UnicodeDecodeError:
        return None


def _kube_authenticate(request: _Request) -> tuple[bool, str | None]:
    """kube-apiserver's authenticators in order (§1): Authorization, then the token element.

    Returns whether the request is authenticated, and the Sec-WebSocket-Protocol value that
    subprotocol negotiation then sees."""
    # bearertoken.go: SplitN(TrimSpace(auth), " ", 3), scheme case-insensitive
    parts = (request.first("Authorization") or "").strip().split(" ", 2)
    if len(parts) >= 2 and parts[0].lower() == "bearer" and parts[1] in TOKENS:
        return True, request.first("Sec-WebSocket-Protocol")  # a token element stays where it is
    if not _is_websocket(request):
        return False, None
    token, others, seen = "", [], False
    for line in request.lines("Sec-WebSocket-Protocol"):
        for protocol in (element.strip() for element in line.split(",")):
            if not protocol.startswith(BEARER_PREFIX):
                others.append(protocol)
                continue
            if seen:
                return False, None  # "multiple base64.bearer.authorization tokens specified"
            seen = True
            token = _decode_raw_url(protocol[len(BEARER_PREFIX):])
            if token is None:
                return False, None  # "invalid base64.bearer.authorization token encoding"
    if token and not others:
        return False, None  # "missing additional subprotocol"
    if token not in TOKENS:  # "" (an empty element) is no token
        return False, None
    return True, ",".join(others)  # the element is removed


def _rancher_token(request: _Request) -> str | None:
    # pkg/auth/tokens/token_util.go (§4): Authorization (first line), or R_SESS only without one;
    # never Sec-WebSocket-Protocol
    auth = request.first("Authorization")
    if auth is None:
        cookies = (c.strip().partition("=") for line in request.lines("Cookie") for c in line.split(";"))
        return next((value for name, _, value in cookies if name == "R_SESS"), None)
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value  # strict: exactly one space ("Bearer  t" yields " t", no token)
    if scheme.lower() == "basic":  # base64url as Rancher documents, standard too; padded
        try:
            return base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def _origin_host(origin: str) -> str:
    # Go's url.Parse(origin).Host: scheme and userinfo dropped, port kept as written
    try:
        return urlsplit(origin).netloc.rpartition("@")[2]
    except ValueError:
        return ""


def _channel(text: bool, channel: int, data: bytes = b"") -> bytes:
    # §2: the channel is the first byte; base64 protocols send it as a digit, then base64 data
    return str(channel).encode() + base64.b64encode(data) if text else bytes([channel]) + data


def _unchannel(text: bool, message: bytes) -> tuple[int, bytes]:
    return (int(message[:1]), base64.b64decode(message[1:])) if text else (message[0], message[1:])


class _WebSocket:
    """wsproto framing on the asyncio stream, once the handshake has been written by hand."""

    def __init__(self, reader, writer, extensions, text: bool):
        self._reader, self._writer, self._text = reader, writer, text
        self._conn = Connection(ConnectionType.SERVER, extensions)

    def frames(self, payloads) -> bytes:
        return b"".join(self._conn.send(TextMessage(p.decode()) if self._text else BytesMessage(p))
                        for p in payloads)

    async def send(self, *payloads: bytes) -> None:
        self._writer.write(self.frames(payloads))
        await self._writer.drain()

    async def receive(self) -> bytes | None:
        """The next whole message, or None once the peer has closed (its close answered)."""
        parts = []
        while True:
            for event in self._conn.events():
                if isinstance(event, Message):
                    parts.append(event.data.encode() if isinstance(event.data, str) else event.data)
                    if event.message_finished:
                        return b"".join(parts)
                elif isinstance(event, Ping):
                    self._writer.write(self._conn.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self._conn.state is ConnectionState.REMOTE_CLOSING:
                        self._writer.write(self._conn.send(event.response()))
                    return None
            self._conn.receive_data(await self._reader.read(65536) or None)

    async def close(self, code: int = 1000) -> None:
        self._writer.write(self._conn.send(CloseConnection(code)))
        try:
            async with asyncio.timeout(5):  # for the peer's close frame
                while await self.receive() is not None:
                    pass
        except TimeoutError:
            pass


async def _until_closed(ws: _WebSocket) -> None:
    while await ws.receive() is not None:
        pass


async def _echo_stdin(ws: _WebSocket, text: bool) -> bool:
    """Echoes stdin on stdout until a v5 client closes stdin (True) or the connection ends (False)."""
    while (message := await ws.receive()) is not None:
        channel, data = _unchannel(text, message) if message else (None, b"")
        if channel == 0:
            await ws.send(_channel(text, 1, data))
        elif channel == 255:  # v5: the client closed a stream
            return True
        # resize (4) is ignored
    return False


def _exec(protocol: str, stdin: bool) -> _Accept:
    text = "base64" in protocol
    status = protocol.startswith(("v4.", "v5."))  # an exit Status on channel 3 since v4

    async def session(ws: _WebSocket) -> None:
        if stdin and not await _echo_stdin(ws, text):
            return
        if status:
            await ws.send(_channel(text, 3, SUCCESS))
        await ws.close()

    # §2: an empty message on the first writable channel (stdout) right after open
    return _Accept(protocol, text, [_channel(text, 1), _channel(text, 1, EXEC_OUTPUT)], session)


def _log_stream(protocol: str) -> _Accept:
    text = protocol == "base64.binary.k8s.io"
    chunks = (b"", *LOG_LINES)  # §2: the first message is empty
    return _Accept(protocol or None, text, [base64.b64encode(c) for c in chunks] if text else list(chunks),
                   _until_closed)


def _portforward(ports: list[int], protocol: str) -> _Accept:
    text = "base64" in protocol

    async def session(ws: _WebSocket) -> None:
        while (message := await ws.receive()) is not None:
            if message:
                channel, data = _unchannel(text, message)
                if channel % 2 == 0 and data:  # a data channel: echo
                    await ws.send(_channel(text, channel, data))

    # §2: data channel 2i and error channel 2i+1 for port i, each opening with the port (uint16 LE)
    first = [_channel(text, c, port.to_bytes(2, "little")) for i, port in enumerate(ports) for c in (2 * i, 2 * i + 1)]
    return _Accept(protocol, text, first, session)


def _handshake_error(request: _Request) -> _Reply | None:
    # golang.org/x/net/websocket ReadHandshake, which kube's wsstream and watch use
    if request.method != "GET":
        return _Reply(405)
    if not request.first("Sec-WebSocket-Key"):
        return _Reply(400, b"mismatch challenge/response")
    if request.first("Sec-WebSocket-Version") != "13":
        return _Reply(400, b"missing or bad WebSocket Version", [("Sec-WebSocket-Version", "13")])
    return None


def _negotiate(request: _Request, offered: list[str], supported, start: Callable[[str], _Accept]):
    # wsstream: the first offered protocol the endpoint supports; none: 403, empty body (§2)
    chosen = next((p for p in offered or [""] if p in supported), None)
    return _handshake_error(request) or (start(chosen) if chosen is not None else _Reply(403))


def _watch(request: _Request, offered: list[str], event: bytes):
    # x/net/websocket.Handler: checkOrigin wants a parsable Origin (403, empty body), then no
    # negotiation: the single protocol offered is echoed, more than one is a 400 with an empty body (§2)
    if error := _handshake_error(request):
        return error
    if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:|/", request.first("Origin") or ""):
        return _Reply(403)
    if len(offered) > 1:
        return _Reply(400)
    # The events are JSON text frames whatever the protocol: kube's watch does not base64 them.
    return _Accept(offered[0] if offered else None, True, [event], _until_closed)


def _pod(namespace: str, name: str) -> dict:
    started = "2026-01-01T00:00:00Z"
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": "6d1f3f7e-0000-4000-8000-000000000001",
                         "resourceVersion": "1", "creationTimestamp": started},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "startTime": started, "containerStatuses": [
                {"name": "c", "ready": True, "started": True, "restartCount": 0, "image": "busybox",
                 "imageID": "", "state": {"running": {"startedAt": started}}}]}}


def _resource(name: str, kind: str, verbs: list[str], namespaced: bool = True, short: str | None = None) -> dict:
    singular = "" if "/" in name else kind.lower()
    return {"name": name, "singularName": singular, "namespaced": namespaced, "kind": kind, "verbs": verbs,
            **({"shortNames": [short]} if short else {})}


DISCOVERY = {
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        _resource("namespaces", "Namespace", ["get", "list", "watch"], namespaced=False, short="ns"),
        _resource("pods", "Pod", ["get", "list", "watch"], short="po"),
        _resource("pods/attach", "PodAttachOptions", ["create", "get"]),
        _resource("pods/exec", "PodExecOptions", ["create", "get"]),
        _resource("pods/log", "Pod", ["get"]),
        _resource("pods/portforward", "PodPortForwardOptions", ["create", "get"])]},
    "/version": {"major": "1", "minor": "32", "gitVersion": "v1.32.4", "gitCommit": "0" * 40,
                 "gitTreeState": "clean", "buildDate": "2025-04-22T00:00:00Z", "goVersion": "go1.23.6",
                 "compiler": "gc", "platform": "linux/amd64"},
}


def _collection(path: str) -> dict | None:
    if path == "/api/v1/namespaces":
        namespace = {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "default"},
                     "status": {"phase": "Active"}}
        return {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": [namespace]}
    if match := re.fullmatch(r"/api/v1(?:/namespaces/([^/]+))?/pods", path):
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                "items": [_pod(match[1] or "default", "p")]}
    return None


def _apiserver(request: _Request, path: str, protocols: str | None):
    """The kube-apiserver behind authentication; protocols: the Sec-WebSocket-Protocol value it sees."""
    # x/net/websocket negotiates on the first line only (Header.Get), split on ','
    offered = [p.strip() for p in protocols.split(",")] if protocols and protocols.strip() else []
    query = parse_qs(urlsplit(request.target).query, keep_blank_values=True)
    websocket = _is_websocket(request)
    if pod := re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)(?:/([^/]+))?", path):
        subresource = pod[3]
        if subresource in ("exec", "attach", "portforward") and not websocket:
            return _status(400, "BadRequest", "Upgrade request required")  # §6 (SPDY is not emulated)
        if subresource in ("exec", "attach"):
            stdin = query.get("stdin", [""])[0] in ("1", "true")
            return _negotiate(request, offered, CHANNEL_PROTOCOLS, lambda p: _exec(p, stdin))
        if subresource == "portforward":
            try:
                ports = [int(p) for value in query.get("ports", []) for p in value.split(",")]
            except ValueError:
                ports = []
            if not ports:
                return _status(400, "BadRequest", 'query parameter "ports" is required')
            return _negotiate(request, offered, PORTFORWARD_PROTOCOLS, lambda p: _portforward(ports, p))
        if subresource == "log":
            if websocket:
                return _negotiate(request, offered, LOG_PROTOCOLS, _log_stream)
            return _Reply(200, b"".join(LOG_LINES), [("Content-Type", "text/plain")], chunked=True)
        if subresource is None:
            return _json(200, _pod(pod[1], pod[2]))
    elif (collection := _collection(path)) is not None:
        if query.get("watch", [""])[0] in ("1", "true"):
            event = json.dumps({"type": "ADDED", "object": collection["items"][0]}, separators=(",", ":")).encode()
            if websocket:
                return _watch(request, offered, event)
            return _Reply(200, event + b"\n", [("Content-Type", "application/json")], chunked=True)
        return _json(200, collection)
    elif path in DISCOVERY:
        return _json(200, DISCOVERY[path])
    return _status(404, "NotFound", "the server could not find the requested resource")


def _rancher(request: _Request):
    """Rancher's answer (§4) and whether it authenticated the request."""
    upgrade = "upgrade" in request.tokens("Connection")
    # pkg/websocket/handler.go, before authentication: a browser's every Origin must name the Host
    if (upgrade and any("mozilla" in ua.lower() for ua in request.lines("User-Agent"))
            and any(_origin_host(o) != request.first("Host") for o in request.lines("Origin"))):
        return _json(403, ORIGIN_DENIED), False
    route = re.fullmatch(r"/k8s/(?:clusters|proxy)/([^/]+)(/.*)?", request.path)
    if not route:
        return _norman(404, "NotFound", "not found"), False
    cluster, rest = route[1], route[2] or "/"
    # Rancher authenticates before it looks the cluster up; a scoped token fails on other clusters.
    token = _rancher_token(request)
    if token not in TOKENS or (token == SCOPED_TOKEN and cluster != HEALTHY):
        if cluster == LOCAL:
            return _text(401, "not authorized"), False
        return _json(401, {"type": "error", "status": "401", "message": "must authenticate"}), False
    if cluster == PENDING:
        return _norman(503, "ClusterUnavailable", f"cluster {cluster} is not ready"), True
    if cluster not in (HEALTHY, LOCAL, DEAD):
        return _norman(404, "NotFound", f'clusters.management.cattle.io "{cluster}" not found'), True
    if cluster == DEAD:  # the tunnel to the cluster agent is down
        if upgrade:
            return _Reply(502), True
        return _text(500, "error trying to reach service: cluster agent disconnected"), True
    # Rancher swaps Authorization for its own identity and forwards Sec-WebSocket-Protocol, Origin
    # and User-Agent unchanged, so the downstream authenticates by header and leaves the list alone.
    return _apiserver(request, rest, request.first("Sec-WebSocket-Protocol")), True


class FakeServer:
    """Rancher in front of a kube-apiserver (rancher=True) or a bare kube-apiserver, on 127.0.0.1
    (or `address`). TLS (HTTP/1.1 only) when pki is given, plain HTTP otherwise. It serves from a
    thread of its own."""

    def __init__(self, *, rancher: bool = True, pki: TestPKI | None = None, port: int = 0, address: str = "127.0.0.1"):
        self.rancher, self.pki, self.port, self.address = rancher, pki, port, address
        self._records: list[Record] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()
        self._error: Exception | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://{self.host}"

    @property
    def records(self) -> list[Record]:
        with self._changed:
            return list(self._records)

    def clear(self) -> None:
        with self._changed:
            self._records.clear()

    def wait_for_records(self, n: int, timeout: float = 5.0) -> list[Record]:
        """The records once there are at least n; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._records) >= n, timeout):
                raise TimeoutError(f"{len(self._records)} requests recorded, waited for {n}")
            return list(self._records)

    def start(self) -> FakeServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(ready),), name="fake-rancher", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> FakeServer:
        return self if self._thread else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _main(self, ready: threading.Event) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        try:
            server = await asyncio.start_server(self._connection, self.address, self.port, ssl=self._tls())
            self.port = server.sockets[0].getsockname()[1]
        except Exception as error:  # raised again by start()
            self._error = error
            return
        finally:
            ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    def _tls(self) -> ssl.SSLContext | None:
        if not self.pki:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.cert, self.pki.key)
        context.set_alpn_protocols(["http/1.1"])  # HTTP/2 cannot carry a 101 (§6)
        return context

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
            writer.close()
            await writer.wait_closed()  # with TLS: until the close_notify exchange is over
        except (OSError, EOFError, asyncio.LimitOverrunError):
            pass  # the client went away or sent garbage: only this connection ends
        except asyncio.CancelledError:
            pass  # stop(); ending quietly spares asyncio's noisy log of a cancelled callback task
        finally:
            writer.transport.abort()  # nothing left to do once closed; else drops the connection now
            self._tasks.discard(task)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answers one request; False once the connection is done."""
        request = _parse_request(await reader.readuntil(b"\r\n\r\n"))
        if request is None:
            writer.write(_head(400, [("Content-Length", "0"), ("Connection", "close")]))
            return False
        await reader.readexactly(int(request.first("Content-Length") or 0))
        if len(request.lines("Host")) != 1:  # Go's net/http refuses these before any handler
            answer = _text(400, "too many Host headers" if request.lines("Host") else "missing required Host header")
        elif self.rancher:
            answer, authenticated = _rancher(request)
            answer.headers += [("X-Api-Cattle-Auth", str(authenticated).lower()),
                               ("X-Content-Type-Options", "nosniff"),
                               ("Cache-Control", "no-cache, no-store, must-revalidate")]
        else:
            authenticated, protocols = _kube_authenticate(request)
            answer = (_apiserver(request, request.path, protocols) if authenticated
                      else _status(401, "Unauthorized", "Unauthorized"))

        if isinstance(answer, _Accept):
            head, extensions = _switching_protocols(request, answer)
            self._record(request, 101, answer.subprotocol, b"")
            ws = _WebSocket(reader, writer, extensions, answer.text)
            writer.write(head + ws.frames(answer.first))  # one write: one segment, like a server that speaks first
            await answer.session(ws)
            return False

        self._record(request, answer.status, None, answer.body)
        if answer.chunked:
            framing, body = ("Transfer-Encoding", "chunked"), b"%x\r\n%s\r\n0\r\n\r\n" % (len(answer.body), answer.body)
        else:
            framing, body = ("Content-Length", str(len(answer.body))), answer.body
        writer.write(_head(answer.status, answer.headers + [framing]) + body)
        await writer.drain()
        # A refused upgrade ends the connection, as the Go servers do once they have hijacked it.
        return not request.tokens("Connection") & {"upgrade", "close"}

    def _record(self, request: _Request, status: int, subprotocol: str | None, body: bytes) -> None:
        with self._changed:
            self._records.append(Record(request.method, request.target, request.path, request.headers,
                                        status, subprotocol, body))
            self._changed.notify_all()


def _switching_protocols(request: _Request, accept: _Accept) -> tuple[bytes, list]:
    """The 101 and the extensions agreed for the frames that follow."""
    key = request.first("Sec-WebSocket-Key")
    digest = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Accept", base64.b64encode(digest).decode())]
    if accept.subprotocol:
        headers.append(("Sec-WebSocket-Protocol", accept.subprotocol))
    # The real kube-apiserver (x/net/websocket) never negotiates permessage-deflate; this server
    # does when offered, so the tests see compression survive the proxy.
    deflate = PerMessageDeflate()
    offers = [e.strip() for line in request.lines("Sec-WebSocket-Extensions") for e in line.split(",")]
    agreed = server_extensions_handshake(offers, [deflate])
    if agreed:
        headers.append(("Sec-WebSocket-Extensions", agreed.decode()))
    return _head(101, headers + accept.headers), [deflate] if agreed else []


def main() -> None:
    parser = argparse.ArgumentParser(description="A strict Rancher / kube-apiserver stand-in for testing k8s-ws.")
    parser.add_argument("--plain-apiserver", action="store_true", help="a bare kube-apiserver, no Rancher front")
    parser.add_argument("--tls-dir", help="serve TLS with a CA and certificate made in this directory")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    pki = make_test_pki(args.tls_dir) if args.tls_dir else None
    with FakeServer(rancher=not args.plain_apiserver, pki=pki, port=args.port) as server:
        print(f"url      {server.url}")
        if not args.plain_apiserver:
            print(f"cluster  {server.url}/k8s/clusters/{HEALTHY}")
        if pki:
            print(f"ca       {pki.ca_cert}")
        print(f"token    {TOKEN}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
