"""What the tests share: test tokens, bearer-entry encoders, the forms a leaked token takes,
browser header values, and mitmproxy flow builders.

Encoders are written here from the facts, independently of kubews, so that a test never checks
the code against its own output.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
import yaml
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

if TYPE_CHECKING:
    from kubews import Handshake


#: Upgrade requests as real clients sent them (tests/data/handshakes.yaml): test inputs, never
#: expected outputs of our code.
VECTORS = yaml.safe_load((Path(__file__).parent / "data" / "handshakes.yaml").read_text())

# Rancher tokens are name:key (facts §4). TOKEN is the one in handshakes.yaml's chromium vector.
TOKEN = "token-abcde:" + "k" * 54
KUBECONFIG_TOKEN = "kubeconfig-u-abcde:" + "q" * 54  # 73 bytes: its standard base64 ends in "=="
SCOPED_TOKEN = "token-scoped:" + "s" * 54  # cluster-scoped: valid on one cluster only
# Chosen so that their encodings differ by alphabet:
DASH_UNDERSCORE_TOKEN = "token-dashu:kk~kk?" + "k" * 48  # base64url has '-' and '_', so base64 has '+' and '/'
PLUS_TOKEN = "token-plusx:kk~" + "k" * 51  # base64 has '+' and no '/': a browser can send its btoa()
ODD = ">>>>>?"  # short: base64url "Pj4-Pj4_", standard "Pj4+Pj4/"
#: The tokens the test server accepts.
TOKENS = frozenset({TOKEN, KUBECONFIG_TOKEN, SCOPED_TOKEN, DASH_UNDERSCORE_TOKEN, PLUS_TOKEN})

BEARER_PREFIX = "base64url.bearer.authorization.k8s.io."

BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.8078.108 Safari/537.36"
PAGE_ORIGIN = "http://127.0.0.1:4466"  # a console's page: not the Host of anything upstream
#: What Headlamp <= 0.34 offers for exec, before its bearer entry (facts §5).
HEADLAMP_EXEC_PROTOCOLS = ("base64.binary.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")


#: Upgrade header lines, and whether they ask for a WebSocket (RFC 6455 §4.2.1: the token is
#: case-insensitive, and may stand anywhere in the list): for every layer that reads them.
UPGRADES = [
    pytest.param(["websocket"], True, id="websocket"),
    pytest.param(["WebSocket"], True, id="mixed case"),
    pytest.param(["h2c, websocket"], True, id="second of a list"),
    pytest.param(["h2c", "websocket"], True, id="second line"),
    pytest.param(["websockets"], False, id="websockets"),
    pytest.param(["h2c"], False, id="h2c"),
    pytest.param([], False, id="no Upgrade"),
]


def b64url(text: str, pad: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(text.encode()).decode()
    return encoded if pad else encoded.rstrip("=")


def b64std(text: str, pad: bool = False) -> str:
    encoded = base64.b64encode(text.encode()).decode()
    return encoded if pad else encoded.rstrip("=")


def standard_entry(token: str) -> str:
    """Headlamp's and OpenShift's bearer entry: btoa(token) with '=' removed (facts §5)."""
    return BEARER_PREFIX + b64std(token)


def base64url_entry(token: str) -> str:
    """The entry kube-apiserver documents, and Gardener sends: base64url without padding."""
    return BEARER_PREFIX + b64url(token)


def secret_forms(token: str) -> list[str]:
    """Every form in which a token could leak: as is, and in either base64 alphabet, padded or not."""
    return list(dict.fromkeys([token, b64std(token), b64url(token), b64std(token, pad=True), b64url(token, pad=True)]))


def upgrade_flow(
    url: str,
    *headers: tuple[str, str],
    mode: str = "regular",
    upgrade: bool = True,
) -> http.HTTPFlow:
    """A tflow of a request to url (its Host from the URL), as a WebSocket upgrade unless told."""
    request = http.Request.make("GET", url)
    fields = [(b"Host", urlsplit(url).netloc.encode())]
    if upgrade:
        fields += [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    request.headers.fields = (*fields, *((k.encode(), v.encode()) for k, v in headers))
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse(mode)
    return flow


def fingerprint_of(secret: str) -> str:
    """A token's fingerprint as the contract defines it (interface §5): "sha256:" and the first 8
    hex digits of its SHA-256."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def redacted(secret: str) -> str:
    """What a redacted credential reads in a stored flow (interface §6)."""
    return f"<redacted {fingerprint_of(secret)}>"


def handshake(
    *headers: tuple[str, str],
    path: str = "/k8s/clusters/c-m-healthy/api/v1/namespaces/default/pods/p/exec",
    host: str = "rancher.test",
    port: int = 443,
    verified: bool = True,
    upgrade: bool = True,
    scheme: str = "https",
) -> Handshake:
    """The core's view of a request to host (kubews.Handshake): a WebSocket upgrade unless told,
    with these header lines after Host, Connection and Upgrade."""
    # Imported here, not at the top: the test server imports this module for the test tokens,
    # and must not depend on the code under test.
    from kubews import Destination, Handshake

    base = (("Host", host), ("Connection", "Upgrade"), ("Upgrade", "websocket")) if upgrade else (("Host", host),)
    return Handshake(
        destinations=(Destination(host, verified),),
        port=port,
        path=path,
        headers=(*base, *headers),
        scheme=scheme,
        host_header=host,
    )


def read_flows(path) -> list:
    """The flows of a file written with -w (mitmproxy's FlowReader)."""
    from mitmproxy import io as mitmproxy_io

    with open(path, "rb") as f:
        return list(mitmproxy_io.FlowReader(f).stream())


def flow_strings(flows) -> list[str]:
    """Every string saved flows hold (their get_state()), bytes read both ways a viewer might:
    where to look for a token in a -w file."""
    found: list[str] = []

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, bytes):
            found.extend([value.decode("utf-8", "surrogateescape"), value.decode("latin-1")])
        elif isinstance(value, str):
            found.append(value)

    for flow in flows:
        walk(flow.get_state())
    return found


def shown(text: str, secrets) -> list[str]:
    """The secrets that appear in a text (output, or a flow's strings joined)."""
    return sorted(s for s in secrets if s in text)


def interactive_exec(api, namespace: str) -> str:
    """The Python client's stream() exec of pod p with stdin: the server's output, then our
    input echoed back. `api`: a kubernetes.client.CoreV1Api."""
    from kubernetes.stream import stream  # imported here: only the client tests need it

    response = stream(
        api.connect_get_namespaced_pod_exec, "p", namespace, command=["cat"],
        stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False,
    )  # fmt: skip
    try:
        response.write_stdin("ping\n")
        output, deadline = "", time.monotonic() + 10
        while "ping\n" not in output and response.is_open() and time.monotonic() < deadline:
            response.update(timeout=1)
            output += response.read_stdout()
        return output
    finally:
        response.close()
