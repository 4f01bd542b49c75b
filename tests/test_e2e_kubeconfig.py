"""The kubeconfig that `k8s-ws kubeconfig` writes, used by real clients through real mitmdump
processes with the shipped rules.yaml, in front of the strict Rancher-like test server over TLS,
whose CA is private (issue 11; interface §7). And `k8s-ws diagnose --context` against that server.

How each mitmdump is set up: it starts first (its confdir gets mitmproxy's CA, and its port is
known), with `ssl_verify_upstream_trusted_ca` naming a file that does not exist yet; then
`k8s-ws kubeconfig --mitmproxy-ca <its CA> --upstream-ca-out <that file>` writes it. mitmproxy
reads that file at its first upstream connection, so the proxy verifies the test server with the
very CA file the command wrote, and nothing else. The printed mitmdump line is checked against
the harness's options: the same mode, confdir and upstream CA.

The clients:
- kubectl (exec -i over WebSocket v5.channel.k8s.io, logs -f) with KUBECONFIG=<the new file>;
- the Python `kubernetes` client, `load_kube_config()` of the new file: stream() exec and a log;
- the Headlamp <= 0.30 kubeconfig-token shape (handshakes.yaml's
  headlamp-server-0.30-kubeconfig-token-log-follow): headlamp-server is a client-go program, so it
  takes server, proxy-url, CA and token from the kubeconfig exactly as kubectl does; a `websockets`
  client here does the same from the new file and sends the vector's browser User-Agent and foreign
  Origin beside the kubeconfig's Authorization. Not Headlamp itself;
- headless Chromium with --proxy-server (not a kubeconfig client: the browser recipe).

Expectations come from docs/protocol.md (facts §N) and tests/data/handshakes.yaml.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shlex
import shutil
import ssl
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes import config as kube_config
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fake_rancher import HEALTHY, LOCAL
from helpers import BEARER_PREFIX, HEADLAMP_EXEC_PROTOCOLS, KUBECONFIG_TOKEN, TOKEN, VECTORS, interactive_exec, secret_forms
from mitmdump_harness import ROOT, Mitmdump

pytestmark = pytest.mark.e2e  # mitmdump processes, the test server, kubectl, Chromium

HEADLAMP_030 = VECTORS["headlamp-server-0.30-kubeconfig-token-log-follow"]
HEADLAMP_030_HEADERS = dict(HEADLAMP_030["headers"])
# The API part of its request, after the Rancher cluster prefix that comes from the kubeconfig's server
HEADLAMP_030_API_PATH = HEADLAMP_030["request"].split()[1].partition("/k8s/clusters/c-m-abc")[2]
MODES = [pytest.param("regular", id="regular"), pytest.param("reverse", id="reverse")]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def assert_no_token(*texts: str) -> None:
    for token in (TOKEN, KUBECONFIG_TOKEN):
        for form in secret_forms(token):
            assert not any(form in text for text in texts), "a token was printed"


# --- the input, the proxies, and the command --------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: Path
    content: bytes
    mode: int

    @property
    def document(self) -> dict:
        return yaml.safe_load(self.content)


@pytest.fixture(scope="module")
def source(tmp_path_factory, rancher, apiserver, pki) -> Source:
    """A Rancher-style kubeconfig: a cluster with certificate-authority-data, one with a relative
    certificate-authority file (the 'local' cluster, another user's token), and a plain
    kube-apiserver that must stay as it is."""
    directory = tmp_path_factory.mktemp("kubeconfig-in")
    shutil.copy(pki.ca_cert, directory / "rancher-ca.pem")
    ca_data = b64(Path(pki.ca_cert).read_text())
    path = directory / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [
            {"name": "rancher", "cluster": {"server": f"{rancher.url}/k8s/clusters/{HEALTHY}", "certificate-authority-data": ca_data}},
            {"name": "rancher-local",
             "cluster": {"server": f"{rancher.url}/k8s/clusters/{LOCAL}", "certificate-authority": "rancher-ca.pem"}},
            {"name": "apiserver", "cluster": {"server": apiserver.url, "certificate-authority-data": ca_data}},
        ],
        "users": [{"name": "rancher-user", "user": {"token": TOKEN}}, {"name": "kubeconfig-user", "user": {"token": KUBECONFIG_TOKEN}}],
        "contexts": [
            {"name": "rancher", "context": {"cluster": "rancher", "user": "rancher-user"}},
            {"name": "local", "context": {"cluster": "rancher-local", "user": "kubeconfig-user"}},
            {"name": "apiserver", "context": {"cluster": "apiserver", "user": "rancher-user"}},
        ],
        "current-context": "rancher",
    }, sort_keys=False))
    path.chmod(0o640)
    return Source(path, path.read_bytes(), stat.S_IMODE(path.stat().st_mode))


def k8s_ws(*args: str, home: Path) -> subprocess.CompletedProcess:
    """The k8s-ws command as a user runs it, with a HOME of its own (no ~/.mitmproxy, no ~/.kube)."""
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONPATH": str(ROOT / "addon")}
    return subprocess.run([sys.executable, "-m", "kubews.cli", *args], env=env, capture_output=True, text=True, timeout=60)


@dataclass(frozen=True)
class Routed:
    """A mitmdump, and the kubeconfig k8s-ws wrote for it."""

    mode: str  # regular or reverse
    proxy: Mitmdump
    kubeconfig: Path
    upstream_ca: Path
    stdout: str

    @property
    def document(self) -> dict:
        return yaml.safe_load(self.kubeconfig.read_text())

    @property
    def command(self) -> list[str]:
        [line] = [line for line in self.stdout.splitlines() if line.startswith("  mitmdump ")]
        return shlex.split(line)


def routed_through(workdir: Path, source: Source, proxy: Mitmdump, mode: str, mode_args: list[str]) -> Routed:
    output, upstream_ca = workdir / "k8s-ws.yaml", workdir / "upstream-ca.pem"
    result = k8s_ws("kubeconfig", str(source.path), "-o", str(output), *mode_args, "--mitmproxy-ca", str(proxy.ca_cert),
                    "--upstream-ca-out", str(upstream_ca), home=workdir / "home")
    assert result.returncode == 0, result.stderr
    assert_no_token(result.stdout, result.stderr)
    return Routed(mode, proxy, output, upstream_ca, result.stdout)


@pytest.fixture(scope="module")
def regular(tmp_path_factory, source, rancher):
    workdir = tmp_path_factory.mktemp("kubeconfig-regular")
    with Mitmdump(workdir, upstream_ca=str(workdir / "upstream-ca.pem")) as proxy:
        yield routed_through(workdir, source, proxy, "regular", ["--proxy", proxy.url])


@pytest.fixture(scope="module")
def reverse(tmp_path_factory, source, rancher):
    workdir = tmp_path_factory.mktemp("kubeconfig-reverse")
    with Mitmdump(workdir, mode=f"reverse:{rancher.url}", upstream_ca=str(workdir / "upstream-ca.pem")) as proxy:
        yield routed_through(workdir, source, proxy, "reverse", ["--reverse", f"https://127.0.0.1:{proxy.port}"])


@pytest.fixture
def routed(request, regular, reverse) -> Routed:
    return {"regular": regular, "reverse": reverse}[request.param]


# --- what was written ----------------------------------------------------------------------------


@pytest.mark.parametrize("routed", MODES, indirect=True)
def test_the_printed_mitmdump_line_is_the_one_that_runs(routed, rancher, pki):
    command, proxy = routed.command, routed.proxy
    assert command[:3] == ["mitmdump", "-s", str(ROOT / "addon" / "k8s_ws.py")]
    assert command[command.index("--listen-port") + 1] == str(proxy.port)
    options = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert options == [f"confdir={proxy.confdir}", f"ssl_verify_upstream_trusted_ca={routed.upstream_ca}"]
    if routed.mode == "reverse":
        assert command[command.index("--mode") + 1] == f"reverse:{rancher.url}"  # as the harness started it
    else:
        assert "--mode" not in command  # mitmdump's default, regular
    # the clusters' own CA, once: what mitmdump verified the test server with in every test here
    assert routed.upstream_ca.read_text() == Path(pki.ca_cert).read_text()


@pytest.mark.parametrize("routed", MODES, indirect=True)
def test_the_new_file_is_private_and_changes_only_the_rancher_clusters(routed, source):
    assert stat.S_IMODE(routed.kubeconfig.stat().st_mode) == 0o600
    before, after = source.document, routed.document
    assert {k: v for k, v in after.items() if k != "clusters"} == {k: v for k, v in before.items() if k != "clusters"}
    assert [c["name"] for c in after["clusters"]] == [c["name"] for c in before["clusters"]]
    assert after["clusters"][2] == before["clusters"][2]  # the plain kube-apiserver


def test_the_input_is_left_as_it_was(source, regular, reverse):
    assert source.path.read_bytes() == source.content
    assert stat.S_IMODE(source.path.stat().st_mode) == source.mode


# --- kubectl ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory):
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip(f"kubectl not found on PATH: {os.environ.get('PATH', '')} (these tests need kubectl >= 1.30)")
    workdir = tmp_path_factory.mktemp("kubectl-homes")
    runs = iter(range(1_000_000))

    def run(kubeconfig: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        # A fresh HOME per run (no discovery cache), no proxy variables: only the kubeconfig routes.
        home = workdir / f"home-{next(runs)}"
        home.mkdir()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "KUBECONFIG": str(kubeconfig)}
        return subprocess.run([path, *args], input=stdin, env=env, capture_output=True, text=True, timeout=60)

    return run


def only_record(server, namespace: str, suffix: str):
    records = [r for r in server.records if f"/namespaces/{namespace}/" in r.target and r.path.endswith(suffix)]
    assert len(records) == 1, f"expected one {suffix} for {namespace}, the server saw {server.records}"
    return records[0]


@pytest.mark.parametrize("routed", MODES, indirect=True)
def test_kubectl_exec_over_websocket(routed, kubectl, rancher):
    namespace = f"kc-exec-{routed.mode}"
    result = kubectl(routed.kubeconfig, "exec", "-i", "-n", namespace, "p", "--", "cat", stdin="ping\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from exec\nping\n"  # both directions of the stream
    upgrade = only_record(rancher, namespace, "/pods/p/exec")
    assert upgrade.status == 101 and upgrade.subprotocol == "v5.channel.k8s.io"  # WebSocket, no SPDY fallback
    assert upgrade.header_lines("Authorization") == [f"Bearer {TOKEN}"]
    assert upgrade.header_lines("User-Agent")[0].startswith("kubectl/")
    routed.proxy.wait_for_output(f"/namespaces/{namespace}/pods/p/exec")  # it went through the proxy


@pytest.mark.parametrize("routed", MODES, indirect=True)
def test_kubectl_logs_follow_on_the_cluster_whose_ca_was_a_file(routed, kubectl, rancher):
    namespace = f"kc-logs-{routed.mode}"
    result = kubectl(routed.kubeconfig, "--context", "local", "logs", "-f", "-n", namespace, "p")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "line 1\nline 2\nline 3\n"
    log = only_record(rancher, namespace, "/pods/p/log")
    assert "follow=true" in log.target and log.status == 200
    assert log.header_lines("Authorization") == [f"Bearer {KUBECONFIG_TOKEN}"]
    # A plain GET gets no addon line; mitmdump's own line for it (its URL cut short) shows it went through.
    routed.proxy.wait_for_output(f"/k8s/clusters/{LOCAL}/api/v1/names")


def test_kubectl_reaches_the_plain_apiserver_as_before(regular, kubectl, apiserver):
    mark = len(regular.proxy.output())
    result = kubectl(regular.kubeconfig, "--context", "apiserver", "get", "pod", "-n", "kc-plain", "p", "-o", "name")
    assert (result.returncode, result.stdout) == (0, "pod/p\n"), result.stderr
    assert "kc-plain" not in regular.proxy.output()[mark:]  # straight to the server, as the input had it


# --- the Python client -------------------------------------------------------------------------------


@pytest.fixture
def no_proxy_environment(monkeypatch):
    # websocket-client reads NO_PROXY from the environment (tests/test_python_client.py)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def python_client(kubeconfig: Path, context: str) -> client.CoreV1Api:
    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=str(kubeconfig), context=context, client_configuration=configuration)
    return client.CoreV1Api(client.ApiClient(configuration))


@pytest.mark.parametrize("routed", MODES, indirect=True)
def test_python_client_stream_exec_and_log(routed, rancher, no_proxy_environment):
    api = python_client(routed.kubeconfig, "rancher")
    namespace = f"kc-py-{routed.mode}"
    assert interactive_exec(api, namespace) == "hello from exec\nping\n"
    assert api.read_namespaced_pod_log("p", namespace, follow=True) == "line 1\nline 2\nline 3\n"
    upgrade = only_record(rancher, namespace, "/pods/p/exec")
    assert upgrade.status == 101 and upgrade.header_lines("Authorization") == [f"Bearer {TOKEN}"]
    routed.proxy.wait_for_output(f"/namespaces/{namespace}/pods/p/exec")


# --- Headlamp <= 0.30 with a kubeconfig token ----------------------------------------------------------


@dataclass(frozen=True)
class ClientGoView:
    """What a client-go program (headlamp-server) takes from a kubeconfig context."""

    server: str
    proxy: str | None
    tls: ssl.SSLContext
    token: str


def client_go_view(kubeconfig: dict, context: str) -> ClientGoView:
    named = {plural: {e["name"]: e[plural[:-1]] for e in kubeconfig[plural]} for plural in ("clusters", "users", "contexts")}
    ctx = named["contexts"][context]
    cluster, user = named["clusters"][ctx["cluster"]], named["users"][ctx["user"]]
    tls = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    return ClientGoView(cluster["server"], cluster.get("proxy-url"), tls, user["token"])


async def headlamp_030_log_follow(view: ClientGoView, namespace: str):
    """headlamp-server <= 0.30's upgrade for a log follow (the vector): no bearer entry, the
    kubeconfig's Authorization, the Electron renderer's User-Agent and Origin."""
    assert view.server.startswith("https://")
    url = "wss://" + view.server.removeprefix("https://") + HEADLAMP_030_API_PATH.replace("/default/", f"/{namespace}/")
    host = view.server.split("/")[2]
    try:
        async with connect(
            url, subprotocols=[HEADLAMP_030_HEADERS["Sec-WebSocket-Protocol"]], origin=HEADLAMP_030_HEADERS["Origin"],
            user_agent_header=HEADLAMP_030_HEADERS["User-Agent"], ssl=view.tls, proxy=view.proxy, open_timeout=10,
            additional_headers=[("Authorization", f"Bearer {view.token}"), ("X-Forwarded-Host", host), ("X-Forwarded-For", "127.0.0.1")],
        ) as ws:
            messages = [await asyncio.wait_for(ws.recv(), 10) for _ in range(4)]
            return 101, ws.subprotocol, messages
    except InvalidStatus as e:
        return e.response.status_code, None, e.response.body


def test_headlamp_030_kubeconfig_token_straight_to_rancher_is_refused(source, rancher):
    status, _, body = asyncio.run(headlamp_030_log_follow(client_go_view(source.document, "rancher"), "hl-straight"))
    assert status == 403 and b"origin not allowed" in body  # facts §4: the browser User-Agent, a foreign Origin
    record = only_record(rancher, "hl-straight", "/pods/p/log")
    assert record.header_lines("Authorization") == [f"Bearer {TOKEN}"]  # the token was there all along


@pytest.mark.parametrize("routed", MODES, indirect=True)
def test_headlamp_030_kubeconfig_token_through_k8s_ws(routed, rancher):
    view = client_go_view(routed.document, "rancher")
    namespace = f"hl-{routed.mode}"
    status, protocol, messages = asyncio.run(headlamp_030_log_follow(view, namespace))
    assert (status, protocol) == (101, "base64.binary.k8s.io")
    assert [base64.b64decode(m) for m in messages] == [b"", b"line 1\n", b"line 2\n", b"line 3\n"]
    record = only_record(rancher, namespace, "/pods/p/log")
    assert record.header_lines("Authorization") == [f"Bearer {TOKEN}"]
    assert record.header_lines("Origin") == [f"https://{rancher.host}"]  # the shipped rule's origin: match-host
    assert record.header_lines("User-Agent") == [HEADLAMP_030_HEADERS["User-Agent"]]
    assert BEARER_PREFIX not in (record.header("Sec-WebSocket-Protocol") or "")


# --- a browser with --proxy-server ---------------------------------------------------------------------


def browser_through(workdir: Path, chromium: str, regular: Routed, bypass_loopback: bool):
    from test_browser import Browser, spki_sha256  # the page and its driver (tests/test_browser.py)

    # Chromium trusts mitmproxy's CA here by its key: mitmproxy signs every certificate it makes
    # with the CA's own key, so that key's SPKI covers them all. (The recipe imports the CA with
    # certutil, which this machine lacks; that step is not tested.)
    flags = [f"--proxy-server={regular.proxy.url}", f"--ignore-certificate-errors-spki-list={spki_sha256(str(regular.proxy.ca_cert))}"]
    if not bypass_loopback:
        flags.append("--proxy-bypass-list=<-loopback>")  # else Chromium never proxies 127.0.0.1
    return Browser(workdir, chromium, flags).start()


def test_chromium_with_proxy_server_opens_headlamps_exec_socket(tmp_path, chromium, regular, rancher):
    browser = browser_through(tmp_path, chromium, regular, bypass_loopback=False)
    try:
        path = f"/k8s/clusters/{HEALTHY}/api/v1/namespaces/kc-chromium/pods/p/exec?command=sh&stdin=1&stdout=1&tty=1"
        outcome = browser.run(f"wss://{rancher.host}{path}", list(HEADLAMP_EXEC_PROTOCOLS), token=TOKEN, messages=2)
    finally:
        browser.stop()
    assert outcome.events[:3] == ["open", "message", "message"], outcome
    assert outcome.protocol == "v4.channel.k8s.io" and outcome.messages == [b"\x01", b"\x01hello from exec\n"]
    record = only_record(rancher, "kc-chromium", "/pods/p/exec")
    assert record.header_lines("Authorization") == [f"Bearer {TOKEN}"]
    assert record.header_lines("Origin") == [f"https://{rancher.host}"]
    regular.proxy.wait_for_output("/namespaces/kc-chromium/pods/p/exec")


def test_chromium_goes_straight_to_a_loopback_server_without_the_bypass_rule(tmp_path, chromium, regular, rancher):
    browser = browser_through(tmp_path, chromium, regular, bypass_loopback=True)
    try:
        path = f"/k8s/clusters/{HEALTHY}/api/v1/namespaces/kc-bypass/pods/p/exec?command=sh&stdout=1"
        outcome = browser.run(f"wss://{rancher.host}{path}", ["v4.channel.k8s.io"], token=TOKEN, timeout=5)
    finally:
        browser.stop()
    # Straight to the server: its certificate is not mitmproxy's, so TLS fails and nothing arrives.
    assert "open" not in outcome.events, outcome
    assert "kc-bypass" not in regular.proxy.output()
    assert not [r for r in rancher.records if "kc-bypass" in r.target]


# --- diagnose --context ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diagnose_kubeconfig(tmp_path_factory, rancher, pki) -> Path:
    """Contexts for every way a kubeconfig gives the CA and the token."""
    directory = tmp_path_factory.mktemp("diagnose")
    shutil.copy(pki.ca_cert, directory / "ca.pem")
    (directory / "token").write_text(KUBECONFIG_TOKEN + "\n")
    base = f"{rancher.url}/k8s/clusters"
    path = directory / "config"
    path.write_text(yaml.safe_dump({
        "clusters": [
            {"name": "data", "cluster": {"server": f"{base}/{HEALTHY}", "certificate-authority-data": b64(Path(pki.ca_cert).read_text())}},
            {"name": "file", "cluster": {"server": f"{base}/{LOCAL}", "certificate-authority": "ca.pem"}},
            {"name": "loose", "cluster": {"server": f"{base}/{HEALTHY}", "insecure-skip-tls-verify": True}},
            {"name": "system", "cluster": {"server": f"{base}/{HEALTHY}"}},
        ],
        "users": [{"name": "token", "user": {"token": TOKEN}}, {"name": "token-file", "user": {"tokenFile": "token"}}],
        "contexts": [
            {"name": "data", "context": {"cluster": "data", "user": "token", "namespace": "dg-data"}},
            {"name": "file", "context": {"cluster": "file", "user": "token-file"}},
            {"name": "loose", "context": {"cluster": "loose", "user": "token"}},
            {"name": "system", "context": {"cluster": "system", "user": "token"}},
        ],
        "current-context": "data",
    }))
    return path


def diagnose(capsys, *argv: str):
    from kubews import cli

    status = cli.main(["diagnose", *argv])
    out, err = capsys.readouterr()
    assert_no_token(out, err)
    return status, out, err


@pytest.mark.parametrize(
    "context, path, token, probed",
    [
        pytest.param("data", [], TOKEN, "/api/v1/namespaces/dg-data/pods?watch=1", id="CA data, token, the default watch"),
        pytest.param("file", ["/api/v1/namespaces/dg-file/pods/p/log?follow=true"], KUBECONFIG_TOKEN,
                     "/api/v1/namespaces/dg-file/pods/p/log?follow=true", id="CA file, tokenFile, a path"),
        pytest.param("loose", ["/api/v1/namespaces/dg-loose/pods?watch=1"], TOKEN, "/api/v1/namespaces/dg-loose/pods?watch=1",
                     id="insecure-skip-tls-verify from the kubeconfig"),
    ],
)
def test_diagnose_context_takes_url_token_and_ca_from_the_kubeconfig(capsys, rancher, diagnose_kubeconfig, context, path, token, probed):
    rancher.clear()
    status, out, err = diagnose(capsys, *path, "--context", context, "--kubeconfig", str(diagnose_kubeconfig))
    assert status == 0, out + err
    assert err.splitlines()[0].startswith(f"context '{context}' ({diagnose_kubeconfig}:")
    assert "works: token in header, User-Agent browser, Origin matching" in out
    assert all(r.target.endswith(probed) for r in rancher.records) and len(rancher.records) == 12
    assert sum(r.header_lines("Authorization") == [f"Bearer {token}"] for r in rancher.records) == 6  # the header variants


def test_diagnose_context_trusts_only_what_the_kubeconfig_says(capsys, diagnose_kubeconfig):
    # No CA and no insecure-skip-tls-verify: the system's roots, which do not know the test CA.
    status, out, _ = diagnose(capsys, "--context", "system", "--kubeconfig", str(diagnose_kubeconfig))
    assert status == 1 and "not trusted" in out


def test_diagnose_context_reads_kubeconfig_from_the_environment(capsys, monkeypatch, rancher, diagnose_kubeconfig, tmp_path):
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}{os.pathsep}{diagnose_kubeconfig}")
    monkeypatch.setenv("K8S_WS_OTHER_TOKEN", KUBECONFIG_TOKEN)
    rancher.clear()
    status, out, _ = diagnose(capsys, "--context", "data", "--token-env", "K8S_WS_OTHER_TOKEN")  # --token-env wins
    assert status == 0
    assert {tuple(r.header_lines("Authorization")) for r in rancher.records} == {(), (f"Bearer {KUBECONFIG_TOKEN}",)}
