"""A flow that an addon ahead of k8s-ws answered is left alone, through a real mitmdump
(interface §4: mitmproxy's own addons' guard, `flow.response`, `flow.error`, `not flow.live`)."""

import http.client

import pytest

from fake_rancher import HEALTHY
from helpers import BEARER_PREFIX, BROWSER_UA, PAGE_ORIGIN, TOKEN, secret_forms, standard_entry
from mitmdump_harness import ADDON, Mitmdump

pytestmark = pytest.mark.e2e

# A script that answers every request to /teapot/ itself, in `requestheaders`, as blocklist does.
TEAPOT = """\
from mitmproxy import http


class Teapot:
    def requestheaders(self, flow):
        if "/teapot/" in flow.request.path:
            flow.response = http.Response.make(418, b"a script answered", {"Content-Type": "text/plain"})


addons = [Teapot()]
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, rancher, pki):
    """mitmdump in reverse mode with the teapot script ahead of k8s-ws, and the shipped rules."""
    workdir = tmp_path_factory.mktemp("taken")
    script = workdir / "teapot.py"
    script.write_text(TEAPOT)
    with Mitmdump(
        workdir,
        mode=f"reverse:{rancher.url}",
        upstream_ca=pki.ca_cert,
        addon=False,
        args=("-s", str(script), "-s", str(ADDON), "--set", "flow_detail=4"),
    ) as mitmdump:
        yield mitmdump


def get(proxy, path, protocols):
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.request("GET", path, headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "User-Agent": BROWSER_UA, "Origin": PAGE_ORIGIN,
            "Sec-WebSocket-Protocol": protocols,
        })  # fmt: skip
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_request_a_script_answered_is_not_refused_by_k8s_ws(proxy, rancher):
    # Two bearer entries: on its own, k8s-ws refuses this with 400.
    protocols = f"v4.channel.k8s.io, {standard_entry(TOKEN)}, {BEARER_PREFIX}b3RoZXI"
    teapot = f"/k8s/clusters/{HEALTHY}/api/v1/namespaces/teapot/pods/p/exec"
    assert get(proxy, teapot, protocols) == (418, b"a script answered")
    assert not [r for r in rancher.records if "/teapot/" in r.target]
    # The same request where the script does not answer: k8s-ws refuses it, so the rule is live.
    status, body = get(proxy, teapot.replace("/teapot/", "/other/"), protocols)
    assert status == 400 and body.startswith(b"k8s_ws: rule 'rancher': 2 bearer entries")
    output = proxy.output()
    assert "k8s_ws: refused" in output and output.count("k8s_ws: refused") == 1
    for form in secret_forms(TOKEN):
        assert form not in output  # flow_detail 4 prints both requests' headers, redacted
