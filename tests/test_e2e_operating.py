"""Operating k8s-ws (interface §2, §5, §8): Prometheus metrics scraped from a real mitmdump while
handshakes succeed, are refused, are rejected and fail upstream, while a stream is open and after
it closed, and after rules reloads; the addon's log lines as JSON on standard error; failed
handshakes marked, their hint the comment, through mitmweb's API and on its page in Chromium
(the screenshot is kept in test-artifacts/)."""

from __future__ import annotations

import asyncio
import html
import json
import re
import shutil
import ssl
import subprocess
import time
import urllib.request
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from fake_rancher import DEAD, HEALTHY
from helpers import KUBECONFIG_TOKEN, TOKEN, secret_forms, standard_entry
from mitmdump_harness import ROOT, Mitmdump, Mitmweb, free_port
from ws_client import open_ws

pytestmark = pytest.mark.e2e  # mitmdump processes and the test server

EXEC = "/api/v1/namespaces/default/pods/p/exec?command=sh&stdin=1&stdout=1"
PROTOCOLS = ["v4.channel.k8s.io"]
UNKNOWN_TOKEN = "token-zzzzz:" + "z" * 54  # Rancher answers 401 "must authenticate"


def exec_url(proxy: Mitmdump, cluster: str = HEALTHY) -> str:
    return f"wss://127.0.0.1:{proxy.port}/k8s/clusters/{cluster}{EXEC}"


def proxy_ssl(proxy: Mitmdump) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=proxy.ca_cert)


Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> tuple[Samples, str]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return samples, text


def value(samples: Samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(url: str, name: str, expected: float, timeout: float = 5.0, **labels) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples, _ = scrape(url)
        if value(samples, name, **labels) == expected:
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} is {value(samples, name, **labels)}, not {expected}, after {timeout} s")
        time.sleep(0.1)


def metrics_url(proxy: Mitmdump, start: int = 0) -> str:
    output = proxy.wait_for_output("k8s_ws: metrics at ", start=start)
    return re.findall(r"k8s_ws: metrics at (http://\S+/metrics)", output[start:])[-1]


@pytest.fixture(scope="module")
def metered(tmp_path_factory, rancher, pki):
    """mitmdump in reverse mode in front of Rancher, with the shipped rules and metrics on."""
    workdir = tmp_path_factory.mktemp("metered")
    rules = workdir / "rules.yaml"
    shutil.copy(ROOT / "rules.yaml", rules)
    options = {"k8s_ws_metrics": "127.0.0.1:0"}
    with Mitmdump(workdir, mode=f"reverse:{rancher.url}", rules=rules, upstream_ca=pki.ca_cert, options=options) as proxy:
        proxy.metrics_url, proxy.rules = metrics_url(proxy), rules
        yield proxy


HANDSHAKES = "k8s_ws_handshakes_total"


@pytest.mark.parametrize(
    "cluster, protocols, outcome, status",
    [
        pytest.param(HEALTHY, [*PROTOCOLS, standard_entry(TOKEN)], "accepted", "101", id="accepted"),
        pytest.param(HEALTHY, [*PROTOCOLS, standard_entry(UNKNOWN_TOKEN)], "rejected", "401", id="rejected: a token Rancher does not know"),
        pytest.param(DEAD, [*PROTOCOLS, standard_entry(TOKEN)], "rejected", "502", id="rejected: the cluster's tunnel is down"),
        pytest.param(HEALTHY, [standard_entry(TOKEN)], "refused", "400", id="refused: no other protocol"),
    ],
)
def test_each_handshake_is_counted_by_outcome_and_status(metered, pki, cluster, protocols, outcome, status):
    before, _ = scrape(metered.metrics_url)
    open_ws(exec_url(metered, cluster), protocols, ssl_context=proxy_ssl(metered), messages=1)
    labels = {"rule": "rancher", "outcome": outcome, "status": status}
    wait_for(metered.metrics_url, HANDSHAKES, value(before, HANDSHAKES, **labels) + 1, **labels)


def test_refusals_are_counted_by_reason(metered):
    before, _ = scrape(metered.metrics_url)
    two = [*PROTOCOLS, standard_entry(TOKEN), standard_entry(KUBECONFIG_TOKEN)]
    assert open_ws(exec_url(metered), two, ssl_context=proxy_ssl(metered)).status == 400
    labels = {"rule": "rancher", "reason": "several_entries"}
    wait_for(metered.metrics_url, "k8s_ws_refusals_total", value(before, "k8s_ws_refusals_total", **labels) + 1, **labels)


def test_open_streams_while_open_and_after_they_close(metered):
    url = metered.metrics_url

    async def scenario():
        async with connect(
            exec_url(metered), subprotocols=[*PROTOCOLS, standard_entry(TOKEN)], ssl=proxy_ssl(metered), proxy=None
        ) as ws:
            await ws.recv()
            await asyncio.to_thread(wait_for, url, "k8s_ws_streams_active", 1.0, rule="rancher")
        await asyncio.to_thread(wait_for, url, "k8s_ws_streams_active", 0.0, rule="rancher")

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_rules_reloads_are_counted_good_and_broken(metered):
    url = metered.metrics_url
    before, _ = scrape(url)
    good = metered.rules.read_text()
    metered.rules.write_text(good + "\n# edited\n")
    wait_for(url, "k8s_ws_rules_reloads_total", value(before, "k8s_ws_rules_reloads_total", result="ok") + 1, result="ok")
    metered.rules.write_text(good + "\n  - name: [broken\n")
    wait_for(url, "k8s_ws_rules_reloads_total", value(before, "k8s_ws_rules_reloads_total", result="error") + 1, result="error")
    metered.rules.write_text(good)  # the last good rules were kept all along; put the file back
    wait_for(url, "k8s_ws_rules_reloads_total", value(before, "k8s_ws_rules_reloads_total", result="ok") + 2, result="ok")


def test_labels_are_bounded_and_hold_no_token(metered):
    for protocols in ([*PROTOCOLS, standard_entry(TOKEN)], [standard_entry(KUBECONFIG_TOKEN)]):
        open_ws(exec_url(metered), protocols, ssl_context=proxy_ssl(metered), messages=1)
    samples, text = scrape(metered.metrics_url)
    assert {key for _, labels in samples for key, _ in labels} <= {"rule", "outcome", "status", "reason", "result"}
    assert not any(form in text for token in (TOKEN, KUBECONFIG_TOKEN) for form in secret_forms(token))
    assert HEALTHY not in text and "/k8s" not in text and "127.0.0.1" not in text
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"k8s_ws_handshakes", "k8s_ws_refusals", "k8s_ws_streams_active", "k8s_ws_rules_reloads"} <= names


def test_an_upstream_that_cannot_be_reached_is_a_failed_handshake(tmp_path, pki):
    closed = free_port()  # nothing listens there
    # lazy: mitmproxy answers the client's TLS first, then fails to connect for the request.
    options = {"k8s_ws_metrics": "127.0.0.1:0", "connection_strategy": "lazy"}
    with Mitmdump(tmp_path, mode=f"reverse:https://127.0.0.1:{closed}", upstream_ca=pki.ca_cert, options=options) as proxy:
        url = metrics_url(proxy)
        outcome = open_ws(exec_url(proxy), [*PROTOCOLS, standard_entry(TOKEN)], ssl_context=proxy_ssl(proxy))
        assert outcome.status == 502
        wait_for(url, HANDSHAKES, 1.0, rule="rancher", outcome="failed", status="502")


ENTRY_SCRIPT = """\
import sys
sys.path.insert(0, {addon!r})
from kubews.mitm import K8sWs

addons = [K8sWs()]
"""


def test_a_script_reload_frees_the_port_and_starts_afresh(tmp_path, rancher, pki):
    # A copy of addon/k8s_ws.py, so that touching it reloads this mitmdump only.
    entry = tmp_path / "k8s_ws_copy.py"
    entry.write_text(ENTRY_SCRIPT.format(addon=str(ROOT / "addon")))
    port = free_port()
    proxy = Mitmdump(
        tmp_path, mode=f"reverse:{rancher.url}", upstream_ca=pki.ca_cert, options={"k8s_ws_metrics": f"127.0.0.1:{port}"},
        args=("-s", str(entry)), addon=False,
    )  # fmt: skip
    with proxy:
        url = metrics_url(proxy)
        open_ws(exec_url(proxy), [*PROTOCOLS, standard_entry(TOKEN)], ssl_context=proxy_ssl(proxy), messages=1)
        wait_for(url, HANDSHAKES, 1.0, rule="rancher", outcome="accepted", status="101")
        mark = len(proxy.output())
        entry.write_text(entry.read_text() + "\n# touched\n")  # mitmproxy reloads a script that changed
        assert metrics_url(proxy, start=mark) == url  # the new instance has the same port: the old one let go
        samples, text = scrape(url)
        assert value(samples, HANDSHAKES, rule="rancher", outcome="accepted", status="101") == 0  # a new registry
        assert text.count("# TYPE k8s_ws_handshakes_total") <= 1 and "Addon error" not in proxy.output()


# --- JSON log lines ---------------------------------------------------------------------------


def test_json_log_lines_on_standard_error(tmp_path, rancher, pki):
    options = {"k8s_ws_log_format": "json"}
    proxy = Mitmdump(tmp_path, mode=f"reverse:{rancher.url}", upstream_ca=pki.ca_cert, options=options, split_stderr=True)
    with proxy:
        accepted = open_ws(exec_url(proxy), [*PROTOCOLS, standard_entry(TOKEN)], ssl_context=proxy_ssl(proxy), messages=1)
        refused = open_ws(exec_url(proxy), [standard_entry(TOKEN)], ssl_context=proxy_ssl(proxy))
        rejected = open_ws(exec_url(proxy), [*PROTOCOLS, standard_entry(UNKNOWN_TOKEN)], ssl_context=proxy_ssl(proxy))
        deadline = time.monotonic() + 5
        while proxy.stderr().count("\n") < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert (accepted.status, refused.status, rejected.status) == (101, 400, 401)
    lines = [json.loads(line) for line in proxy.stderr().splitlines() if line.startswith("{")]
    for line in lines:
        assert line["level"] in ("info", "warning", "error") and line["message"].startswith("k8s_ws")
        assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0  # RFC 3339, UTC
    handled = [line for line in lines if line.get("status") == 101]
    assert len(handled) == 1
    assert handled[0] == {
        **handled[0],
        "rule": "rancher", "host": "127.0.0.1", "path": f"/k8s/clusters/{HEALTHY}{EXEC.partition('?')[0]}",
        "protocol": "v4.channel.k8s.io", "level": "info",
    }  # fmt: skip
    assert "token moved to Authorization" in handled[0]["actions"] and handled[0]["token"].startswith("sha256:")
    assert [line["status"] for line in lines if line["message"].startswith("k8s_ws: refused")] == [400]
    hinted = [line for line in lines if "hint" in line]
    assert hinted and hinted[0]["status"] == 401 and hinted[0]["level"] == "warning"
    assert "k8s_ws: rule" not in proxy.output()  # not in the event log as well
    everything = proxy.stderr() + proxy.output()
    assert not any(form in everything for token in (TOKEN, UNKNOWN_TOKEN) for form in secret_forms(token))


# --- failed handshakes flagged where people look (interface §5) ----------------------------------

#: Where the screenshot of mitmweb's page is kept after a run (not in git), for a person to look at.
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def web(tmp_path_factory, rancher, pki):
    """mitmweb in reverse mode in front of Rancher, after a rejected, a refused and an accepted
    handshake."""
    proxy = Mitmweb(tmp_path_factory.mktemp("web"), mode=f"reverse:{rancher.url}", upstream_ca=pki.ca_cert)
    with proxy:
        context = proxy_ssl(proxy)
        proxy.outcomes = [
            open_ws(exec_url(proxy), [*PROTOCOLS, standard_entry(UNKNOWN_TOKEN)], ssl_context=context).status,
            open_ws(exec_url(proxy), [standard_entry(TOKEN)], ssl_context=context).status,
            open_ws(exec_url(proxy), [*PROTOCOLS, standard_entry(TOKEN)], ssl_context=context, messages=1).status,
        ]
        yield proxy


def listed_flows(web: Mitmweb) -> dict[int, dict]:
    """mitmweb's flow list, by response status."""
    deadline = time.monotonic() + 5
    while True:
        flows = {f["response"]["status_code"]: f for f in json.loads(web.get("/flows")) if f.get("response")}
        if len(flows) == 3 or time.monotonic() > deadline:
            return flows
        time.sleep(0.1)


def test_mitmweb_lists_failed_handshakes_marked_with_their_hint(web):
    assert web.outcomes == [401, 400, 101]
    flows = listed_flows(web)
    assert flows[401]["marked"] and flows[400]["marked"] and not flows[101]["marked"]
    assert flows[401]["comment"].startswith("k8s_ws: Rancher refused the token (401")
    assert flows[400]["comment"].startswith("k8s_ws: rule 'rancher': no other protocol left")
    assert flows[101]["comment"] == ""
    listed = web.get("/flows").decode()
    assert not any(form in listed for token in (TOKEN, UNKNOWN_TOKEN) for form in secret_forms(token))


def test_mitmweb_page_shows_the_marker_and_the_comment(web, chromium, tmp_path):
    flow = listed_flows(web)[401]
    page = f"{web.page_url}#/flows/{flow['id']}/comment"  # the flow list, and the flow's Comment tab
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "mitmweb-flagged-flow.png"
    flags = [chromium, "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--window-size=1400,900",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=90).stdout
    subprocess.run([*flags, f"--screenshot={screenshot}", page], capture_output=True, timeout=90)
    rows = re.findall(r"<tr[^>]*>.*?</tr>", dom, re.S)
    flagged = [row for row in rows if "exec?command=sh" in row and "⚠" in row]
    assert len(flagged) == 2, rows  # the 401 and the 400; not the 101
    assert "Rancher refused the token (401" in html.unescape(dom)  # the Comment tab, rendered
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
