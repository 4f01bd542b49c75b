"""A real browser: Debian's chromium-headless-shell opens WebSockets the way Headlamp <= 0.34, the
OpenShift console and Gardener's dashboard do, through mitmdump in reverse mode with the shipped
rules.yaml, in front of the strict Rancher-like test server over TLS.

One Chromium process per module loads tests/browser_page.html from a small HTTP server of this
module on 127.0.0.1. The page asks for one scenario at a time (POST /next), builds the protocol
list and the token element in JavaScript as the console does (btoa() and all), opens
`new WebSocket(url, protocols)`, and posts back what the browser let it see: the SyntaxError from
the constructor, open, the chosen protocol, the messages, error, the close code. The test server
records what reached it.

Chromium runs with the issue's flags for a closed network and a fresh --user-data-dir, plus one:
--ignore-certificate-errors-spki-list with the test server's own key, only so that the page can
also be pointed straight at the very TLS server the proxy fronts (and fail there for Rancher's
reason, not for an unknown CA). The proxied sockets are ws:// to mitmdump, which verifies the
test server's certificate itself. If chromium-headless-shell is not installed the tests skip.

Expectations come from docs/protocol.md (cited as facts §N) and
tests/data/handshakes.yaml, not from our code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fake_rancher import HEALTHY, LOCAL

# standard_entry: Headlamp's and OpenShift's encoding, base64url_entry: Gardener's; computed in Python
# to check the page's btoa() and its base64url.
from helpers import DASH_UNDERSCORE_TOKEN, KUBECONFIG_TOKEN, PLUS_TOKEN, TOKEN, VECTORS, base64url_entry, standard_entry

pytestmark = pytest.mark.e2e  # Chromium, mitmdump and the test server

CHROMIUM_VECTOR = VECTORS["chromium-156-headlamp-exec"]
VECTOR_PROTOCOLS = [p.strip() for p in dict(CHROMIUM_VECTOR["headers"])["Sec-WebSocket-Protocol"].split(",")]
# Headlamp 0.34's exec list without the token element, which the page appends itself (facts §5)
HEADLAMP_EXEC = VECTOR_PROTOCOLS[:-1]
EXEC_QUERY = CHROMIUM_VECTOR["request"].split()[1].partition("?")[2]  # command=sh&stdin=1&stdout=1&tty=1
PAGE = Path(__file__).with_name("browser_page.html")

# The flags for a closed network, and a fresh profile per run.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


# --- the browser and its page -----------------------------------------------------------------------


@dataclass
class Outcome:
    """What the page saw of one `new WebSocket(url, protocols)`."""
    offered: list[str]
    exception: dict | None  # {"name", "message"} when the constructor threw
    events: list[str]  # open / message / error / close / timeout, in order
    protocol: str | None  # ws.protocol once open
    extensions: str | None
    messages: list  # bytes for binary messages, str for text
    close: dict | None  # {"code", "reason", "wasClean"}

    @property
    def opened(self) -> bool:
        return "open" in self.events


class Browser:
    """One headless Chromium on the test page; run() hands it a scenario and returns the outcome."""

    def __init__(self, workdir: Path, chromium: str, extra_flags: list[str]):
        self.workdir, self.chromium, self.extra_flags = workdir, chromium, extra_flags
        self.scenarios: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.page_loaded = threading.Event()
        self.log_file = workdir / "chromium.log"
        self.process: subprocess.Popen | None = None
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Browser:
        browser, page = self, PAGE.read_bytes()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # Chromium stopped while a long poll was pending
                    pass

            def do_GET(self):
                if self.path == "/":
                    self.reply(page, "text/html; charset=utf-8")
                else:
                    self.send_error(404)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/next":
                    browser.page_loaded.set()
                    try:
                        scenario = browser.scenarios.get(timeout=1.0)
                    except queue.Empty:
                        scenario = {}
                    self.reply(json.dumps(scenario).encode())
                elif self.path == "/result":
                    browser.results.put(json.loads(body))
                    self.reply(b"{}")
                else:
                    self.send_error(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="browser-page", daemon=True).start()
        command = [self.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self.workdir / 'profile'}",
                   *self.extra_flags, f"{self.page_origin}/"]
        with open(self.log_file, "wb") as log:
            # its own process group: the wrapper script /usr/bin/chromium-headless-shell does not exec
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)
        if not self.page_loaded.wait(30):
            self.stop()
            raise RuntimeError(f"Chromium did not load the test page in 30 s:\n{self.log()}")
        return self

    @property
    def page_origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:] if self.log_file.exists() else ""

    def run(self, url: str, protocols: list[str], *, token: str | None = None, encoding: str = "headlamp",
            token_first: bool = False, messages: int = 1, send: list[bytes] = (), timeout: float = 10.0) -> Outcome:
        scenario_id = uuid.uuid4().hex
        self.scenarios.put({"id": scenario_id, "url": url, "protocols": protocols, "token": token, "encoding": encoding,
                            "tokenFirst": token_first, "messages": messages, "send": [list(b) for b in send],
                            "timeoutMs": int(timeout * 1000)})
        deadline = time.monotonic() + timeout + 15
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Chromium exited with {self.process.returncode}:\n{self.log()}")
            try:
                result = self.results.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the page reported nothing for {url}:\n{self.log()}") from None
                continue
            if result["id"] == scenario_id:
                break
        messages = [bytes(m["binary"]) if "binary" in m else m["text"] for m in result["messages"]]
        return Outcome(result["offered"], result["exception"], result["events"], result["protocol"],
                       result["extensions"], messages, result["close"])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the group this test started, by its id
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def spki_sha256(cert_file: str) -> str:
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


# --- fixtures: one server, one mitmdump, one browser per module ---------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory, chromium, pki):
    # The only trust added to the browser: the test server's own key, so that the page pointed
    # straight at the very server the proxy fronts fails for Rancher's reason, not for an unknown CA.
    flags = [f"--ignore-certificate-errors-spki-list={spki_sha256(pki.cert)}"]
    b = Browser(tmp_path_factory.mktemp("chromium"), chromium, flags).start()
    yield b
    b.stop()


def via_proxy(reverse, path: str) -> str:
    return f"ws://127.0.0.1:{reverse.port}{path}"


def exec_path(namespace: str, cluster: str = HEALTHY, query: str = EXEC_QUERY) -> str:
    return f"/k8s/clusters/{cluster}/api/v1/namespaces/{namespace}/pods/p/exec?{query}"


def only_record(server, namespace: str):
    records = [r for r in server.records if f"/namespaces/{namespace}/" in r.target]
    assert len(records) == 1, f"expected one request for {namespace}, the server saw {records}"
    return records[0]


def nothing_recorded(server, namespace: str) -> bool:
    return not [r for r in server.records if f"/namespaces/{namespace}/" in r.target]


def assert_reached_rancher_as_header(record, rancher, token: str, protocols: str) -> None:
    """What Rancher must see for a browser socket to work (facts §4): the token in Authorization,
    no bearer element left, and the browser's Origin made to name the Host it was sent."""
    assert record.header_lines("Authorization") == [f"Bearer {token}"]
    assert record.header_lines("Sec-WebSocket-Protocol") == [protocols]
    assert record.header_lines("Host") == [rancher.host]
    assert record.header_lines("Origin") == [f"https://{rancher.host}"]
    user_agents = record.header_lines("User-Agent")
    assert len(user_agents) == 1 and "Mozilla" in user_agents[0] and "HeadlessChrome" in user_agents[0]


# --- Headlamp 0.34: exec, log follow, watch ------------------------------------------------------------


def test_headlamp_exec_through_reverse_mode(browser, reverse, rancher, direct_exec):
    stdin = b"\x00echo ping\n"  # channel 0 (facts §2)
    outcome = browser.run(via_proxy(reverse, exec_path("br-exec")), HEADLAMP_EXEC, token=TOKEN, messages=3, send=[stdin])
    assert outcome.offered == VECTOR_PROTOCOLS  # the page's btoa() gives the captured Chromium/Headlamp list
    assert outcome.exception is None
    assert outcome.events[:4] == ["open", "message", "message", "message"], outcome
    assert outcome.protocol == CHROMIUM_VECTOR["server_chose"]  # v4.channel.k8s.io: the 101 named it
    # the empty stdout message, the output, then our stdin echoed on stdout: both directions work
    assert outcome.messages == [b"\x01", b"\x01hello from exec\n", b"\x01echo ping\n"]
    assert outcome.close["code"] == 1000 and outcome.close["wasClean"]
    # The server agreed to Chromium's permessage-deflate: its compressed frames crossed the proxy intact.
    assert outcome.extensions.startswith("permessage-deflate")
    record = only_record(rancher, "br-exec")
    assert record.status == 101 and record.subprotocol == "v4.channel.k8s.io"
    assert_reached_rancher_as_header(record, rancher, TOKEN, ", ".join(HEADLAMP_EXEC))
    # Every other header went through as the browser sends it (seen without the proxy), in order.
    _, sent = direct_exec
    changed = {"host", "origin", "sec-websocket-key", "sec-websocket-protocol", "authorization"}
    assert [n for n, _ in record.headers if n != "Authorization"] == [n for n, _ in sent.headers]
    assert [h for h in record.headers if h[0].lower() not in changed] == [h for h in sent.headers if h[0].lower() not in changed]


def test_headlamp_log_follow_through_reverse_mode(browser, reverse, rancher):
    # KUBECONFIG_TOKEN's base64 ends in '==', which Headlamp strips; the 'local' cluster (facts §4).
    path = f"/k8s/clusters/{LOCAL}/api/v1/namespaces/br-log/pods/p/log?container=c&follow=true&timestamps=true"
    outcome = browser.run(via_proxy(reverse, path), ["base64.binary.k8s.io"], token=KUBECONFIG_TOKEN, messages=4)
    assert outcome.offered == ["base64.binary.k8s.io", standard_entry(KUBECONFIG_TOKEN)]
    assert outcome.events[:5] == ["open", "message", "message", "message", "message"], outcome
    assert outcome.protocol == "base64.binary.k8s.io"
    # text frames of base64 (facts §2): the empty first message, then the lines
    assert [base64.b64decode(m) for m in outcome.messages] == [b"", b"line 1\n", b"line 2\n", b"line 3\n"]
    record = only_record(rancher, "br-log")
    assert record.status == 101
    assert_reached_rancher_as_header(record, rancher, KUBECONFIG_TOKEN, "base64.binary.k8s.io")


def test_headlamp_watch_through_reverse_mode(browser, reverse, rancher):
    # A watch needs an Origin and exactly one protocol left (facts §2): a leftover token element
    # or a removed Origin would break it even with Authorization set.
    path = f"/k8s/clusters/{HEALTHY}/api/v1/namespaces/br-watch/pods?watch=1"
    outcome = browser.run(via_proxy(reverse, path), ["base64.binary.k8s.io"], token=TOKEN, messages=1)
    assert outcome.events[:2] == ["open", "message"], outcome
    assert outcome.protocol == "base64.binary.k8s.io"
    event = json.loads(outcome.messages[0])
    assert event["type"] == "ADDED" and event["object"]["kind"] == "Pod"
    record = only_record(rancher, "br-watch")
    assert record.status == 101
    assert_reached_rancher_as_header(record, rancher, TOKEN, "base64.binary.k8s.io")


# --- the other consoles' encodings and orders ------------------------------------------------------------


def test_openshift_order_token_first(browser, reverse, rancher):
    # Standard base64 with '+' (which a browser allows), token element first (facts §5).
    assert "+" in standard_entry(PLUS_TOKEN) and "/" not in standard_entry(PLUS_TOKEN)
    path = f"/k8s/clusters/{HEALTHY}/api/v1/namespaces/br-openshift/pods?watch=1"
    outcome = browser.run(via_proxy(reverse, path), ["base64.binary.k8s.io"], token=PLUS_TOKEN, encoding="openshift",
                          token_first=True, messages=1)
    assert outcome.offered == [standard_entry(PLUS_TOKEN), "base64.binary.k8s.io"]
    assert outcome.events[:2] == ["open", "message"], outcome
    assert json.loads(outcome.messages[0])["type"] == "ADDED"
    assert_reached_rancher_as_header(only_record(rancher, "br-openshift"), rancher, PLUS_TOKEN, "base64.binary.k8s.io")


def test_a_headlamp_token_with_slash_never_leaves_the_browser(browser, reverse, rancher):
    # DASH_UNDERSCORE_TOKEN's standard base64 holds '/': the constructor throws before sending
    # anything (facts §3). No proxy can help such a console; the server sees nothing.
    assert "/" in standard_entry(DASH_UNDERSCORE_TOKEN)
    outcome = browser.run(via_proxy(reverse, exec_path("br-slash")), HEADLAMP_EXEC, token=DASH_UNDERSCORE_TOKEN)
    assert outcome.exception is not None and outcome.exception["name"] == "SyntaxError", outcome
    assert outcome.events == []
    assert nothing_recorded(rancher, "br-slash")


def test_gardener_base64url_token_with_dash_and_underscore(browser, reverse, rancher):
    # The same token in true base64url ('-' and '_'), first, as Gardener sends it (facts §5).
    entry = base64url_entry(DASH_UNDERSCORE_TOKEN)
    assert "-" in entry and "_" in entry
    outcome = browser.run(via_proxy(reverse, exec_path("br-gardener", query="command=sh&stdout=1")), ["v4.channel.k8s.io"],
                          token=DASH_UNDERSCORE_TOKEN, encoding="gardener", token_first=True, messages=2)
    assert outcome.offered == [entry, "v4.channel.k8s.io"]
    assert outcome.exception is None and outcome.events[:3] == ["open", "message", "message"], outcome
    assert outcome.protocol == "v4.channel.k8s.io"
    assert outcome.messages == [b"\x01", b"\x01hello from exec\n"]
    record = only_record(rancher, "br-gardener")
    assert record.status == 101
    assert_reached_rancher_as_header(record, rancher, DASH_UNDERSCORE_TOKEN, "v4.channel.k8s.io")


# --- without the proxy ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def direct_exec(browser, rancher):
    """The Headlamp exec socket from the page straight to the very TLS server the proxy fronts."""
    outcome = browser.run(f"wss://{rancher.host}{exec_path('br-direct')}", HEADLAMP_EXEC, token=TOKEN, messages=3)
    return outcome, only_record(rancher, "br-direct")


def test_the_same_page_straight_to_rancher_fails_as_rancher_makes_it_fail(browser, direct_exec):
    # Rancher's origin check runs first and refuses the browser: a 403 that the page only sees as
    # error + close 1006 (facts §3, §4). (Past that check Rancher would still find no token: it
    # reads none from Sec-WebSocket-Protocol.)
    outcome, record = direct_exec
    assert outcome.exception is None
    assert outcome.events == ["error", "close"], outcome  # never open
    assert outcome.close["code"] == 1006 and not outcome.close["wasClean"]
    assert record.status == 403
    assert json.loads(record.body)["Message"] == "origin not allowed"
    # what the browser sent: its own Origin, the token only as the bearer element (facts §3)
    assert record.header_lines("Origin") == [browser.page_origin]
    assert record.header_lines("Authorization") == []
    assert record.header("Sec-WebSocket-Protocol") == ", ".join(VECTOR_PROTOCOLS)
    assert "Mozilla" in record.header("User-Agent")
