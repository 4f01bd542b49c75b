"""End to end, fuzzed (issue 10, build 3): raw-socket requests through a real mitmdump with the
addon and the shipped rules, in reverse mode, beside a plain mitmdump (no addon) that gets the
same requests: what the plain one forwards is what mitmproxy makes of a request, i.e. what the
addon saw and what it must leave alone.

Requests come from a seeded RNG: bearer entries random and malformed, in both alphabets, padded
or not, empty, huge, with control and non-ASCII bytes, several of them, odd spacing, several
lines, folded lines; and requests that are not upgrades, or that no rule matches, with the same
junk. For each:

- refused by k8s-ws (its `k8s_ws:` body) -> the contract admits the refusal (tests/oracle.py), and
  the upstream saw nothing of it;
- forwarded -> the upstream saw one request: no fold, no bearer entry (read as Go reads it), the
  other protocols in order, `Authorization` exactly `Bearer <the decoded token>` (or the client's
  own, kept), every other line as mitmproxy forwards it without the addon;
- not an upgrade, or no rule -> the upstream saw exactly what the plain mitmdump forwards;
- and no token in any output: mitmdump's at --flow-detail 4 and debug verbosity, and the -w
  file, which holds one flow for every request mitmproxy parsed.

    python3 -m pytest tests/test_e2e_fuzz.py                                  # 300 requests, a random seed
    K8S_WS_FUZZ=5000 K8S_WS_FUZZ_SEED=1234 python3 -m pytest tests/test_e2e_fuzz.py   # more, or a replay

A failure names its seed. Issue 10's reproductions are named tests at the end.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import re
import socket
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import oracle
from fault_servers import RecordingUpstream
from helpers import BEARER_PREFIX, UPGRADES, b64url, flow_strings, read_flows, shown
from mitmdump_harness import Mitmdump
from oracle import PROTOCOL_HEADER_NAME, go_protocols, go_unfold, is_entry, lines_of, parse_head

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(0 if "K8S_WS_FUZZ" in os.environ else 120)]

COUNT = int(os.environ.get("K8S_WS_FUZZ", "300"))
SEED = int(os.environ.get("K8S_WS_FUZZ_SEED") or int.from_bytes(os.urandom(4), "big"))
PROTOCOL = PROTOCOL_HEADER_NAME

# --- the stack: two upstreams, mitmdump with the addon and a plain one ------------------------------


def _start_all(*proxies: Mitmdump) -> None:
    errors = []

    def start(proxy):
        try:
            proxy.start(timeout=60)
        except Exception as e:  # noqa: BLE001 - raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=start, args=(p,)) for p in proxies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for proxy in proxies:
            proxy.stop()
        raise errors[0]


@dataclass
class Run:
    """What one mitmdump with the addon printed and saved, read once it has stopped."""

    output: str
    flows: list


class Stack:
    """mitmdump with the addon (flow_detail 4, debug, -w) and plain mitmdump, in reverse mode, each
    in front of a recording upstream of its own."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.addon_upstream, self.plain_upstream = RecordingUpstream(), RecordingUpstream()
        self._generation = 0

    def __enter__(self) -> Stack:
        self.addon_upstream.__enter__()
        self.plain_upstream.__enter__()
        self.plain = Mitmdump(self.workdir / "plain", mode=f"reverse:http://127.0.0.1:{self.plain_upstream.port}", addon=False)
        self.addon = self._addon()
        _start_all(self.addon, self.plain)
        return self

    def _addon(self) -> Mitmdump:
        self._generation += 1
        workdir = self.workdir / f"addon-{self._generation}"
        self.flows_file = workdir / "flows.mitm"
        return Mitmdump(
            workdir,
            mode=f"reverse:http://127.0.0.1:{self.addon_upstream.port}",
            options={"flow_detail": 4},
            args=("-w", str(self.flows_file)),
        )

    def restart(self) -> Run:
        """Stop mitmdump with the addon (it writes its last flows), read what it printed and saved,
        and start a fresh one."""
        self.addon.stop()
        run = Run(self.addon.output(), read_flows(self.flows_file))
        self.addon = self._addon()
        self.addon.start(timeout=60)
        return run

    def __exit__(self, *exc) -> None:
        self.addon.stop()
        self.plain.stop()
        self.addon_upstream.__exit__()
        self.plain_upstream.__exit__()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("fuzz")) as stack:
        yield stack


# --- raw exchanges ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: the connection ended before a status line
    head: bytes
    body: bytes

    @property
    def refused_by_k8s_ws(self) -> bool:
        return self.status is not None and self.status >= 400 and self.body.startswith(b"k8s_ws:")


def exchange(port: int, request: bytes, timeout: float = 30) -> Answer:
    """Send a request on a connection of its own; read the answer's head and body; hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return Answer(None, data, b"")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        while length and len(body) < int(length[1]):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return Answer(status, head, body)


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- the generator ---------------------------------------------------------------------------------

#: What Go trims (but LF, which only stands in a fold), what it keeps, bytes that are not UTF-8.
PADDING = [c.encode() for c in oracle.GO_SPACE if c != "\n"] + [c.encode() for c in oracle.NOT_GO_SPACE] + [b"\xa0", b"\xff", b"\xc2"]
KNOWN = [b"v4.channel.k8s.io", b"base64.binary.k8s.io", b"channel.k8s.io", b"v5.channel.k8s.io"]
NEAR_MISSES = [b"Base64url.bearer.authorization.k8s.io.", b"base64url.bearer.authorization.k8s.io", ("\u200b" + BEARER_PREFIX).encode()]
FOLD = object()
UPGRADE_ROWS = [param.values for param in UPGRADES]
KEY_ALPHABET = string.ascii_letters + string.digits


@dataclass
class Request:
    n: int
    head: bytes
    applies: bool  # an upgrade on a path the shipped rule matches
    secrets: set[str] = field(default_factory=set)
    residues: list[str] = field(default_factory=list)

    @property
    def marker(self) -> str:
        return f"fz{self.n:05d}"


class Fuzzer:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def token(self) -> str:
        rng = self.rng
        kind = rng.choices(["rancher", "unicode", "control", "huge", "odd"], [8, 2, 1, 1, 1])[0]
        key = "".join(rng.choices(KEY_ALPHABET, k=rng.randint(20, 54)))
        if kind == "rancher":
            return f"token-{''.join(rng.choices(string.ascii_lowercase, k=5))}:{key}"
        if kind == "unicode":
            return f"t\u00f6k\u00e9n-{key}-\u2603"
        if kind == "control":
            return f"token-ctl:{key}\x01\x7f"
        if kind == "huge":
            return "token-huge:" + "".join(rng.choices(KEY_ALPHABET, k=rng.randint(4000, 12000)))
        return f">>>?~{key}?>>"  # '+' and '/' in standard base64, '-' and '_' in base64url

    def payload(self) -> list:
        rng = self.rng
        kind = rng.choices(["token", "mangled", "empty", "junk"], [6, 3, 1, 1])[0]
        if kind == "empty":
            return []
        if kind == "junk":
            return [bytes(rng.randrange(256) for _ in range(rng.randint(1, 12))).replace(b"\n", b"")]
        raw = self.token().encode()
        encoded = (base64.urlsafe_b64encode(raw) if rng.random() < 0.5 else base64.b64encode(raw)).decode()
        if rng.random() < 0.5:
            encoded = encoded.rstrip("=")
        if kind == "token":
            return [encoded.encode()]
        at = rng.randint(0, len(encoded))
        head, tail = encoded[:at].encode(), encoded[at:].encode()
        return rng.choice(
            [
                [head, rng.choice([b"!", b"*", b".", b" ", b"=", "\u00e9".encode(), b"\xa0", b"\xff", b"\x00", b"+", b"_"]), tail],
                [head, tail[1:]],
                [encoded.encode(), b"=" * rng.randint(1, 3)],
                [head],
                [head, FOLD, tail],
            ]
        )

    def element(self) -> list:
        rng = self.rng
        kind = rng.choices(["entry", "near miss", "known", "junk", "empty"], [5, 1, 3, 1, 1])[0]
        if kind == "entry":
            body = [BEARER_PREFIX.encode(), *self.payload()]
        elif kind == "near miss":
            body = [rng.choice(NEAR_MISSES), *self.payload()]
        elif kind == "known":
            body = [rng.choice(KNOWN)]
        elif kind == "junk":
            body = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))).replace(b"\n", b"")]
        else:
            body = []

        def padding():
            return [rng.choice(PADDING + [FOLD]) for _ in range(rng.choices([0, 1, 2, 3], [4, 3, 1, 1])[0])]

        return [*padding(), *body, *padding()]

    def protocol_lines(self) -> list[bytes]:
        rng = self.rng
        name = rng.choice([PROTOCOL, "sec-websocket-protocol", "SEC-WEBSOCKET-PROTOCOL"]).encode()
        pieces: list = []
        for i in range(rng.choices([1, 2, 3, 4, 5], [3, 4, 3, 1, 1])[0]):
            if i:
                pieces.append(b",")
            pieces.extend(self.element())
        lines, current = [], name + rng.choice([b": ", b":", b":\t", b":  "])
        for piece in pieces:
            if piece is FOLD:
                lines.append(current)
                current = rng.choice([b" ", b"\t", b"  "])
            else:
                current += piece
        return [*lines, current]

    def request(self, n: int) -> Request:
        rng = self.rng
        kind = rng.choices(["rule", "not an upgrade", "no rule"], [6, 2, 1])[0]
        marker = f"fz{n:05d}"
        if kind == "rule":
            path, upgrade = f"/k8s/clusters/c-1/api/v1/namespaces/{marker}/pods/p/exec?command=sh", rng.random() < 0.9
        elif kind == "no rule":
            paths = [f"/k8s/clusters/c-1/v1/namespaces/{marker}/pods/p/exec", f"/api/v1/namespaces/{marker}/pods/p/exec"]
            path, upgrade = rng.choice(paths), True
        else:
            path, upgrade = rng.choice([f"/healthz?{marker}", f"/k8s/clusters/c-1/api/v1/namespaces/{marker}/pods"]), False
        upgrade_lines, is_upgrade = rng.choice([row for row in UPGRADE_ROWS if row[1] == upgrade])
        request = Request(n, b"", applies=is_upgrade and kind == "rule")
        lines = [f"GET {path} HTTP/1.1".encode(), b"Host: x"]
        if upgrade_lines:
            lines.append(b"Connection: Upgrade")
        lines += [b"Upgrade: " + value.encode() for value in upgrade_lines]
        if is_upgrade:
            lines += [b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13"]
        if rng.random() < 0.1:
            lines.append(b"Authorization: Bearer " + self.token().replace("\x01", "").replace("\x7f", "").encode())
        for _ in range(rng.choices([0, 1, 2, 3], [1, 6, 2, 1])[0]):
            if rng.random() < 0.2:
                lines.append(b"X-Between: 1")
            lines += self.protocol_lines()
        request.head = b"\r\n".join(lines) + b"\r\n\r\n"
        request.secrets, request.residues = request_secrets(request.head)
        return request


# --- the oracle --------------------------------------------------------------------------------------


def request_secrets(head: bytes) -> tuple[set[str], list[str]]:
    """What must never be shown of a request (interface §6): the tokens of its bearer entries as
    the upstream reads them, in every form, and its Authorization values; and the rest of the
    head, which may be shown (a secret that also stands there in the clear is none)."""
    found, residues = set(), []
    for name, value in parse_head(head)[1]:
        if name.lower() == PROTOCOL.lower():
            secrets = oracle.protocol_value_secrets(value)
        elif name.lower() in ("authorization", "proxy-authorization"):
            secrets = oracle.head_secrets(f"Authorization: {value}")
        else:
            residues.append(f"{name}: {value}")
            continue
        found |= secrets.strings
        residues.append(secrets.residue)
    return {s for s in found if len(s) >= oracle.MIN_PIECE}, residues


def secrets_of(requests: list[Request]) -> set[str]:
    """The secrets of all these requests but those that any of them also shows in the clear (a
    near miss's payload, say, shares the start of every Rancher token's base64)."""
    shown = "\n".join(r for request in requests for r in request.residues)
    return {s for request in requests for s in request.secrets if s not in shown}



def _without(headers, *names):
    names = {n.lower() for n in names}
    return [(n, go_unfold(v)) for n, v in headers if n.lower() not in names]


def check(request: Request, addon: Answer, plain: Answer, at_addon: list, at_plain: list) -> None:
    """Everything that must hold of one request (see the module's docstring)."""
    name = f"request {request.n} ({request.marker}): {request.head[:400]!r}"
    if not at_plain:
        # mitmproxy itself took it for no HTTP: no hook ran, nothing can differ
        assert not at_addon and addon.status == plain.status, f"{name}: mitmproxy refused it, yet {addon} / {plain}"
        return
    (seen_plain,) = at_plain
    if not request.applies:
        assert len(at_addon) == 1, f"{name}: no rule applies, yet the upstream saw {len(at_addon)} requests; client got {addon}"
        assert _strip_host(at_addon[0].head) == _strip_host(seen_plain.head), f"{name}: changed, though no rule applies"
        assert addon.status == plain.status
        return
    offered = lines_of(parse_head(seen_plain.head)[1], PROTOCOL)
    allowed = oracle.expected_verdicts(offered, "header")
    if addon.refused_by_k8s_ws:
        assert oracle.Verdict(refused=True) in allowed, f"{name}: refused ({addon.body!r}); the contract says {allowed}"
        assert addon.status == 400, f"{name}: {addon}"
        assert not at_addon, f"{name}: refused, yet the upstream saw it"
        return
    forwards = [v for v in allowed if not v.refused]
    assert forwards, f"{name}: forwarded (client got {addon.status}); the contract says {allowed}"
    assert len(at_addon) == 1, f"{name}: the upstream saw {len(at_addon)} requests"
    (expected,) = forwards
    sent = at_addon[0].head
    assert not re.search(rb"\r\n[ \t]", sent), f"{name}: a fold went upstream: {sent!r}"
    _, headers = parse_head(sent)
    _, plain_headers = parse_head(seen_plain.head)
    received = go_protocols(lines_of(headers, PROTOCOL))
    assert received == [p for p in go_protocols(offered) if not is_entry(p)], f"{name}: upstream protocols {received!r}"
    client = lines_of(plain_headers, "Authorization")
    wanted = [f"Bearer {expected.token}"] if expected.token is not None and not client else client  # authorization: keep
    assert lines_of(headers, "Authorization") == wanted, f"{name}: Authorization upstream"
    assert _without(headers, "Host", PROTOCOL, "Authorization") == _without(plain_headers, "Host", PROTOCOL, "Authorization")


def _strip_host(head: bytes) -> bytes:
    return re.sub(rb"(?im)^host:[^\r\n]*\r\n", b"", head)


@contextlib.contextmanager
def seed_on_failure(seed: int):
    try:
        yield
    except AssertionError as e:
        raise AssertionError(f"{e}\n[fuzz seed {seed}: replay with K8S_WS_FUZZ_SEED={seed} K8S_WS_FUZZ={COUNT}]") from None


# --- the fuzz ----------------------------------------------------------------------------------------


def test_fuzzed_requests_through_mitmdump(stack):
    with seed_on_failure(SEED):
        fuzzer = Fuzzer(SEED)
        requests = [fuzzer.request(n) for n in range(COUNT)]

        def both(request):
            return exchange(stack.addon.port, request.head), exchange(stack.plain.port, request.head)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(both, requests))
        # An upstream records a request when it reads it; a refused one is never read.
        wait_until(lambda: stack.addon_upstream.count() + sum(a.refused_by_k8s_ws for a, _ in answers) >= stack.plain_upstream.count())
        for request, (addon, plain) in zip(requests, answers, strict=True):
            check(request, addon, plain, stack.addon_upstream.seen(request.marker), stack.plain_upstream.seen(request.marker))

        run = stack.restart()
        secrets = secrets_of(requests)
        assert "Traceback" not in run.output and "Addon error" not in run.output, run.output[-3000:]
        assert not shown(run.output, secrets), "a token in mitmdump's output"
        saved = {}
        for flow in run.flows:
            found = re.search(r"fz\d+", flow.request.path)
            saved.setdefault(found[0] if found else "", []).append(flow)
        for request, (addon, _) in zip(requests, answers, strict=True):
            parsed = bool(stack.plain_upstream.seen(request.marker)) or addon.refused_by_k8s_ws
            assert len(saved.get(request.marker, [])) == (1 if parsed else 0), f"request {request.n}: flows saved with -w"
        strings = flow_strings(run.flows)
        assert not [s for s in secrets if any(s in text for text in strings)], "a token in the -w file"
        handled = sum(r.applies for r in requests)
        print(f"fuzz seed {SEED}: {COUNT} requests, {handled} for the rule, {sum(a.refused_by_k8s_ws for a, _ in answers)} refused")


# --- issue 10's reproductions ------------------------------------------------------------------------
# H and the token of the issue: `c2VjcmV0LXRva2Vu` is base64 of `secret-token`.

SECRET = "secret-token"
ENTRY = BEARER_PREFIX + b64url(SECRET)
SECRETS = {SECRET, b64url(SECRET)}
HUNG_UP = "Client closed connection before completing request headers"  # mitmproxy's line (facts §6)


def issue_head(marker: str, *lines: bytes, path: str | None = None) -> bytes:
    path = path or f"/k8s/clusters/c-1/api/v1/namespaces/{marker}/pods/p/exec"
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
        + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + b"".join(line + b"\r\n" for line in lines)
    )


def test_issue_10_a_bearer_entry_on_a_folded_line_is_moved(stack):
    mark = len(stack.addon.output())
    head = issue_head("fz90001", b"Sec-WebSocket-Protocol: v4.channel.k8s.io,", b" " + ENTRY.encode()) + b"\r\n"
    answer = exchange(stack.addon.port, head)
    assert answer.status == 101
    (seen,) = stack.addon_upstream.seen("fz90001")
    assert not re.search(rb"\r\n[ \t]", seen.head), "a fold went upstream"
    headers = parse_head(seen.head)[1]
    assert lines_of(headers, "Authorization") == [f"Bearer {SECRET}"]
    assert go_protocols(lines_of(headers, PROTOCOL)) == ["v4.channel.k8s.io"]
    stack.addon.wait_for_output("fz90001", start=mark)
    assert not shown(stack.addon.output()[mark:], SECRETS)


def test_issue_10_a_non_ascii_byte_in_an_entry_is_a_400_not_a_500(stack):
    head = issue_head("fz90002", b"Sec-WebSocket-Protocol: v4.channel.k8s.io, " + ENTRY[:-2].encode() + "\u00e9".encode())
    answer = exchange(stack.addon.port, head + b"\r\n")
    assert answer.status == 400 and answer.body.startswith(b"k8s_ws: rule 'rancher': ")
    assert not stack.addon_upstream.seen("fz90002")


def test_issue_10_a_non_ascii_byte_on_a_request_that_is_no_upgrade_passes_untouched(stack):
    head = b"GET /healthz?fz90003 HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Protocol: " + BEARER_PREFIX.encode() + b"AAA\xff\r\n\r\n"
    addon, plain = exchange(stack.addon.port, head), exchange(stack.plain.port, head)
    assert addon.status == plain.status == 200
    (at_addon,), (at_plain,) = stack.addon_upstream.seen("fz90003"), stack.plain_upstream.seen("fz90003")
    assert _strip_host(at_addon.head) == _strip_host(at_plain.head)


@pytest.mark.parametrize(
    "head, printed",
    [
        pytest.param(issue_head("fz90004", f"Sec-WebSocket-Protocol: v4.channel.k8s.io, {ENTRY}".encode()), HUNG_UP,
                     id="hangs up mid-head, a bearer entry sent"),
        pytest.param(issue_head("fz90005", f"Authorization: Bearer {SECRET}".encode()), HUNG_UP,
                     id="hangs up mid-head, Authorization sent"),
        pytest.param(issue_head("fz90006", f"Authorization Bearer {SECRET}".encode()) + b"\r\n", "Invalid header line",
                     id="a header line mitmproxy cannot parse"),
        pytest.param(issue_head("fz90007", f"Sec-WebSocket-Protocol {ENTRY}".encode()) + b"\r\n", "Invalid header line",
                     id="a bearer entry on a line mitmproxy cannot parse"),
    ],
)
def test_issue_10_mitmproxy_s_own_line_about_a_head_shows_no_token(stack, head, printed):
    mark = len(stack.addon.output())
    with socket.create_connection(("127.0.0.1", stack.addon.port), timeout=10) as sock:
        sock.sendall(head)
        if printed == "Invalid header line":
            sock.recv(65536)  # mitmproxy's 400
    output = stack.addon.wait_for_output(printed, start=mark)[mark:]
    assert not shown(output, SECRETS), output


def test_issue_10_a_protocol_byte_that_is_not_utf8_does_not_stop_w(stack):
    head = issue_head("fz90008", b"Sec-WebSocket-Protocol: v4.channel.k8s.io\xff, " + ENTRY.encode()) + b"\r\n"
    assert exchange(stack.addon.port, head).status == 101
    headers = parse_head(stack.addon_upstream.seen("fz90008")[0].head)[1]
    assert lines_of(headers, "Authorization") == [f"Bearer {SECRET}"]
    run = stack.restart()
    assert "Addon error" not in run.output and "Traceback" not in run.output, run.output[-2000:]
    assert [f for f in run.flows if "fz90008" in f.request.path], "the flow was not saved"
    assert not [s for s in SECRETS if any(s in text for text in flow_strings(run.flows))]


def test_a_hint_quoting_a_byte_that_is_not_utf8_leaves_the_flow_savable(stack):
    # An upgrade no rule matches, on a Kubernetes API path (so it gets a hint), whose 101 names no
    # protocol: the hint quotes the offered protocol, and goes into the flow's comment.
    path = "/api/v1/namespaces/fz90009/pods/p/exec?no-protocol"
    head = issue_head("fz90009", b"Sec-WebSocket-Protocol: v4.channel.k8s.io\xff", path=path) + b"\r\n"
    assert exchange(stack.addon.port, head).status == 101
    run = stack.restart()
    assert "Addon error" not in run.output and "Traceback" not in run.output, run.output[-2000:]
    assert [f for f in run.flows if "fz90009" in f.request.path], "the flow was not saved"
