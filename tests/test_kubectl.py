"""kubectl, which already works against Rancher (it sends Authorization), through mitmdump in
regular mode with the shipped rules.yaml, in front of the strict Rancher-like test server over TLS.
The test server serves the discovery kubectl needs, the pod, exec (WebSocket) and log follow.

How kubectl is sent through the proxy here: the kubeconfig's cluster has `proxy-url:` (the
mitmdump URL) and `certificate-authority:` mitmproxy's CA; mitmdump trusts the test server's CA
(`ssl_verify_upstream_trusted_ca`). Not `HTTPS_PROXY`, because the test server is on 127.0.0.1 and
Go's net/http (golang.org/x/net/http/httpproxy, useProxy) never proxies requests to `localhost` or
a loopback address, whatever HTTPS_PROXY and NO_PROXY say. client-go's `proxy-url` installs
http.ProxyURL, which has no such exception, and is otherwise the same CONNECT proxying that
HTTPS_PROXY gives for a real (non-loopback) Rancher. test_https_proxy_is_not_used_for_a_loopback_server
shows the difference with this kubectl. Because the kubeconfig trusts only mitmproxy's CA, a kubectl
request that bypassed the proxy would fail its TLS verification.

"Unchanged" is checked header for header: the server's records of the proxied run are compared with
those of the same command run straight at the server (kubeconfig with the test CA, no proxy),
ignoring only the values of Sec-WebSocket-Key and Kubectl-Session, which kubectl draws afresh each
run; and against tests/data/handshakes.yaml (kubectl-1.32.4).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fake_rancher import HEALTHY
from helpers import TOKEN, VECTORS

pytestmark = pytest.mark.e2e  # kubectl, mitmdump and the test server

VECTOR = VECTORS["kubectl-1.32.4"]
VECTOR_HEADERS = dict(VECTOR["headers"])
VOLATILE = {"sec-websocket-key", "kubectl-session"}  # random per run


@pytest.fixture(scope="module")
def kubectl():
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip(f"kubectl not found on PATH: {os.environ.get('PATH', '')} (these tests need kubectl >= 1.30)")
    return path


def write_kubeconfig(path: Path, server: str, ca: str, proxy_url: str | None = None) -> Path:
    cluster = {"server": server, "certificate-authority": str(ca)}
    if proxy_url:
        cluster["proxy-url"] = proxy_url
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "rancher", "cluster": cluster}],
        "users": [{"name": "user", "user": {"token": TOKEN}}],
        "contexts": [{"name": "rancher", "context": {"cluster": "rancher", "user": "user"}}],
        "current-context": "rancher",
    }))
    return path


class Kubectl:
    """Runs kubectl with a kubeconfig, a fresh HOME each time (no discovery cache carried over) and
    no proxy variables from the caller's environment."""

    def __init__(self, executable: str, workdir: Path):
        self.executable, self.workdir, self.runs = executable, workdir, 0

    def __call__(self, kubeconfig: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None):
        self.runs += 1
        home = self.workdir / f"home-{self.runs}"
        home.mkdir()
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "KUBECONFIG": str(kubeconfig),
                       **(env or {})}
        return subprocess.run([self.executable, *args], input=stdin, env=environment, capture_output=True, text=True,
                              timeout=60)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, kubectl, rancher, regular, pki):
    workdir = tmp_path_factory.mktemp("kubectl")
    server = f"{rancher.url}/k8s/clusters/{HEALTHY}"
    return {
        "run": Kubectl(kubectl, workdir),
        "direct": write_kubeconfig(workdir / "direct.yaml", server, pki.ca_cert),
        "proxied": write_kubeconfig(workdir / "proxied.yaml", server, regular.ca_cert, regular.url),
        "proxied_ca_only": write_kubeconfig(workdir / "proxied-ca-only.yaml", server, regular.ca_cert),
    }


def recorded_run(rancher, run, kubeconfig, *args, **kwargs):
    """Runs kubectl; returns its result and what the server received, comparable between runs."""
    rancher.clear()
    result = run(kubeconfig, *args, **kwargs)
    records = rancher.records
    sent = sorted((r.method, r.target, tuple((n, None if n.lower() in VOLATILE else v) for n, v in r.headers))
                  for r in records)
    return result, records, sent


def test_kubectl_exec_through_regular_mode(setup, rancher, regular):
    args = ("exec", "-i", "-n", "kx-exec", "p", "--", "cat")
    direct, _, sent_direct = recorded_run(rancher, setup["run"], setup["direct"], *args, stdin="ping\n")
    assert direct.returncode == 0, direct.stderr
    proxied, records, sent_proxied = recorded_run(rancher, setup["run"], setup["proxied"], *args, stdin="ping\n")
    assert proxied.returncode == 0, proxied.stderr
    assert proxied.stdout == direct.stdout == "hello from exec\nping\n"  # both directions of the stream

    # The exec went over WebSocket, v5.channel.k8s.io offered first and chosen (no SPDY fallback).
    upgrades = [r for r in records if r.path.endswith("/pods/p/exec")]
    assert len(upgrades) == 1, records
    upgrade = upgrades[0]
    assert upgrade.status == 101 and upgrade.subprotocol == "v5.channel.k8s.io"
    assert [p.strip() for p in upgrade.header("Sec-WebSocket-Protocol").split(",")][0] == "v5.channel.k8s.io"
    assert upgrade.header_lines("Authorization") == [f"Bearer {TOKEN}"]
    assert upgrade.header_lines("Origin") == []
    [user_agent] = upgrade.header_lines("User-Agent")
    assert re.fullmatch(r"kubectl/v1\.\d+\.\d+\S* \(linux/\w+\) kubernetes/[0-9a-f]{7}", user_agent)
    assert user_agent.split("/")[0] == VECTOR_HEADERS["User-Agent"].split("/")[0]
    assert upgrade.header_lines("Kubectl-Command") == [VECTOR_HEADERS["Kubectl-Command"]]
    # Every request kubectl made (discovery, the pod, the upgrade) reached the server exactly as
    # kubectl sends it without the proxy.
    assert sent_proxied == sent_direct
    # ...and went through the proxy: the addon's line for the upgrade (contract §5).
    regular.wait_for_output("/namespaces/kx-exec/pods/p/exec")


def test_kubectl_logs_follow_through_regular_mode(setup, rancher):
    args = ("logs", "-f", "-n", "kx-logs", "p")
    direct, _, sent_direct = recorded_run(rancher, setup["run"], setup["direct"], *args)
    assert direct.returncode == 0, direct.stderr
    proxied, records, sent_proxied = recorded_run(rancher, setup["run"], setup["proxied"], *args)
    # It terminated (the server ends the body; subprocess.run would time out otherwise) and showed the lines.
    assert proxied.returncode == 0, proxied.stderr
    assert proxied.stdout == direct.stdout == "line 1\nline 2\nline 3\n"
    [log] = [r for r in records if r.path.endswith("/pods/p/log")]
    assert "follow=true" in log.target and log.status == 200
    assert log.header_lines("Authorization") == [f"Bearer {TOKEN}"]
    assert log.header_lines("Kubectl-Command") == ["kubectl logs"]
    assert sent_proxied == sent_direct


def test_https_proxy_is_not_used_for_a_loopback_server(setup, rancher, regular):
    # Why the tests above use proxy-url: with HTTPS_PROXY alone, kubectl goes straight to
    # 127.0.0.1, where the test server's certificate is not from the CA this kubeconfig trusts
    # (mitmproxy's), and the proxy never sees a connection.
    mark = len(regular.output())
    result = setup["run"](setup["proxied_ca_only"], "get", "pod", "-n", "kx-env", "p",
                          env={"HTTPS_PROXY": regular.url, "NO_PROXY": ""})
    assert result.returncode != 0
    assert "certificate signed by unknown authority" in result.stderr
    assert "client connect" not in regular.output()[mark:]
