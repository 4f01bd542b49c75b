"""How much memory mitmdump holds per open handled session, and after many handshakes: k8s-ws
next to plain mitmdump, in one run.

    python3 bench/memory.py                        # 1,000 sessions, 5,000 handshakes; 3-5 minutes on 2 cores
    python3 bench/memory.py --sessions 200 --churn 1000
    python3 bench/memory.py --tls both             # TLS on both sides, as in front of Rancher (--tls client: one)
    python3 bench/memory.py --trace                # where the addon's per-session memory goes (tracemalloc)

Everything runs on this machine, over loopback, against bench/echo_server.py (a `websockets` echo
server that picks v4.channel.k8s.io), through mitmdump in reverse mode, in each setup:

    plain mitmdump      no addon: mitmproxy's WebSocket layer carries every stream
    addon               -s addon/k8s_ws.py with the shipped rules.yaml (inspect off: the raw relay)
    addon, inspect on   the same with --set k8s_ws_inspect=true (with --inspect)

Each client opens what Headlamp opens for an exec (a Rancher path, a browser User-Agent and
Origin, a token of its own as a bearer entry), so the rancher rule handles every session that goes
through the addon; one message is echoed on each session to know it is through the relay.

    per open session   (VmRSS with N sessions open - VmRSS before) / N, after a warm-up of 100
                       sessions opened and closed; also as a ratio to plain mitmdump's
    after churn        VmRSS after M more sessions opened and closed (10 at a time), less the same
                       "before": what handshakes leave behind

With --trace, only the addon setup runs, with a probe script in mitmdump that takes tracemalloc
snapshots (and counts live objects by type) before and with the sessions open; it prints the
allocation sites, tracebacks and object types that grew, per session. tracemalloc's own overhead
inflates RSS then: the RSS figures of a --trace run are not the benchmark's.

Benchmarks are not tests: nothing here fails on a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import mitmproxy.version
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from helpers import BROWSER_UA, PAGE_ORIGIN, base64url_entry  # noqa: E402
from run import Process, free_port, mitmdump_command, rss, start_echo_server  # noqa: E402

EXEC = "/k8s/clusters/c-m-bench/api/v1/namespaces/default/pods/mem-{n}/exec?command=sh&stdin=1&stdout=1&tty=1"
WARM_UP, OPEN_CONCURRENCY, CHURN_CONCURRENCY = 100, 50, 10
KiB, MiB = 1024, 1024 * 1024

PROBE = '''\
"""bench/memory.py's probe: tracemalloc snapshots and live objects by type, on request (a file)."""
import asyncio, collections, gc, json, os, sys, tracemalloc

from mitmproxy import ctx


class Probe:
    def load(self, loader):
        loader.add_option("bench_probe_dir", str, "", "where bench/memory.py asks for snapshots")

    def running(self):
        tracemalloc.start(int(os.environ.get("BENCH_TRACE_FRAMES", "16")))
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self):
        where = ctx.options.bench_probe_dir
        while True:
            await asyncio.sleep(0.2)
            for name in os.listdir(where):
                if name.endswith(".want"):
                    label = name[:-5]
                    gc.collect()
                    tracemalloc.take_snapshot().dump(os.path.join(where, label + ".snap"))
                    types = collections.Counter()
                    sizes = collections.Counter()
                    for obj in gc.get_objects():
                        kind = type(obj)
                        key = f"{kind.__module__}.{kind.__qualname__}"
                        types[key] += 1
                        sizes[key] += sys.getsizeof(obj, 0)
                    with open(os.path.join(where, label + ".types"), "w") as f:
                        json.dump({k: [types[k], sizes[k]] for k in types}, f)
                    os.remove(os.path.join(where, name))
                    open(os.path.join(where, label + ".done"), "w").close()


addons = [Probe()]
'''


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # mitmdump inherits it


TLS_ECHO = """
import asyncio, ssl, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main(port, cert, key):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    async with serve(echo, "127.0.0.1", port, ssl=context, subprotocols=["v4.channel.k8s.io"], compression=None,
                     max_size=None, ping_interval=None, open_timeout=300):
        await asyncio.get_running_loop().create_future()

asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
"""


class Upstream:
    """The echo server: bench/echo_server.py, or (tls) the same over TLS with a test CA; and
    whether clients speak TLS to mitmdump (client_tls)."""

    def __init__(self, workdir: Path, tls: bool, client_tls: bool = False):
        self.tls, self.client_tls = tls, client_tls or tls
        if tls:
            from fake_rancher import make_test_pki

            self.pki = make_test_pki(workdir / "pki")
            self.port = free_port()
            self.process = Process([sys.executable, "-c", TLS_ECHO, str(self.port), self.pki.cert, self.pki.key], workdir / "echo_tls.log")
            self.process.wait_listening(self.port)
        else:
            self.process, self.port = start_echo_server(workdir)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()


#: Scripts loaded after the addon in a setup of their own (--script): to measure a candidate change
#: beside the addon as it is, in one run.
EXTRA_SCRIPTS: list[str] = []
WITH_SCRIPTS = "addon + --script"


def start_proxy(workdir: Path, upstream: Upstream, setup: str, probe_dir: Path | None = None) -> tuple[Process, int]:
    port = free_port()
    command = mitmdump_command(workdir, upstream.url, port)
    if upstream.tls:
        command += ["--set", f"ssl_verify_upstream_trusted_ca={upstream.pki.ca_cert}"]
    if setup.startswith("addon"):
        command += ["-s", str(ROOT / "addon" / "k8s_ws.py")]
    if setup == WITH_SCRIPTS:
        for script in EXTRA_SCRIPTS:
            command += ["-s", script]
    if setup == "addon, inspect on":
        command += ["--set", "k8s_ws_inspect=true"]
    if probe_dir is not None:
        probe = workdir / "memory_probe.py"
        probe.write_text(PROBE)
        command += ["-s", str(probe), "--set", f"bench_probe_dir={probe_dir}"]
    proxy = Process(command, workdir / f"mitmdump {setup}.log")
    proxy.wait_listening(port)
    return proxy, port


#: The client's TLS context when it speaks wss to mitmdump (set by main: mitmproxy's CA).
CLIENT_TLS: list = [None]


def session(base_url: str, n: int):
    extra = {"ssl": CLIENT_TLS[0]} if base_url.startswith("wss:") else {}
    return connect(
        base_url + EXEC.format(n=n),
        **extra,
        subprotocols=["v4.channel.k8s.io", base64url_entry(f"token-bench:{n:054d}")],
        origin=PAGE_ORIGIN,
        user_agent_header=BROWSER_UA,
        compression=None,
        max_size=None,
        proxy=None,
        ping_interval=None,
        open_timeout=120,
        close_timeout=30,
    )


async def open_sessions(base_url: str, count: int, first: int, message: int = 5, concurrency: int = OPEN_CONCURRENCY) -> list:
    """`count` sessions, opened OPEN_CONCURRENCY at a time, each through the relay (a message of
    `message` bytes echoed)."""
    opened = []
    payload = b"\x00" + bytes(message - 1)

    async def one(n: int):
        ws = await session(base_url, n)
        await ws.send(payload)
        assert await ws.recv() == payload
        return ws

    for start in range(first, first + count, concurrency):
        opened += await asyncio.gather(*(one(n) for n in range(start, min(start + concurrency, first + count))))
    return opened


async def close_sessions(sessions: list) -> None:
    for start in range(0, len(sessions), OPEN_CONCURRENCY):
        await asyncio.gather(*(ws.close() for ws in sessions[start : start + OPEN_CONCURRENCY]))


async def churn(base_url: str, count: int, first: int) -> None:
    remaining = iter(range(first, first + count))

    async def worker():
        for n in remaining:
            async with session(base_url, n) as ws:
                await ws.send(b"\x00ping")
                await ws.recv()

    await asyncio.gather(*(worker() for _ in range(CHURN_CONCURRENCY)))


def settle(pid: int, seconds: float = 2.0) -> int:
    """VmRSS once mitmdump has had time to finish what the last clients started."""
    time.sleep(seconds)
    return rss(pid)


def client_url(upstream: Upstream, port: int, workdir: Path) -> str:
    if not upstream.client_tls:  # mitmproxy detects TLS from a client in reverse mode either way
        return f"ws://127.0.0.1:{port}"
    import ssl

    CLIENT_TLS[0] = ssl.create_default_context(cafile=str(workdir / "confdir" / "mitmproxy-ca-cert.pem"))
    return f"wss://127.0.0.1:{port}"


def measure(setup: str, workdir: Path, upstream: Upstream, sessions: int, churned: int, message: int) -> dict:
    proxy, port = start_proxy(workdir, upstream, setup)
    base_url = client_url(upstream, port, workdir)
    try:
        pid = proxy.process.pid
        print(f"{setup}: warm-up ...", file=sys.stderr, flush=True)
        asyncio.run(churn(base_url, WARM_UP, 0))
        before = settle(pid)
        print(f"{setup}: opening {sessions:,} sessions ...", file=sys.stderr, flush=True)

        async def hold() -> int:
            opened = await open_sessions(base_url, sessions, WARM_UP, message)
            held = settle(pid)
            await close_sessions(opened)
            return held

        held = asyncio.run(hold())
        closed = settle(pid, 3)
        print(f"{setup}: {churned:,} handshakes ...", file=sys.stderr, flush=True)
        checkpoints = []
        done = 0
        for step in (churned // 5,) * 5:
            asyncio.run(churn(base_url, step, WARM_UP + sessions + done))
            done += step
            checkpoints.append((done, settle(pid, 1)))
        return {"before": before, "held": held, "closed": closed, "churn": checkpoints}
    finally:
        proxy.stop()


def report(results: dict, sessions: int, churned: int, load: tuple[float, float]) -> str:
    plain = results.get("plain mitmdump")
    lines = [
        f"k8s-ws memory benchmark: mitmproxy {mitmproxy.version.VERSION}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} before, {load[1]:.2f} after",
        "",
        f"| {'':44} | " + " | ".join(f"{s:>18}" for s in results) + " |",
        f"|{'-' * 46}|" + "|".join("-" * 19 + ":" for _ in results) + "|",
    ]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label:44} | " + " | ".join(f"{v:>18}" for v in values) + " |")

    per = {s: (r["held"] - r["before"]) / sessions for s, r in results.items()}
    row("VmRSS after warm-up, MiB", [f"{r['before'] / MiB:.1f}" for r in results.values()])
    row(f"VmRSS with {sessions:,} sessions open, MiB", [f"{r['held'] / MiB:.1f}" for r in results.values()])
    row("per open session, KiB", [f"{per[s] / KiB:.1f}" for s in results])
    if plain:
        row("per open session, ratio to plain mitmdump", [f"{per[s] / per['plain mitmdump']:.2f}" for s in results])
    row("VmRSS once they closed, over warm-up, MiB", [f"{(r['closed'] - r['before']) / MiB:.1f}" for r in results.values()])
    for i, (done, _) in enumerate(next(iter(results.values()))["churn"]):
        row(
            f"after {done:,} more handshakes, over warm-up, MiB",
            [f"{(r['churn'][i][1] - r['before']) / MiB:.1f}" for r in results.values()],
        )
    growth = {s: (r["churn"][-1][1] - r["churn"][0][1]) / MiB for s, r in results.items()}
    first = results[next(iter(results))]["churn"][0][0]
    lines += [
        "",
        f"churn: VmRSS growth from {first:,} to {churned:,} handshakes: "
        + ", ".join(f"{s} {g:+.1f} MiB" for s, g in growth.items()),
        "target: per open handled session (addon) <= 48 KiB: "
        + (f"{per['addon'] / KiB:.1f} KiB, {'met' if per['addon'] <= 48 * KiB else 'MISSED'}" if "addon" in per else "n/a"),
    ]
    return "\n".join(lines)


# --- --trace -------------------------------------------------------------------------------------------


def snapshot(probe_dir: Path, label: str) -> tuple[tracemalloc.Snapshot, dict]:
    (probe_dir / f"{label}.want").touch()
    deadline = time.monotonic() + 600
    while not (probe_dir / f"{label}.done").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the probe took no snapshot")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(probe_dir / f"{label}.snap")), json.loads((probe_dir / f"{label}.types").read_text())


def trace(workdir: Path, upstream: Upstream, sessions: int, setup: str, top: int, message: int) -> str:
    probe_dir = workdir / "probe"
    probe_dir.mkdir()
    proxy, port = start_proxy(workdir, upstream, setup, probe_dir)
    base_url = client_url(upstream, port, workdir)
    try:
        asyncio.run(churn(base_url, WARM_UP, 0))
        time.sleep(2)
        before, types_before = snapshot(probe_dir, "before")

        async def hold():
            opened = await open_sessions(base_url, sessions, WARM_UP, message, concurrency=10)  # tracemalloc is slow
            time.sleep(2)
            result = snapshot(probe_dir, "open")
            await close_sessions(opened)
            return result

        after, types_after = asyncio.run(hold())
    finally:
        proxy.stop()
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    lines = [f"{setup}: {sessions:,} sessions open; traced Python allocations grew {total / sessions / KiB:.1f} KiB per session", ""]
    lines.append("by file (KiB per session, blocks per session):")
    for stat in after.compare_to(before, "filename")[:top]:
        lines.append(f"  {stat.size_diff / sessions / KiB:7.2f} {stat.count_diff / sessions:7.1f}  {stat.traceback[0].filename}")
    lines.append("\nby line:")
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        lines.append(f"  {stat.size_diff / sessions / KiB:7.2f} {stat.count_diff / sessions:7.1f}  {frame.filename}:{frame.lineno}")
    lines.append("\nlive objects by type, per session (count, sys.getsizeof KiB):")
    grown = {
        kind: (count - types_before.get(kind, [0, 0])[0], size - types_before.get(kind, [0, 0])[1])
        for kind, (count, size) in types_after.items()
    }
    for kind, (count, size) in sorted(grown.items(), key=lambda item: -item[1][1])[:top]:
        lines.append(f"  {count / sessions:7.2f} {size / sessions / KiB:7.2f}  {kind}")
    lines.append("\nby traceback (the largest ten):")
    for stat in after.compare_to(before, "traceback")[:10]:
        lines.append(f"  {stat.size_diff / sessions / KiB:.2f} KiB/session, {stat.count_diff / sessions:.1f} blocks/session:")
        lines += [f"      {frame.filename}:{frame.lineno}" for frame in stat.traceback[-8:]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000, help="sessions held open at once")
    parser.add_argument("--churn", type=int, default=5000, help="handshakes opened and closed after them")
    parser.add_argument("--inspect", action="store_true", help="also the addon with k8s_ws_inspect=true")
    parser.add_argument("--message", type=int, default=5, help="bytes each open session echoes before the figure (default 5)")
    parser.add_argument(
        "--tls", choices=["client", "both"], help="client: wss to mitmdump (the upstream plain); both: and https to the echo server"
    )
    parser.add_argument("--script", action="append", default=[], help="a script to load after the addon, in a setup of its own")
    parser.add_argument("--trace", action="store_true", help="tracemalloc inside mitmdump with the addon, instead of RSS")
    parser.add_argument("--trace-setup", default="addon", help="the setup --trace looks into (default: addon)")
    parser.add_argument("--top", type=int, default=25, help="--trace: lines per table")
    args = parser.parse_args()
    _raise_fd_limit()
    EXTRA_SCRIPTS.extend(str(Path(script).resolve()) for script in args.script)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="k8s-ws-memory-") as tmp:
        workdir = Path(tmp)
        upstream = Upstream(workdir, args.tls == "both", client_tls=args.tls == "client")
        try:
            if args.trace:
                print(trace(workdir, upstream, args.sessions, args.trace_setup, args.top, args.message))
                return
            setups = ["plain mitmdump", "addon"] + (["addon, inspect on"] if args.inspect else []) + ([WITH_SCRIPTS] if args.script else [])
            results = {setup: measure(setup, workdir, upstream, args.sessions, args.churn, args.message) for setup in setups}
        finally:
            upstream.stop()
    print(report(results, args.sessions, args.churn, (load_before, os.getloadavg()[0])))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
