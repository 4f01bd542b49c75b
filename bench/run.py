"""How fast k8s-ws relays, and how much memory it keeps, next to plain mitmdump and no proxy.

    python bench/run.py [--rounds N]

One run, on this machine, loopback only, against bench/echo_server.py (a `websockets` echo server
that picks v4.channel.k8s.io), of four setups:

    direct              the client talks to the echo server
    plain mitmdump      mitmdump --mode reverse:<echo server>, no addon
    addon, inspect off  the same with -s addon/k8s_ws.py and the shipped rules.yaml (the default)
    addon, inspect on   the same with --set k8s_ws_inspect=true

The client opens what Headlamp opens for an exec (a Rancher path, a browser User-Agent and Origin,
the token as a bearer entry), so the rancher rule handles every stream through the addon. Each
mitmdump runs with its default options, its output going to a file.

    handshakes/s         300 streams opened and closed (both handshakes), 10 at a time
    messages/s, MB/s     one stream, messages echoed with 64 (100 bytes) or 8 (64 KiB) in flight,
                         for 2 s; MB/s counts the payload echoed back, 1 MB = 10^6 bytes
    RSS growth           mitmdump's VmRSS after 100,000 messages of 1 KiB on one stream, less
                         before; the server reads and drops them, the client pings every 1,000
    rule decision        kubews.decide in this process, median of 20,000 calls spread over
                         the rounds, with 1,000 rules (one per Rancher host, as in rules.yaml) of
                         which the last matches, and with 1 rule

Throughput figures are the median of N rounds (default 5) taken in turns, setup after setup, to
spread the machine's noise; a target's ratio is the median of the rounds' own ratios. The RSS
figures are taken first, on fresh mitmdump processes, once. Benchmarks are not tests: nothing
here fails on a slow figure. It takes about four minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mitmproxy.version
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "addon"), str(ROOT / "tests")]

import kubews  # noqa: E402

# The client sends the tests' token and browser headers (tests/helpers.py).
from helpers import BROWSER_UA, PAGE_ORIGIN, TOKEN, base64url_entry  # noqa: E402
from kubews.rulesfile import load_rules  # noqa: E402

ENTRY = base64url_entry(TOKEN)
EXEC = "/k8s/clusters/c-m-bench/api/v1/namespaces/default/pods/{pod}/exec?command=sh&stdin=1&stdout=1&tty=1"

SETUPS = ("direct", "plain mitmdump", "addon, inspect off", "addon, inspect on")
HANDSHAKES, HANDSHAKE_CONCURRENCY = 300, 10
SMALL, SMALL_WINDOW = 100, 64
LARGE, LARGE_WINDOW = 64 * 1024, 8
SECONDS_PER_RATE = 2.0
RSS_MESSAGES, RSS_SIZE, RSS_SYNC_EVERY = 100_000, 1024, 1000
RULES, DECISION_CALLS = 1000, 20_000
MiB = 1024 * 1024


# --- the client --------------------------------------------------------------------------------


def stream(base_url: str, pod: str = "echo"):
    """An exec stream as a browser console opens it."""
    return connect(
        base_url + EXEC.format(pod=pod),
        subprotocols=["v4.channel.k8s.io", ENTRY],
        origin=PAGE_ORIGIN,
        user_agent_header=BROWSER_UA,
        compression=None,
        max_size=None,
        proxy=None,
        ping_interval=None,
        open_timeout=60,
    )


async def handshake_rate(base_url: str) -> float:
    """Handshakes per second: HANDSHAKES streams opened and closed, HANDSHAKE_CONCURRENCY at a time."""
    remaining = iter(range(HANDSHAKES))

    async def worker() -> None:
        for _ in remaining:
            async with stream(base_url):
                pass

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(HANDSHAKE_CONCURRENCY)))
    return HANDSHAKES / (time.perf_counter() - start)


async def echo_rate(base_url: str, size: int, window: int) -> float:
    """Messages echoed per second on one stream, `window` of them in flight, for SECONDS_PER_RATE."""
    payload = b"\x00" + bytes(size - 1)  # stdin, as exec frames it
    async with stream(base_url) as ws:
        received = in_flight = 0
        start = time.perf_counter()
        stop = start + SECONDS_PER_RATE
        while True:
            if in_flight < window and time.perf_counter() < stop:
                await ws.send(payload)
                in_flight += 1
            elif in_flight:
                await ws.recv()
                in_flight -= 1
                received += 1
            else:
                return received / (time.perf_counter() - start)


async def rss_growth(base_url: str, pid: int) -> float:
    """MiB that mitmdump's RSS grows by while RSS_MESSAGES messages of RSS_SIZE bytes go through one stream."""
    payload = b"\x00" + bytes(RSS_SIZE - 1)
    async with stream(base_url, pod="sink") as ws:
        await ws.send(payload)
        await (await ws.ping())
        before = rss(pid)
        for sent in range(1, RSS_MESSAGES + 1):
            await ws.send(payload)
            if sent % RSS_SYNC_EVERY == 0:
                # The pong comes once the server has read every message before the ping. mitmproxy
                # reads on while its hooks run: without this, the RSS would count its read-ahead.
                await (await ws.ping())
        return (rss(pid) - before) / MiB


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# --- the rule decision ---------------------------------------------------------------------------


class Decision:
    """kubews.decide with `count` rules (one per Rancher host, as in rules.yaml), on what
    Chromium sends for Headlamp's exec to the host of the last rule."""

    def __init__(self, workdir: Path, count: int):
        rules_file = workdir / f"rules-{count}.yaml"
        paths = '["/k8s/clusters/*/api/*", "/k8s/clusters/*/apis/*", "/k8s/proxy/*/api/*", "/k8s/proxy/*/apis/*"]'
        rules_file.write_text(
            "rules:\n"
            + "".join(
                f'  - name: rancher-{i}\n    hosts: ["rancher-{i}.example.com"]\n    paths: {paths}\n    origin: match-host\n'
                for i in range(count)
            )
        )
        self.ruleset = load_rules(rules_file)
        host = f"rancher-{count - 1}.example.com"
        self.request = kubews.Handshake(
            destinations=(kubews.Destination(host, verified=True),),
            port=443,
            path=EXEC.format(pod="echo").partition("?")[0],
            headers=(
                ("Host", host),
                ("Connection", "Upgrade"),
                ("Pragma", "no-cache"),
                ("Cache-Control", "no-cache"),
                ("User-Agent", BROWSER_UA),
                ("Upgrade", "websocket"),
                ("Origin", PAGE_ORIGIN),
                ("Sec-WebSocket-Version", "13"),
                ("Accept-Encoding", "gzip, deflate, br, zstd"),
                ("Accept-Language", "en-US,en;q=0.9"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
                ("Sec-WebSocket-Protocol", f"base64.binary.k8s.io, v4.channel.k8s.io, channel.k8s.io, {ENTRY}"),
            ),
            scheme="https",
            host_header=host,
        )
        verdict = kubews.decide(self.ruleset, self.request)
        assert isinstance(verdict, kubews.Forward) and verdict.rule.name == f"rancher-{count - 1}", verdict
        self.timings: list[int] = []

    def sample(self, calls: int) -> None:
        decide, ruleset, request = kubews.decide, self.ruleset, self.request
        for _ in range(calls):
            start = time.perf_counter_ns()
            decide(ruleset, request)
            self.timings.append(time.perf_counter_ns() - start)

    def percentile_us(self, percent: int) -> float:
        return sorted(self.timings)[len(self.timings) * percent // 100] / 1000


# --- the run -------------------------------------------------------------------------------------


class Process:
    """A server of the benchmark, its output in a file, stopped with Ctrl-C as a user would."""

    def __init__(self, command: list[str], log: Path):
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        self.log = log

    def wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.log.name} exited:\n{self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.log.name} not listening on {port} after 60 s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_echo_server(workdir: Path) -> tuple[Process, int]:
    port = free_port()
    server = Process([sys.executable, str(ROOT / "bench" / "echo_server.py"), str(port)], workdir / "echo_server.log")
    server.wait_listening(port)
    return server, port


def mitmdump_command(workdir: Path, upstream_url: str, port: int) -> list[str]:
    """mitmdump in reverse mode with its default options, but its own confdir (and CA) in the
    run's directory; the setups add to it."""
    return [
        sys.executable, "-c", "from mitmproxy.tools.main import mitmdump; mitmdump()",
        "--mode", f"reverse:{upstream_url}",
        "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", f"confdir={workdir / 'confdir'}",
    ]  # fmt: skip


def start_mitmdump(workdir: Path, echo_port: int, setup: str) -> tuple[Process, int]:
    port = free_port()
    command = mitmdump_command(workdir, f"http://127.0.0.1:{echo_port}", port)
    if setup.startswith("addon"):
        command += ["-s", str(ROOT / "addon" / "k8s_ws.py")]
    if setup == "addon, inspect on":
        command += ["--set", "k8s_ws_inspect=true"]
    proxy = Process(command, workdir / f"mitmdump {setup}.log")
    proxy.wait_listening(port)
    return proxy, port


def measure(rounds: int) -> dict:
    results: dict[str, dict[str, list[float]]] = {setup: {} for setup in SETUPS}
    with tempfile.TemporaryDirectory(prefix="k8s-ws-bench-") as tmp, contextlib.ExitStack() as servers:
        workdir = Path(tmp)
        decisions = {count: Decision(workdir, count) for count in (1, RULES)}
        echo, echo_port = start_echo_server(workdir)
        servers.callback(echo.stop)
        urls, proxies = {"direct": f"ws://127.0.0.1:{echo_port}"}, {}
        for setup in SETUPS[1:]:
            proxies[setup], port = start_mitmdump(workdir, echo_port, setup)
            servers.callback(proxies[setup].stop)
            urls[setup] = f"ws://127.0.0.1:{port}"
        for setup, proxy in proxies.items():
            print(f"RSS growth over {RSS_MESSAGES:,} messages: {setup} ...", file=sys.stderr, flush=True)
            results[setup]["rss"] = [asyncio.run(rss_growth(urls[setup], proxy.process.pid))]
        for round_number in range(1, rounds + 1):
            print(f"round {round_number}/{rounds} ...", file=sys.stderr, flush=True)
            # Forwards, then backwards: a drift of the machine's speed weighs on every setup alike.
            for setup in SETUPS if round_number % 2 else reversed(SETUPS):
                figures = results[setup]
                figures.setdefault("handshakes", []).append(asyncio.run(handshake_rate(urls[setup])))
                figures.setdefault("small", []).append(asyncio.run(echo_rate(urls[setup], SMALL, SMALL_WINDOW)))
                large = asyncio.run(echo_rate(urls[setup], LARGE, LARGE_WINDOW)) * LARGE / 1e6
                figures.setdefault("large", []).append(large)
            for decision in decisions.values():
                decision.sample(DECISION_CALLS // rounds)
    return {
        "rounds": results,
        "decision": {count: (decision.percentile_us(50), decision.percentile_us(10)) for count, decision in decisions.items()},
    }


def report(measured: dict, rounds: int, load: tuple[float, float]) -> str:
    per_round, decision = measured["rounds"], measured["decision"]
    rows = [
        (f"handshakes/s ({HANDSHAKES}, {HANDSHAKE_CONCURRENCY} at a time)", "handshakes", "{:,.0f}"),
        (f"{SMALL}-byte messages echoed/s ({SMALL_WINDOW} in flight)", "small", "{:,.0f}"),
        (f"64 KiB messages echoed, MB/s ({LARGE_WINDOW} in flight)", "large", "{:,.0f}"),
        (f"RSS growth, {RSS_MESSAGES // 1000}k x 1 KiB messages, MiB", "rss", "{:,.1f}"),
    ]

    def cell(setup: str, key: str, fmt: str) -> str:
        values = per_round[setup].get(key)
        if not values:
            return "n/a"
        median = fmt.format(statistics.median(values))
        return median if len(values) == 1 else f"{median} ({fmt.format(min(values))}-{fmt.format(max(values))})"

    table = [[label, *(cell(s, key, fmt) for s in SETUPS)] for label, key, fmt in rows]
    widths = [max(len(row[i]) for row in [["", *SETUPS], *table]) for i in range(len(SETUPS) + 1)]
    lines = [
        f"k8s-ws relay benchmark: mitmproxy {mitmproxy.version.VERSION}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} before, {load[1]:.2f} after",
        f"median (lowest-highest) of {rounds} rounds",
        "",
        "| " + " | ".join(h.ljust(w) for h, w in zip(["", *SETUPS], widths, strict=True)) + " |",
        "|" + "|".join(["-" * (widths[0] + 2), *("-" * (w + 1) + ":" for w in widths[1:])]) + "|",
        *(
            "| " + " | ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))]) + " |"
            for row in table
        ),
        "",
        "rule decision (kubews.decide, a Chromium exec handshake that the last rule matches), median "
        "(10th percentile): "
        + ", ".join(
            f"{median:.1f} µs ({fast:.1f}) with {count:,} rule{'s' * (count > 1)}"
            for count, (median, fast) in sorted(decision.items(), reverse=True)
        ),
    ]

    def ratio(key: str, setup: str, reference: str) -> float:
        # Within a round the setups run back to back: the ratio of a round is the least noisy.
        return statistics.median(a / b for a, b in zip(per_round[setup][key], per_round[reference][key], strict=True))

    def per_100k(setup: str) -> float:
        return per_round[setup]["rss"][0] * 100_000 / RSS_MESSAGES

    addon = "addon, inspect off"
    targets = [
        ("handshakes/s, addon / plain mitmdump", ratio("handshakes", addon, "plain mitmdump"), ">=", 0.95, "{:.2f}"),
        ("small messages/s, addon / plain mitmdump", ratio("small", addon, "plain mitmdump"), ">=", 10, "{:.1f}"),
        ("small messages/s, addon / direct", ratio("small", addon, "direct"), ">=", 0.6, "{:.2f}"),
        ("RSS growth per 100k messages, addon, MiB", per_100k(addon), "<=", 10, "{:.1f}"),
        ("RSS growth per 100k messages, addon inspect on, MiB", per_100k("addon, inspect on"), "<=", 10, "{:.1f}"),
        ("rule decision, µs median at 1,000 rules", decision[RULES][0], "<=", 20, "{:.1f}"),
    ]
    lines.append("\ntargets (addon: inspect off, the default; a ratio is the median of the rounds' ratios):")
    for label, value, op, bound, fmt in targets:
        met = value >= bound if op == ">=" else value <= bound
        lines.append(f"  {label}: {fmt.format(value)} (target {op} {bound}) {'met' if met else 'MISSED'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the throughput figures (median)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    measured = measure(args.rounds)
    print(report(measured, args.rounds, (load_before, os.getloadavg()[0])))


if __name__ == "__main__":
    main()
