"""Real mitmdump processes for the end-to-end tests.

Each runs with its own confdir (so its own CA), on an ephemeral port of 127.0.0.1, and is ready
when tests/mitmdump_ready.py has written its listen address in the `running` hook.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon" / "k8s_ws.py"
READY_SCRIPT = ROOT / "tests" / "mitmdump_ready.py"


class Mitmdump:
    """A mitmdump (or, with program="mitmweb", a mitmweb) process."""

    def __init__(
        self,
        workdir: Path,
        *,
        mode: str = "regular",
        rules: str | os.PathLike | None = None,
        upstream_ca: str | None = None,
        options: dict[str, object] | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        addon: bool = True,
        program: str = "mitmdump",
        split_stderr: bool = False,
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.confdir = self.workdir / "confdir"
        self.ready_file = self.workdir / "ready.json"
        self.log_file = self.workdir / "mitmdump.log"
        # With split_stderr, standard error goes to its own file instead of the log.
        self.stderr_file = self.workdir / "mitmdump.stderr" if split_stderr else None
        command = [
            sys.executable, "-c", f"from mitmproxy.tools.main import {program}; {program}()",
            "--mode", mode,
            "--listen-host", "127.0.0.1", "--listen-port", "0",
            "--set", f"confdir={self.confdir}",
            "--set", "termlog_verbosity=debug",
        ]  # fmt: skip
        if addon:
            command += ["-s", str(ADDON)]
        command += ["-s", str(READY_SCRIPT), "--set", f"test_ready_file={self.ready_file}"]
        if rules is not None:
            command += ["--set", f"k8s_ws_rules={rules}"]
        if upstream_ca is not None:
            command += ["--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]
        for name, value in (options or {}).items():
            command += ["--set", f"{name}={str(value).lower() if isinstance(value, bool) else value}"]
        self.command = command + list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def ca_cert(self) -> Path:
        """mitmproxy's CA certificate, for clients that go through it in regular mode."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Mitmdump:
        self.ready_file.unlink(missing_ok=True)
        log = open(self.log_file, "wb")
        errors = open(self.stderr_file, "wb") if self.stderr_file else subprocess.STDOUT
        self.process = subprocess.Popen(self.command, stdout=log, stderr=errors, env=self.env, cwd=self.workdir)
        log.close()
        if self.stderr_file:
            errors.close()
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"mitmdump exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mitmdump not ready after {timeout} s:\n{self.output()}")
            time.sleep(0.05)
        self.port = json.loads(self.ready_file.read_text())[0][1]
        return self

    def run_to_exit(self, timeout: float = 20.0) -> int:
        """For a mitmdump expected to stop by itself (e.g. on a broken rules file)."""
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
            return self.process.wait(timeout)

    def output(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stderr(self) -> str:
        """Standard error, when started with split_stderr."""
        return self.stderr_file.read_text(errors="replace") if self.stderr_file and self.stderr_file.exists() else ""

    def wait_for_output(self, text: str, timeout: float = 5.0, start: int = 0) -> str:
        """Wait until `text` appears in the output after offset `start`; return the output."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.output()
            if text in out[start:]:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in mitmdump's output within {timeout} s:\n{out[start:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Mitmdump:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mitmweb_option_names(confdir: Path) -> set[str]:
    """The options this mitmweb has, from its own `--options` (YAML: `name: default` lines)."""
    dump = subprocess.run(
        [sys.executable, "-c", "from mitmproxy.tools.main import mitmweb; mitmweb()", "--set", f"confdir={confdir}", "--options"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return {line.partition(":")[0] for line in dump.splitlines() if line[:1].isalpha()}


class Mitmweb(Mitmdump):
    """A mitmweb process, its web UI on a free port of 127.0.0.1. From mitmproxy 11.1.2 on,
    mitmweb asks for a password (`web_password`): it gets one, and its API is called with it as
    mitmweb's own clients call it (`Authorization: Bearer`; the page takes `?token=`)."""

    def __init__(self, workdir: Path, *, options: dict[str, object] | None = None, args: tuple[str, ...] = (), **kwargs):
        self.web_port = free_port()
        options = dict(options or {})
        self.web_password: str | None = None
        if "web_password" in mitmweb_option_names(Path(workdir) / "options-confdir"):
            options["web_password"] = self.web_password = secrets.token_hex(16)
        web_args = ("--no-web-open-browser", "--web-host", "127.0.0.1", "--web-port", str(self.web_port))
        super().__init__(workdir, program="mitmweb", options=options, args=web_args + tuple(args), **kwargs)

    @property
    def web_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.web_password}"} if self.web_password else {}

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/" + (f"?token={self.web_password}" if self.web_password else "")

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}{path}", headers=self.web_auth)
        return urllib.request.urlopen(request, timeout=10).read()
