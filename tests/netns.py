"""Network namespaces for the transparent-mode tests: a small lab of hosts on veth links, the
test server and mitmdump placed in them, and this process's own thread moved between them.

Needs root, `ip` (iproute2) and a kernel with network namespaces; `skip_reason()` says what is
missing. Namespace names end in this process's id, so two runs never meet; `Lab.close()` deletes
everything a lab made, and the fixtures call it even when a test fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fake_rancher import FakeServer, TestPKI
from mitmdump_harness import ROOT, Mitmdump

REDIRECT = ROOT / "deploy" / "transparent" / "redirect"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def skip_reason() -> str | None:
    """Why the namespace tests cannot run here, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root: it creates network namespaces and firewall rules"
    if not shutil.which("ip"):
        return "needs iproute2's `ip` (apt-get install iproute2)"
    probe = f"kws-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=True)
    return None


def missing_tool(*tools: str, package: str) -> str | None:
    """A skip reason when a tool is not installed."""
    absent = [tool for tool in tools if not shutil.which(tool)]
    return f"needs {', '.join(absent)} (apt-get install {package}; .ci/run installs it)" if absent else None


def run(*command, check: bool = True, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, **kwargs)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(map(str, command))} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


@contextlib.contextmanager
def entered(namespace: str):
    """This thread inside a namespace: sockets it creates meanwhile stay there, and so do the
    threads it starts. Other threads are not moved."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(own)


class Lab:
    """Namespaces joined by veth pairs, named <prefix>-<pid>-<role>."""

    def __init__(self, prefix: str = "kws"):
        self.prefix = f"{prefix}-{os.getpid()}"
        self.namespaces: list[str] = []

    def host(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")
        return name

    def ip(self, namespace: str, *args) -> subprocess.CompletedProcess:
        return run("ip", "-n", namespace, *args)

    def exec(self, namespace: str, *command, **kwargs) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", namespace, *command, **kwargs)

    def link(self, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
        """A veth pair between namespaces a and b, with an address (CIDR) on each end."""
        run("ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b)
        for namespace, interface, address in ((a, a_if, a_addr), (b, b_if, b_addr)):
            self.ip(namespace, "addr", "add", address, "dev", interface)
            self.ip(namespace, "link", "set", interface, "up")

    def redirect(self, namespace: str, action: str, topology: str, *, check: bool = True,
                 **settings) -> subprocess.CompletedProcess:
        """deploy/transparent/redirect in a namespace; settings are K8S_WS_* without the prefix."""
        env = {f"K8S_WS_{k.upper()}": str(v) for k, v in settings.items()}
        return self.exec(namespace, REDIRECT, action, topology, env=env, check=check)

    def close(self) -> None:
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.namespaces.clear()


def make_pki(directory, *, ips: tuple[str, ...], names: tuple[str, ...] = ()) -> TestPKI:
    """A test CA and a server certificate for these addresses and names: a client that connects
    by address sends no SNI, and mitmproxy then verifies the upstream against the address."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k8s-ws netns test CA")])

    def builder(subject, public_key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False))

    ca = (builder(ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
          .sign(ca_key, hashes.SHA256()))
    san = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips] + [x509.DNSName(name) for name in names]
    leaf = (builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ips)[0])]), key.public_key())
            .add_extension(x509.SubjectAlternativeName(san), False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    pki = TestPKI(str(directory / "ca.pem"), str(directory / "cert.pem"), str(directory / "key.pem"))
    Path(pki.ca_cert).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    Path(pki.cert).write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    Path(pki.key).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return pki


class FakeServerAt(FakeServer):
    """The test server on a given address, named in Host without a default port. Start it from
    inside a namespace (`with entered(ns):`) and its thread, so its socket, lives there."""

    def __init__(self, address: str, **kwargs):
        super().__init__(address=address, **kwargs)

    @property
    def host(self) -> str:  # as a client's Host header names it
        return self.address if self.port == (443 if self.pki else 80) else f"{self.address}:{self.port}"


class NetnsMitmdump(Mitmdump):
    """mitmdump in a namespace, on a fixed address and port (a redirect names the port), and
    optionally as another user.

    As another user it keeps one capability, CAP_DAC_READ_SEARCH, and only so that it can read
    an interpreter installed under /root (as pyenv's is here); it writes only in its workdir,
    which it owns."""

    def __init__(self, workdir: Path, namespace: str, *, listen_host: str, listen_port: int,
                 uid: int | None = None, **kwargs):
        super().__init__(workdir, **kwargs)
        command = list(self.command)
        host_at, port_at = command.index("--listen-host") + 1, command.index("--listen-port") + 1
        command[host_at], command[port_at] = listen_host, str(listen_port)
        prefix = ["ip", "netns", "exec", namespace]
        if uid is not None:
            for path in (self.workdir, *self.workdir.rglob("*")):
                os.chown(path, uid, uid)
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                       "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]
        self.command = prefix + command
