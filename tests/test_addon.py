"""The addon against mitmproxy's own test doubles (taddons, tflow): the thin layer's duties."""

import asyncio
import logging
import sys
from dataclasses import replace

import pytest
from mitmproxy import exceptions, hooks, http
from mitmproxy import io as mitmproxy_io
from mitmproxy.addons import export
from mitmproxy.test import taddons, tflow

from helpers import BEARER_PREFIX, BROWSER_UA, PAGE_ORIGIN, TOKEN, secret_forms, standard_entry, upgrade_flow
from kubews import fingerprint
from kubews.mitm import K8sWs, _hooks, _watcher

ENTRY = standard_entry(TOKEN)
EXEC = "/k8s/clusters/c-m-healthy/api/v1/namespaces/default/pods/p/exec?command=sh&stdout=1"
RULES = """\
rules:
  - name: rancher
    hosts: ["rancher.test"]
    paths: ["/k8s/clusters/*"]
    origin: match-host
  - name: stored
    hosts: ["kube.test", "10.0.0.9"]
    token: {env: K8S_WS_TEST_TOKEN}
  - name: broken-source
    hosts: ["broken.test"]
    token: {file: /nonexistent/token}
"""


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


@pytest.fixture
def addon(rules_file, monkeypatch):
    monkeypatch.setenv("K8S_WS_TEST_TOKEN", "stored-secret")
    addon = K8sWs()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, k8s_ws_rules=str(rules_file))
        yield addon


def upgrade(host="rancher.test", path=EXEC, headers=(), mode="regular"):
    return upgrade_flow(f"https://{host}{path}", *headers, mode=mode)


def headlamp_exec(**kwargs):
    return upgrade(
        headers=[
            ("User-Agent", BROWSER_UA),
            ("Origin", PAGE_ORIGIN),
            ("Sec-WebSocket-Protocol", f"base64.binary.k8s.io, v4.channel.k8s.io, channel.k8s.io, {ENTRY}"),
        ],
        **kwargs,
    )


def reveal(addon, flow):
    """The tail addon's part: its `request` hook, then the `update` that follows it."""
    asyncio.run(addon._reveal.request(flow))
    addon._reveal.update([flow])


def send(addon, flow):
    """The hooks mitmproxy runs up to writing the request upstream, in chain order."""
    addon.requestheaders(flow)
    addon.request(flow)
    reveal(addon, flow)


def answer(addon, flow, status=101, headers=()):
    flow.response = http.Response.make(status, b"", [(k.encode(), v.encode()) for k, v in headers])
    addon.responseheaders(flow)


def test_shipped_rules_load():
    addon = K8sWs()
    with taddons.context(addon) as tctx:
        # as mitmproxy does when it loads a script: configure with every option
        tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(tctx.options.keys())))
        assert [r.name for r in addon.rules.ruleset.rules] == ["rancher"]


def test_broken_rules_raise_options_error_with_position(rules_file, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules:\n  - name: x\n    hosts: [a]\n    origin: sometimes\n")
    addon = K8sWs()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, k8s_ws_rules=str(rules_file))
        with pytest.raises(exceptions.OptionsError, match=rf"{broken}:4:13: rule 'x': origin: unknown value"):
            tctx.configure(addon, k8s_ws_rules=str(broken))
    assert addon.rules.ruleset.path == str(rules_file)  # assigned only on success


def test_headlamp_exec_is_rewritten_for_upstream_and_redacted_in_the_flow(addon):
    flow = headlamp_exec()
    addon.requestheaders(flow)
    # What mitmproxy shows and saves from now on:
    assert flow.request.headers["Authorization"] == f"Bearer <redacted {fingerprint(TOKEN)}>"
    assert TOKEN not in str(flow.request.headers) and ENTRY not in str(flow.request.headers)
    assert flow.metadata["k8s_ws"]["rule"] == "rancher"
    # What goes upstream, once every other addon has seen the request:
    addon.request(flow)
    asyncio.run(addon._reveal.request(flow))
    assert TOKEN not in str(flow.request.headers)  # mitmweb broadcasts the flow in `update`...
    addon._reveal.update([flow])  # ... and the tail addon's is the last
    assert flow.request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert flow.request.headers["Sec-WebSocket-Protocol"] == "base64.binary.k8s.io, v4.channel.k8s.io, channel.k8s.io"
    assert flow.request.headers["Origin"] == "https://rancher.test"
    assert flow.request.headers["User-Agent"] == BROWSER_UA
    answer(addon, flow, headers=[("Sec-WebSocket-Protocol", "v4.channel.k8s.io")])
    assert flow.request.headers["Authorization"] == f"Bearer <redacted {fingerprint(TOKEN)}>"


@pytest.mark.parametrize("exporter", sorted(set(export.formats) - {"raw_response"}))
def test_exports_of_a_flow_hold_no_token(addon, exporter):
    # mitmproxy's curl, httpie and raw request exports (console, mitmweb) read the stored flow.
    flow = headlamp_exec()
    send(addon, flow)
    answer(addon, flow)
    with taddons.context(export.Export()):
        exported = export.formats[exporter](flow)
    exported = exported if isinstance(exported, str) else exported.decode(errors="replace")
    assert "rancher.test" in exported and "<redacted sha256:" in exported
    assert TOKEN not in exported and ENTRY not in exported


def test_show_tokens_keeps_the_real_values_in_the_flow(addon):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, k8s_ws_show_tokens=True)
        flow = headlamp_exec()
        addon.requestheaders(flow)
        assert flow.request.headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    "flow_factory",
    [
        pytest.param(
            lambda: upgrade(host="other.test", headers=[("Sec-WebSocket-Protocol", f"x,{ENTRY}")]),
            id="an upgrade no rule matches: its bearer entry passes as sent",
        ),
        pytest.param(
            lambda: upgrade_flow("https://rancher.test/api", ("Authorization", "Bearer kc-token"), upgrade=False),
            id="kubectl's plain request: its Authorization passes as sent",
        ),
    ],
)
def test_untouched_requests_go_upstream_byte_for_byte_but_are_shown_redacted(addon, flow_factory):
    flow = flow_factory()
    flow.request.headers.fields += ((b"X-Not-UTF-8", b"\xff\xfe"),)
    original = flow.request.headers.fields
    addon.requestheaders(flow)
    assert flow.request.headers.fields != original
    assert b"<redacted sha256:" in b"".join(v for _, v in flow.request.headers.fields)
    addon.request(flow)
    reveal(addon, flow)
    assert flow.request.headers.fields == original
    assert "k8s_ws" not in flow.metadata


def test_refusal_answers_400_and_forwards_nothing(addon):
    flow = upgrade(headers=[("Sec-WebSocket-Protocol", f"a, {ENTRY}"), ("Sec-WebSocket-Protocol", f"{BEARER_PREFIX}b3RoZXI")])
    send(addon, flow)
    assert flow.response.status_code == 400
    assert flow.response.headers["Content-Type"] == "text/plain"
    body = flow.response.get_text()
    assert body.startswith("k8s_ws: rule 'rancher': ") and body.count("\n") == 1
    assert "bearer entries" in body and TOKEN not in body
    # mitmproxy sends flow.response instead of contacting the upstream; and the flow stays redacted
    assert ENTRY not in str(flow.request.headers)


def test_unreadable_token_source_answers_500(addon):
    flow = upgrade(host="broken.test", path="/api/v1/pods?watch=1", headers=[("Sec-WebSocket-Protocol", "a")])
    send(addon, flow)
    assert flow.response.status_code == 500
    assert flow.response.get_text().startswith("k8s_ws: rule 'broken-source': the token source (file /nonexistent/token)")


def test_stored_token_is_injected_for_a_proxy_chosen_destination(addon):
    flow = upgrade(host="kube.test", path="/api/v1/pods?watch=1", headers=[("Sec-WebSocket-Protocol", "a")])
    send(addon, flow)
    assert flow.request.headers["Authorization"] == "Bearer stored-secret"


def test_stored_token_is_not_sent_where_another_addon_redirected_the_request(addon):
    flow = upgrade(host="kube.test", path="/api/v1/pods?watch=1", headers=[("Sec-WebSocket-Protocol", "a")])
    addon.requestheaders(flow)
    addon.request(flow)
    flow.request.host = "elsewhere.test"  # e.g. --map-remote, at the request hook
    reveal(addon, flow)
    assert flow.response.status_code == 500
    assert flow.response.get_text().startswith("k8s_ws: rule 'stored': the request was redirected to elsewhere.test:443")
    assert "stored-secret" not in str(flow.request.headers)


def test_a_redirected_request_with_the_clients_own_token_is_not_refused(addon):
    flow = headlamp_exec()
    addon.requestheaders(flow)
    flow.request.host = "elsewhere.test"
    reveal(addon, flow)
    assert flow.response is None and flow.request.headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    "address, sni, ssl_insecure, injected",
    [
        pytest.param("10.0.0.9", None, False, True, id="the original destination address names the rule's host"),
        pytest.param("10.0.0.1", "kube.test", False, True, id="SNI, which mitmproxy verifies the upstream for"),
        pytest.param("10.0.0.1", "kube.test", True, False, id="SNI without verification is the client's word"),
        pytest.param("10.0.0.1", None, False, False, id="only the Host header names the host"),
    ],
)
def test_transparent_mode_injects_only_on_a_real_destination(addon, address, sni, ssl_insecure, injected):
    flow = upgrade(host=address, path="/api/v1/pods?watch=1", headers=[("Sec-WebSocket-Protocol", "a")], mode="transparent")
    flow.request.host_header = "kube.test"
    flow.client_conn.sni = sni
    with taddons.context(addon) as tctx:
        tctx.configure(addon, ssl_insecure=ssl_insecure)
        send(addon, flow)
    assert ("stored-secret" in flow.request.headers.get("Authorization", "")) is injected


@pytest.mark.parametrize(
    "handled_by",
    [pytest.param(None, id="no other rule applies"), pytest.param("rancher", id="another rule applies instead")],
)
def test_a_withheld_token_is_said_at_info_and_in_the_401_hint(addon, caplog, handled_by):
    host, path = ("rancher.test", EXEC) if handled_by else ("kube.test", "/api/v1/pods?watch=1")
    flow = upgrade(host="10.0.0.1", path=path, headers=[("Sec-WebSocket-Protocol", "a")], mode="transparent")
    flow.request.host_header = host
    if handled_by:  # the stored rule first, then the Rancher rule: both name rancher.test
        addon.rules.ruleset = replace(
            addon.rules.ruleset, rules=(replace(addon.rules.ruleset.rules[1], hosts=("rancher.test",)), addon.rules.ruleset.rules[0])
        )
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        send(addon, flow)
        answer(addon, flow, status=401, headers=[("Content-Type", "application/json"), ("X-Api-Cattle-Auth", "false")])
        flow.response.content = b'{"type":"error","status":"401","message":"must authenticate"}'
        addon.response(flow)
    assert "stored-secret" not in flow.request.headers.get("Authorization", "")
    lines = [r.getMessage() for r in caplog.records]
    (info,) = [line for line in lines if "withheld" in line and "no token" not in line]
    assert f"the token of rule 'stored' was withheld: {host} is only the client's word" in info
    assert (f"rule '{handled_by}'" in info) if handled_by else ("no rule applied" in info)
    hint = next(line for line in lines if "got no token" in line)
    assert "rule 'stored' holds one but withheld it" in hint and "give the rule a token" not in hint


def test_transparent_mode_host_header_still_selects_a_rule_without_token(addon):
    flow = headlamp_exec(host="10.0.0.1", mode="transparent")
    flow.request.host_header = "rancher.test"
    send(addon, flow)
    assert flow.request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_reverse_mode_origin_matches_the_host_sent_upstream(addon):
    flow = headlamp_exec(mode="reverse:https://rancher.test")
    flow.request.host_header = "rancher.test:8443"  # as mitmproxy rewrote it for the upstream
    send(addon, flow)
    assert flow.request.headers["Origin"] == "https://rancher.test:8443"


def test_an_exception_answers_500_and_forwards_nothing(addon, monkeypatch, caplog):
    def explode(*args):
        raise ValueError(f"bad value {TOKEN}")

    monkeypatch.setattr(_hooks, "decide", explode)
    flow = headlamp_exec()
    with caplog.at_level(logging.DEBUG):
        send(addon, flow)
    assert flow.response.status_code == 500
    assert flow.response.get_text().startswith("k8s_ws: internal error (ValueError)")
    assert TOKEN not in caplog.text and TOKEN not in str(flow.request.headers)


def test_an_exception_while_revealing_answers_500(addon, monkeypatch):
    flow = headlamp_exec()
    addon.requestheaders(flow)
    monkeypatch.setattr(addon.secrets, "reveal", lambda f: 1 / 0)
    reveal(addon, flow)
    assert flow.response.status_code == 500
    assert flow.response.get_text() == "k8s_ws: rule 'rancher': internal error (ZeroDivisionError); nothing was forwarded\n"
    assert (flow.metadata["k8s_ws"]["stage"], flow.metadata["k8s_ws"]["status"]) == ("refused", 500)
    assert TOKEN not in str(flow.request.headers)


def test_streamed_request_is_revealed_when_its_headers_go_out(addon):
    flow = tflow.tflow(req=http.Request.make("POST", "https://rancher.test/api", b"", {"Authorization": "Bearer kc-token"}))
    addon.requestheaders(flow)
    flow.request.stream = True
    addon._reveal.requestheaders(flow)
    addon._reveal.update([flow])
    assert flow.request.headers["Authorization"] == "Bearer kc-token"
    addon.request(flow)  # after the body: the headers are long gone
    assert flow.request.headers["Authorization"] != "Bearer kc-token"


def test_intercepted_flow_stays_redacted_until_resumed(addon):
    async def scenario():
        flow = headlamp_exec()
        addon.requestheaders(flow)
        flow.intercept()
        revealing = asyncio.ensure_future(addon._reveal.request(flow))
        await asyncio.sleep(0.01)
        assert not revealing.done() and TOKEN not in str(flow.request.headers)
        flow.resume()
        await revealing
        addon._reveal.update([flow])
        assert flow.request.headers["Authorization"] == f"Bearer {TOKEN}"

    with taddons.context(addon):
        asyncio.run(scenario())


def test_error_hides_for_good(addon):
    flow = headlamp_exec()
    send(addon, flow)
    flow.error = tflow.terr()
    addon.error(flow)
    assert TOKEN not in str(flow.request.headers)
    reveal(addon, flow)  # nothing left to reveal
    assert TOKEN not in str(flow.request.headers)


def test_info_line_has_fingerprint_and_no_token(addon, caplog):
    flow = headlamp_exec()
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        send(addon, flow)
        answer(addon, flow, headers=[("Sec-WebSocket-Protocol", "v4.channel.k8s.io")])
    (line,) = [r.getMessage() for r in caplog.records if "rule 'rancher'" in r.getMessage()]
    assert f"token {fingerprint(TOKEN)}" in line
    assert "/k8s/clusters/c-m-healthy/api/v1/namespaces/default/pods/p/exec:" in line and "command=sh" not in line
    assert "upstream 101, protocol v4.channel.k8s.io" in line
    assert TOKEN not in caplog.text


def test_rules_change_is_picked_up_and_a_broken_edit_keeps_the_last_good(addon, rules_file, caplog, monkeypatch):
    monkeypatch.setattr(_watcher, "RELOAD_POLL_SECONDS", 0.05)

    async def wait_for(predicate):
        for _ in range(100):
            await asyncio.sleep(0.02)
            if predicate():
                return
        raise AssertionError("not within 2 s")

    async def scenario():
        addon.running()
        try:
            rules_file.write_text(RULES.replace("rancher.test", "new.test") + "\n")
            await wait_for(lambda: addon.rules.ruleset.rules[0].hosts == ("new.test",))
            rules_file.write_text("rules: [\n")
            await wait_for(lambda: "keeping the last good rules" in caplog.text)
            assert addon.rules.ruleset.rules[0].hosts == ("new.test",)
        finally:
            addon.done()

    with caplog.at_level(logging.INFO), taddons.context(addon):
        asyncio.run(scenario())
    assert f"{rules_file}:2:1: YAML:" in caplog.text


def test_token_file_change_is_picked_up(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(f'rules:\n  - name: t\n    hosts: ["*"]\n    token: {{file: "{token_file}"}}\n')
    monkeypatch.setattr(_watcher, "RELOAD_POLL_SECONDS", 0.05)
    addon = K8sWs()

    async def scenario():
        addon.running()
        try:
            token_file.write_text("second, longer\n")
            for _ in range(100):
                await asyncio.sleep(0.02)
                if addon.rules.ruleset.tokens["t"] == "second, longer":
                    return
            raise AssertionError("token file change not picked up")
        finally:
            addon.done()

    with taddons.context(addon) as tctx:
        tctx.configure(addon, k8s_ws_rules=str(rules))
        assert addon.rules.ruleset.tokens["t"] == "first"
        asyncio.run(scenario())


# --- flows another addon took: mitmproxy's guard (as its own addons' test_taken) ----------------


def answered_by_another_addon(flow):
    flow.response = http.Response.make(418, b"a script answered", {"Content-Type": "text/plain"})


def killed_by_another_addon(flow):
    flow.kill()


def failed_before_us(flow):
    flow.error = tflow.terr()


def loaded_from_a_file(flow):
    flow.live = False


TAKEN = [
    pytest.param(answered_by_another_addon, id="answered by another addon"),
    pytest.param(killed_by_another_addon, id="killed by another addon"),
    pytest.param(failed_before_us, id="failed before k8s-ws saw it"),
    pytest.param(loaded_from_a_file, id="not live: loaded from a file"),
]


@pytest.mark.parametrize("take", TAKEN)
def test_a_taken_flow_is_not_refused(addon, take):
    # Two bearer entries: k8s-ws would refuse it with its own 400.
    flow = upgrade(headers=[("Sec-WebSocket-Protocol", f"a, {ENTRY}, {BEARER_PREFIX}b3RoZXI")])
    take(flow)
    before = (flow.response and flow.response.status_code, flow.error)
    addon.requestheaders(flow)
    assert (flow.response and flow.response.status_code, flow.error) == before
    assert "k8s_ws" not in flow.metadata


@pytest.mark.parametrize("take", TAKEN)
def test_a_taken_flow_is_not_rewritten_but_its_credentials_are_hidden_for_good(addon, take):
    flow = headlamp_exec()
    take(flow)
    addon.requestheaders(flow)
    assert "Authorization" not in flow.request.headers  # no rule applied
    assert ENTRY not in str(flow.request.headers) and TOKEN not in str(flow.request.headers)
    reveal(addon, flow)  # nothing goes upstream: nothing is put back
    assert ENTRY not in str(flow.request.headers) and TOKEN not in str(flow.request.headers)


def test_a_flow_answered_after_the_rewrite_gets_no_relay_and_no_hint(addon, caplog):
    flow = headlamp_exec()
    send(addon, flow)
    answered_by_another_addon(flow)  # e.g. a script's `request` hook, after k8s-ws's requestheaders
    flow.live = False
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        addon.response(flow)
    assert caplog.records == []
    assert flow.metadata["k8s_ws"]["stage"] == "forwarded" and "relay" not in flow.metadata["k8s_ws"]


def test_a_killed_flow_gets_no_line(addon, caplog):
    flow = headlamp_exec()
    send(addon, flow)
    killed_by_another_addon(flow)
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        addon.error(flow)
    assert caplog.records == []
    assert TOKEN not in str(flow.request.headers)


# --- what the addon keeps on a flow -------------------------------------------------------------


def saved_and_loaded(flow, tmp_path):
    path = tmp_path / "flows"
    with open(path, "wb") as f:
        mitmproxy_io.FlowWriter(f).add(flow)
    with open(path, "rb") as f:
        (loaded,) = list(mitmproxy_io.FlowReader(f).stream())
    return loaded


def test_the_record_follows_the_handshake_through_its_stages(addon):
    flow = headlamp_exec()
    addon.requestheaders(flow)
    assert flow.metadata["k8s_ws"] == {
        "rule": "rancher",
        "stage": "forwarded",
        "actions": ["token moved to Authorization", "bearer entry removed", "Origin set to match Host"],
        "fingerprint": fingerprint(TOKEN),
        "offered": ["base64.binary.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"],
    }
    send(addon, flow)
    answer(addon, flow, headers=[("Sec-WebSocket-Protocol", "v4.channel.k8s.io")])
    assert flow.metadata["k8s_ws"]["stage"] == "answered"
    assert (flow.metadata["k8s_ws"]["status"], flow.metadata["k8s_ws"]["protocol"]) == (101, "v4.channel.k8s.io")


def test_a_refusal_is_recorded_with_its_status_and_reason(addon):
    flow = upgrade(headers=[("Sec-WebSocket-Protocol", ENTRY)])
    addon.requestheaders(flow)
    record = flow.metadata["k8s_ws"]
    assert (record["stage"], record["status"]) == ("refused", 400)
    assert "no other protocol left" in record["reason"]


def test_a_failed_connection_is_recorded_and_logged_as_a_warning(addon, caplog):
    flow = headlamp_exec()
    send(addon, flow)
    flow.error = tflow.terr("connect failed")
    with caplog.at_level(logging.INFO, logger="k8s_ws"):
        addon.error(flow)
    assert flow.metadata["k8s_ws"]["stage"] == "failed"
    (line,) = [r for r in caplog.records if "rule 'rancher'" in r.getMessage()]
    assert line.levelno == logging.WARNING and "upstream error: connect failed" in line.getMessage()


def test_a_handled_flow_saves_and_loads_with_its_record_and_no_token(addon, tmp_path):
    flow = headlamp_exec()
    send(addon, flow)
    answer(addon, flow, headers=[("Sec-WebSocket-Protocol", "v4.channel.k8s.io")])
    loaded = saved_and_loaded(flow, tmp_path)
    assert loaded.metadata["k8s_ws"] == flow.metadata["k8s_ws"]
    assert TOKEN not in str(loaded.get_state()) and ENTRY not in str(loaded.get_state())


@pytest.mark.parametrize("answered", [pytest.param(True, id="saved answered"), pytest.param(False, id="saved in flight")])
def test_a_loaded_flow_goes_through_the_hooks_unchanged(addon, tmp_path, answered):
    # mitmdump -r replays a saved flow's hooks with flow.live false: nothing may be refused or rewritten.
    flow = headlamp_exec()
    addon.requestheaders(flow)
    addon.request(flow)
    if answered:
        reveal(addon, flow)
        answer(addon, flow, headers=[("Sec-WebSocket-Protocol", "v4.channel.k8s.io")])
        addon.response(flow)
    loaded = saved_and_loaded(flow, tmp_path)
    if not answered:  # as the file has it, with an answer that came later
        loaded.response = http.Response.make(101, b"", {"Sec-WebSocket-Protocol": "v4.channel.k8s.io"})
    state = loaded.get_state()
    for hook in (addon.requestheaders, addon.request, addon.responseheaders, addon.response):
        hook(loaded)
    assert loaded.get_state() == state


def test_done_hides_the_credentials_of_requests_in_flight(addon):
    # A request revealed for sending and not yet answered holds the real token; unloading the
    # addon (script reload, shutdown) must not leave it there for mitmweb or -w to show.
    flow = headlamp_exec()
    send(addon, flow)
    assert flow.request.headers["Authorization"] == f"Bearer {TOKEN}"
    addon.done()
    assert TOKEN not in str(flow.request.headers)


@pytest.mark.parametrize(
    "protocols",
    [
        pytest.param(f"v4.channel.k8s.io\udcff, {ENTRY}", id="a byte that is not UTF-8 in a handled list"),
        pytest.param(f"v4.channel.k8s.io, {BEARER_PREFIX}AAA\udcff", id="a byte that is not UTF-8 in the entry (refused)"),
        pytest.param(f"v4.channel.k8s.io,\r\n {ENTRY}", id="the entry on a folded line"),
    ],
)
def test_every_touched_flow_can_be_saved(addon, tmp_path, protocols):
    flow = upgrade()
    flow.request.headers.fields += ((b"Sec-WebSocket-Protocol", protocols.encode("utf-8", "surrogateescape")),)
    send(addon, flow)
    if not flow.response:
        answer(addon, flow, headers=[("Sec-WebSocket-Protocol", "v4.channel.k8s.io")])
    assert "k8s_ws" in flow.metadata
    loaded = saved_and_loaded(flow, tmp_path)  # tnetstring refuses a str it cannot encode
    assert loaded.metadata["k8s_ws"]["rule"] == "rancher"
    assert TOKEN not in str(loaded.get_state()) and ENTRY not in str(loaded.get_state())


# --- mitmproxy's own log lines ------------------------------------------------------------------

#: What mitmproxy logs when a client hangs up mid-head: the head so far, as a bytes repr.
HUNG_UP = "Client closed connection before completing request headers: " + repr(
    f"GET {EXEC} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    f"Sec-WebSocket-Protocol: v4.channel.k8s.io,\r\n {ENTRY}\r\nCookie: R_SESS={TOKEN}\r\n".encode()
)


def mitmproxy_lines(caplog, *, exc_info=None) -> str:
    """Log HUNG_UP the way mitmproxy does (proxy/server.py's logger) and return what was captured."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("mitmproxy.proxy.server").log(logging.INFO, "%s", HUNG_UP, exc_info=exc_info)
    return caplog.text


def test_mitmproxy_own_lines_hold_no_token_while_the_addon_is_loaded(addon, caplog):
    shown = mitmproxy_lines(caplog)
    assert "Client closed connection before completing request headers" in shown and "<redacted sha256:" in shown
    assert not any(form in shown for form in secret_forms(TOKEN))


def test_a_traceback_in_mitmproxy_lines_holds_no_token(addon, caplog):
    try:
        raise ValueError(f"Invalid header line: {f'Authorization Bearer {TOKEN}'.encode()!r}")
    except ValueError as e:
        shown = mitmproxy_lines(caplog, exc_info=e)
    assert "Traceback" in shown and "Invalid header line" in shown
    assert not any(form in shown for form in secret_forms(TOKEN))


def test_the_log_filter_comes_off_in_done_and_with_show_tokens(rules_file, caplog):
    addon = K8sWs()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, k8s_ws_rules=str(rules_file))
        assert TOKEN not in mitmproxy_lines(caplog)
        tctx.configure(addon, k8s_ws_show_tokens=True)
        assert TOKEN in mitmproxy_lines(caplog)  # the user asked to see them
        tctx.configure(addon, k8s_ws_show_tokens=False)
        assert TOKEN not in mitmproxy_lines(caplog)
        addon.done()
        assert TOKEN in mitmproxy_lines(caplog)  # a removed addon leaves mitmproxy's logging as it was


# --- operating: options, and failed handshakes flagged in the flow list -------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        pytest.param("k8s_ws_metrics", "9100", "expected host:port", id="metrics: no host"),
        pytest.param("k8s_ws_metrics", "127.0.0.1:http", "expected host:port", id="metrics: a port that is no number"),
        pytest.param("k8s_ws_metrics", "127.0.0.1:70000", "expected host:port", id="metrics: a port out of range"),
        pytest.param("k8s_ws_log_format", "xml", "k8s_ws_log_format", id="log format: unknown"),
    ],
)
def test_bad_operating_options_are_refused(addon, option, value, message):
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match=message):
            tctx.configure(addon, **{option: value})


def test_metrics_without_prometheus_client_is_a_clear_error(addon, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails, as when not installed
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match=r"pip install 'k8s-ws\[metrics\]'"):
            tctx.configure(addon, k8s_ws_metrics="127.0.0.1:0")


def test_a_failed_handshake_is_marked_and_its_hint_is_the_comment(addon):
    flow = headlamp_exec()
    send(addon, flow)
    answer(addon, flow, status=401, headers=[("Content-Type", "text/plain"), ("X-Api-Cattle-Auth", "false")])
    addon.response(flow)
    assert flow.marked == ":warning:"
    assert flow.comment.startswith("k8s_ws: ") and flow.comment.removeprefix("k8s_ws: ") == flow.metadata["k8s_ws"]["hint"]


def test_a_refused_handshake_is_marked_with_the_refusal(addon):
    flow = upgrade(headers=[("Sec-WebSocket-Protocol", ENTRY)])
    addon.requestheaders(flow)
    assert flow.marked and flow.comment == flow.response.get_text().strip()


def test_a_handshake_that_worked_is_not_marked(addon):
    flow = headlamp_exec()
    send(addon, flow)
    answer(addon, flow, headers=[("Sec-WebSocket-Protocol", "v4.channel.k8s.io")])
    addon.response(flow)
    assert (flow.marked, flow.comment) == ("", "")


def test_the_users_own_marker_and_comment_stay(addon):
    flow = upgrade(headers=[("Sec-WebSocket-Protocol", ENTRY)])
    flow.marked, flow.comment = ":star:", "looking at this one"
    addon.requestheaders(flow)
    assert flow.marked == ":star:"
    assert flow.comment.startswith("looking at this one\nk8s_ws: rule 'rancher'")


def test_a_hint_that_quotes_a_byte_that_is_not_utf8_leaves_the_flow_savable(addon, tmp_path):
    flow = upgrade()
    flow.request.headers.fields += ((b"Sec-WebSocket-Protocol", b"v4.channel.k8s.io\xff, " + ENTRY.encode()),)
    send(addon, flow)
    answer(addon, flow)  # a 101 that names no protocol: the hint quotes the offered one
    addon.response(flow)
    assert "\\xff" in flow.comment and flow.marked
    loaded = saved_and_loaded(flow, tmp_path)
    assert loaded.comment == flow.comment


def test_a_protocol_echoed_byte_for_byte_was_offered(addon):
    flow = upgrade()
    flow.request.headers.fields += ((b"Sec-WebSocket-Protocol", b"v4.channel.k8s.io\xff, " + ENTRY.encode()),)
    send(addon, flow)
    flow.response = http.Response.make(101, b"", [(b"Sec-WebSocket-Protocol", b"v4.channel.k8s.io\xff")])
    addon.responseheaders(flow)
    addon.response(flow)
    assert "hint" not in flow.metadata["k8s_ws"] and not flow.marked
