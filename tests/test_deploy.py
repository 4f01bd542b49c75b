"""deploy/ for teams (interface §8), tested on a machine with no container engine and no cluster:

- the kustomize bases rendered by `kubectl kustomize`, every object validated against the
  Kubernetes schemas (kubernetes-validate, strict: an unknown field fails, and so does a kind it
  has no schema for), then checked for what a schema cannot see: selectors, ports, the rules
  ConfigMap mounted as a directory where k8s_ws_rules points, pod security "restricted";
- the rules they ship pass `k8s-ws check`;
- a real mitmdump following a rules file that changes as the kubelet changes a ConfigMap mounted
  as a directory (a new timestamped directory, then the `..data` symlink swapped);
- deploy/Containerfile's install step and command line, in a fresh venv, with a read-only confdir
  made by deploy/make-ca;
- `systemd-analyze verify` on deploy/systemd/k8s-ws.service.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import netns
from fake_rancher import HEALTHY
from helpers import BROWSER_UA, PAGE_ORIGIN, TOKEN, VECTORS, secret_forms, standard_entry
from mitmdump_harness import ROOT, Mitmdump

DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"
UNIT = DEPLOY / "systemd" / "k8s-ws.service"
KUSTOMIZATIONS = [pytest.param(name, id=name) for name in ("base", "headlamp", "sidecar")]
#: The oldest Kubernetes still supported upstream when this was written, and the newest schema known.
KUBERNETES_VERSIONS = ["1.31", kubernetes_validate.latest_version()]

CHROMIUM = VECTORS["chromium-156-headlamp-exec"]
EXEC_QUERY = CHROMIUM["request"].split()[1].partition("?")[2]
EXEC_PROTOCOLS = ["v4.channel.k8s.io", standard_entry(TOKEN)]


# --- the container image definition ------------------------------------------------------------

def containerfile() -> dict:
    """What the tests need of deploy/Containerfile: its instructions, continuation lines joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    parsed: dict[str, list[str]] = {}
    for line in instructions:
        keyword, _, rest = line.partition(" ")
        parsed.setdefault(keyword.upper(), []).append(rest.strip())
    return parsed


def image_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in containerfile()["ARG"])


def image_env() -> dict[str, str]:
    env = {}
    for line in containerfile()["ENV"]:
        env.update(dict(part.split("=", 1) for part in shlex.split(line)))
    return env


def entrypoint() -> list[str]:
    [value] = containerfile()["ENTRYPOINT"]
    return json.loads(value)  # exec form: a JSON array, or the shell would be PID 1


def confdir() -> str:
    [setting] = [arg for arg in entrypoint() if arg.startswith("confdir=")]
    return setting.removeprefix("confdir=")


def test_containerfile_runs_mitmdump_with_the_addon_as_a_numeric_non_root_user():
    instructions = containerfile()
    assert instructions["FROM"] == ["python:3.13-slim"]
    args = image_args()
    [user] = instructions["USER"]
    user = user.replace("${UID}", args["UID"])
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user), user  # numeric: runAsNonRoot can check it
    assert image_env()["PYTHONUNBUFFERED"] == "1"  # log lines as they happen, not per 4 KiB
    command = entrypoint()
    assert command[:3] == ["mitmdump", "-s", "/opt/k8s-ws/addon/k8s_ws.py"]
    assert command[3:] == ["--set", f"confdir={confdir()}"]
    # Every file it copies exists in the repository.
    for copy in instructions["COPY"]:
        *sources, _ = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), source


def test_containerfile_pins_a_mitmproxy_the_project_admits():
    version = image_args()["MITMPROXY_VERSION"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    [requirement] = [Requirement(r) for r in re.findall(r'"(mitmproxy[^"]*)"', pyproject)]
    assert requirement.specifier.contains(version), (version, str(requirement))
    assert version.startswith("12."), "the newest tested line (interface §1)"
    [install] = [run for run in containerfile()["RUN"] if "pip install" in run]
    assert '"mitmproxy==${MITMPROXY_VERSION}" /opt/k8s-ws' in install


# --- the kustomize bases ------------------------------------------------------------------------

@functools.cache
def render(name: str) -> tuple[Path, list[dict]]:
    """(directory, its objects as `kubectl kustomize` renders them)."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("needs kubectl (its built-in kustomize renders the bases)")
    directory = DEPLOY / "kubernetes" / name
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return directory, [o for o in yaml.safe_load_all(result.stdout) if o]


@pytest.fixture(params=KUSTOMIZATIONS)
def rendered(request):
    return render(request.param)


@pytest.fixture
def sidecar():
    return render("sidecar")


def objects(rendered, kind):
    return [o for o in rendered[1] if o["kind"] == kind]


def pod_spec(rendered) -> dict:
    [deployment] = objects(rendered, "Deployment")
    return deployment["spec"]["template"]["spec"]


def k8s_ws_container(rendered) -> dict:
    [container] = [c for c in pod_spec(rendered)["containers"] if c["image"].rsplit(":", 1)[0].endswith("/k8s-ws")]
    return container


def option(container, name) -> str:
    """The value of `--set name=value` in a container's arguments."""
    args = container["args"]
    [value] = [args[i + 1].split("=", 1)[1] for i, a in enumerate(args[:-1]) if a == "--set" and args[i + 1].startswith(f"{name}=")]
    return value


def mount_of(container, pod, path) -> tuple[dict, dict]:
    """The volume mount whose directory holds path, and its volume."""
    [mount] = [m for m in container["volumeMounts"] if os.path.dirname(path) == m["mountPath"]]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return mount, volume


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_kubernetes(rendered, version):
    kinds = [o["kind"] for o in rendered[1]]
    assert "Deployment" in kinds and "ConfigMap" in kinds
    for obj in rendered[1]:
        # Raises on a schema violation (strict: unknown fields too) and on a kind with no schema.
        kubernetes_validate.validate(obj, version, strict=True)


def test_selectors_and_ports_meet(rendered):
    [deployment] = objects(rendered, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    selectors = [s["spec"]["selector"] for s in objects(rendered, "Service")]
    selectors += [p["spec"]["selector"]["matchLabels"] for p in objects(rendered, "PodDisruptionBudget")]
    for selector in selectors:
        assert selector.items() <= labels.items(), selector
    ports = {p["name"]: p["containerPort"] for c in pod_spec(rendered)["containers"] for p in c.get("ports", [])}
    for service in objects(rendered, "Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports or port["targetPort"] in ports.values(), port


def test_k8s_ws_listens_where_its_port_and_probes_say(rendered):
    container = k8s_ws_container(rendered)
    args = container["args"]
    port = int(args[args.index("--listen-port") + 1])
    mode = args[args.index("--mode") + 1]
    assert mode.startswith("reverse:https://") or mode == "transparent", mode
    for declared in container.get("ports", []):
        assert declared["containerPort"] == port
    for probe in ("startupProbe", "livenessProbe"):
        check = container[probe]
        if "tcpSocket" in check:  # from the kubelet: only when mitmdump listens on the pod's address
            assert "--listen-host" not in args and check["tcpSocket"]["port"] in ("proxy", port)
        else:  # inside the container, towards its loopback
            assert f"('127.0.0.1', {port})" in " ".join(check["exec"]["command"])


def test_rules_are_a_configmap_mounted_as_a_directory_where_k8s_ws_rules_points(rendered):
    directory, _ = rendered
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    # A hash suffix would make each rules edit a rollout, cutting every open exec session.
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    pod, container = pod_spec(rendered), k8s_ws_container(rendered)
    for c in pod["containers"] + pod.get("initContainers", []):
        assert all("subPath" not in m and "subPathExpr" not in m for m in c.get("volumeMounts", [])), "subPath pins the file"
    rules_path = option(container, "k8s_ws_rules")
    mount, volume = mount_of(container, pod, rules_path)
    [configmap] = [c for c in objects(rendered, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]]
    assert os.path.basename(rules_path) in configmap["data"]
    assert mount.get("readOnly") is True


def test_the_cas_come_from_secrets(rendered):
    pod, container = pod_spec(rendered), k8s_ws_container(rendered)
    _, rancher_ca = mount_of(container, pod, option(container, "ssl_verify_upstream_trusted_ca"))
    assert rancher_ca["secret"]["secretName"]
    # The image's confdir: mitmproxy's CA (mitmproxy-ca.pem, mitmproxy-dhparam.pem), read-only.
    mount, mitmproxy_ca = mount_of(container, pod, confdir() + "/mitmproxy-ca.pem")
    assert mitmproxy_ca["secret"]["secretName"] and mount["readOnly"] is True


def test_pod_security_is_restricted(rendered):
    """Pod security "restricted" for every container; an init container may only be the redirect,
    which needs root and NET_ADMIN for its one step, and nothing else."""
    pod = pod_spec(rendered)
    assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in v for v in pod["volumes"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "privileged" not in context, container["name"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], container["name"]
    for container in pod["containers"]:
        context = container["securityContext"]
        assert "add" not in context["capabilities"], container["name"]
        assert context.get("runAsUser", pod["securityContext"].get("runAsUser")) not in (None, 0), container["name"]
    for container in pod.get("initContainers", []):
        assert container["command"][0] == "k8s-ws-redirect", container["name"]
        assert container["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    k8s_ws = k8s_ws_container(rendered)
    assert k8s_ws["securityContext"]["readOnlyRootFilesystem"] is True
    assert "livenessProbe" in k8s_ws and "startupProbe" in k8s_ws


def redirect_container(rendered) -> dict:
    [container] = [c for c in pod_spec(rendered)["initContainers"] if c["command"][0] == "k8s-ws-redirect"]
    return container


def test_the_sidecar_redirect_spares_mitmdump_and_lands_on_its_port(sidecar):
    redirect = redirect_container(sidecar)
    env = {e["name"]: e["value"] for e in redirect["env"]}
    container = k8s_ws_container(sidecar)
    args = container["args"]
    assert redirect["command"] == ["k8s-ws-redirect", "up", "same-host"]
    assert args[args.index("--mode") + 1] == "transparent"
    assert env["K8S_WS_UID"] == str(container["securityContext"]["runAsUser"])  # else mitmdump loops into itself
    assert env["K8S_WS_PORT"] == args[args.index("--listen-port") + 1]
    assert args[args.index("--listen-host") + 1] == "127.0.0.1"  # where an OUTPUT redirect lands
    assert "COPY deploy/transparent/redirect /usr/local/bin/k8s-ws-redirect" in CONTAINERFILE.read_text()


@pytest.mark.e2e
def test_the_sidecar_redirect_installs_as_configured(sidecar):
    """The init container's command and environment, run by the script in a namespace."""
    redirect = redirect_container(sidecar)
    reason = netns.skip_reason() or netns.missing_tool("nft", package="nftables")
    if reason:
        pytest.skip(reason)
    lab = netns.Lab("kws-deploy")
    try:
        pod = lab.host("pod")
        env = {e["name"]: e["value"] for e in redirect["env"]}
        up = lab.exec(pod, netns.REDIRECT, *redirect["command"][1:], env=env)
        assert up.stdout.startswith("redirect: same-host up with nft"), up.stdout
        rules = lab.exec(pod, "nft", "list", "table", "inet", "k8s_ws_same_host").stdout
        assert f"meta skuid != {env['K8S_WS_UID']}" in rules and f"redirect to :{env['K8S_WS_PORT']}" in rules
    finally:
        lab.close()


def test_the_shipped_rules_pass_k8s_ws_check(rendered, tmp_path):
    for configmap in objects(rendered, "ConfigMap"):
        for name, text in configmap["data"].items():
            path = tmp_path / name
            path.write_text(text)
            result = subprocess.run([sys.executable, "-m", "kubews.cli", "check", str(path)], capture_output=True,
                                    text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "addon")})
            assert (result.returncode, result.stderr) == (0, ""), result.stderr
            assert re.fullmatch(r"ok: [1-9]\d* rules\n", result.stdout)


# --- a ConfigMap's rules, changed the kubelet's way, under a real mitmdump -----------------------

class KubeletVolume:
    """A directory laid out as the kubelet lays out a ConfigMap volume (pkg/volume/util/
    atomic_writer.go): the data in a timestamped directory, `..data` a symlink to it, and each key
    a symlink through `..data`. An update writes a new timestamped directory, swaps `..data` by
    renaming a new symlink over it, and removes the old directory."""

    def __init__(self, directory: Path, files: dict[str, str]):
        self.directory = directory
        directory.mkdir(parents=True)
        self.generation = 0
        self._write(files)
        for name in files:
            (directory / name).symlink_to(Path("..data") / name)

    def update(self, files: dict[str, str]) -> None:
        old = os.readlink(self.directory / "..data")
        self._write(files)
        shutil.rmtree(self.directory / old)

    def _write(self, files) -> None:
        self.generation += 1
        stamp = f"..2025_01_01_00_00_00.{self.generation:09d}"
        (self.directory / stamp).mkdir()
        for name, text in files.items():
            (self.directory / stamp / name).write_text(text)
        (self.directory / "..data_tmp").symlink_to(stamp)
        os.rename(self.directory / "..data_tmp", self.directory / "..data")


async def _open(url, protocols):
    try:
        async with connect(url, subprotocols=protocols, user_agent_header=BROWSER_UA, origin=PAGE_ORIGIN,
                           open_timeout=10, proxy=None) as ws:
            await asyncio.wait_for(ws.recv(), 10)
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def open_ws(url, protocols=EXEC_PROTOCOLS) -> int:
    return asyncio.run(_open(url, protocols))


def base_rules() -> str:
    return (DEPLOY / "kubernetes" / "base" / "rules.yaml").read_text()


@pytest.mark.e2e
def test_rules_in_a_configmap_volume_follow_each_kubelet_update(tmp_path, rancher, pki):
    working = base_rules()
    assert "origin: match-host" in working
    # The same size, and Rancher refuses it: a browser Origin that is not its Host (403).
    refused = working.replace("origin: match-host", "origin: keep      ")
    broken = working.replace("origin: match-host", "origin: sometimes")
    volume = KubeletVolume(tmp_path / "rules", {"rules.yaml": refused})
    rules = volume.directory / "rules.yaml"
    with Mitmdump(tmp_path / "mitmdump", mode=f"reverse:{rancher.url}", rules=rules, upstream_ca=pki.ca_cert) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/k8s/clusters/{HEALTHY}/api/v1/namespaces/default/pods/p/exec?{EXEC_QUERY}"
        assert open_ws(url) == 403

        def update(files, expect):
            mark = len(proxy.output())
            volume.update(files)
            changed = time.monotonic()
            proxy.wait_for_output(expect, timeout=2.0, start=mark)
            assert time.monotonic() - changed <= 2.0

        update({"rules.yaml": working}, "reloaded 1 rules")  # same size, new directory and symlink
        assert open_ws(url) == 101

        update({"rules.yaml": broken}, "keeping the last good rules")
        assert f"{rules}:" in proxy.output()
        assert open_ws(url) == 101 and proxy.process.poll() is None

        update({"rules.yaml": refused}, "reloaded 1 rules")
        assert open_ws(url) == 403

        # ext4 reuses inodes: a new file may have the old one's inode and size. Only its
        # modification time (and content) tell it apart: the same inode rewritten shows that.
        target = rules.resolve()
        inode = target.stat().st_ino
        mark = len(proxy.output())
        with open(target, "r+") as f:
            f.write(working)
        assert target.stat().st_ino == inode and target.stat().st_size == len(refused)
        proxy.wait_for_output("reloaded 1 rules", timeout=2.0, start=mark)
        assert open_ws(url) == 101
    assert not [form for form in secret_forms(TOKEN) if form in proxy.output()]


# --- the image's install step and command line, without a container engine ----------------------

def python_for_the_image() -> str | None:
    """A Python 3.12+ (mitmproxy 12 needs it), ideally the image's 3.13."""
    candidates = [shutil.which(name) for name in ("python3.13", "python3.12")]
    candidates += sorted(map(str, Path.home().glob(".pyenv/versions/3.1[23]*/bin/python3")), reverse=True)
    if sys.version_info >= (3, 12):
        candidates.insert(0, sys.executable)
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info >= (3, 12))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_the_image_install_step_and_command_line_work_with_a_read_only_confdir(tmp_path, rancher, pki):
    python = python_for_the_image()
    if python is None:
        pytest.skip("needs Python 3.12 or newer (python3.13 / python3.12 on PATH): the image's mitmproxy 12 requires it")
    instructions, args = containerfile(), image_args()
    # COPY: the same files, to the same places, under a root of our own.
    root = tmp_path / "image"
    for copy in instructions["COPY"]:
        *sources, destination = copy.split()
        target = root / destination.lstrip("/")
        for source in sources:
            path = ROOT / source
            where = target / path.name if destination.endswith("/") else target
            where.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, where, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy(path, where)
    # RUN pip install ...: in a fresh venv (no system site packages), from PyPI.
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", venv], check=True)
    [install] = [run for run in instructions["RUN"] if "pip install" in run]
    requirement = re.search(r'"(mitmproxy==[^"]+)"', install).group(1).replace("${MITMPROXY_VERSION}", args["MITMPROXY_VERSION"])
    pip = subprocess.run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", requirement, root / "opt" / "k8s-ws"],
                         capture_output=True, text=True, timeout=540)
    if pip.returncode and re.search(r"No matching distribution|Could not find a version|Failed to establish", pip.stderr):
        pytest.skip(f"pip could not reach the package index: {pip.stderr.strip()[-300:]}")
    assert pip.returncode == 0, pip.stderr[-2000:]
    installed = subprocess.run([venv / "bin" / "python", "-c", "from mitmproxy.version import VERSION; print(VERSION)"],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert installed == args["MITMPROXY_VERSION"]

    # The confdir, made by deploy/make-ca, then read-only (a Secret volume is).
    ca_dir = tmp_path / "confdir"
    made = subprocess.run([DEPLOY / "make-ca", ca_dir], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(venv / "bin" / "python")})
    assert made.returncode == 0, made.stderr
    assert {"mitmproxy-ca.pem", "mitmproxy-dhparam.pem", "mitmproxy-ca-cert.pem"} <= {p.name for p in ca_dir.iterdir()}
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    for path in (ca_dir, *ca_dir.iterdir()):
        path.chmod(0o555 if path.is_dir() else 0o444)

    # ENTRYPOINT + the arguments a Deployment gives, with the image's paths under our root.
    port = free_port()
    command = [str(venv / "bin" / entrypoint()[0])] + [a.replace("/opt/", f"{root}/opt/") for a in entrypoint()[1:]]
    command = [a if not a.startswith("confdir=") else f"confdir={ca_dir}" for a in command]
    command += ["--mode", f"reverse:{rancher.url}", "--listen-host", "127.0.0.1", "--listen-port", str(port),
                "--set", f"ssl_verify_upstream_trusted_ca={pki.ca_cert}"]
    env = {**os.environ, **image_env(), "HOME": str(tmp_path / "home")}
    if os.geteuid() == 0:
        # As the image's user; root would write into a read-only directory all the same. The
        # capability only lets it read an interpreter installed under /root (pyenv), nothing more.
        uid = args["UID"]
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                   "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"] + command
    log = tmp_path / "mitmdump.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"mitmdump exited {process.returncode}:\n{log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"mitmdump not listening after 30 s:\n{log.read_text()}"
                time.sleep(0.2)
        url = f"ws://127.0.0.1:{port}/k8s/clusters/{HEALTHY}/api/v1/namespaces/default/pods/p/exec?{EXEC_QUERY}"
        assert open_ws(url) == 101, log.read_text()
        wss = f"wss://127.0.0.1:{port}/k8s/clusters/{HEALTHY}/api/v1/namespaces/default/pods/p/exec?{EXEC_QUERY}"
        assert open_wss(wss, ca_dir / "mitmproxy-ca-cert.pem") == 101, log.read_text()  # its certificate, from the CA
    finally:
        process.terminate()
        process.wait(10)
    output = log.read_text()
    assert "k8s_ws: rule 'rancher'" in output and "Traceback" not in output, output
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before
    assert not [form for form in secret_forms(TOKEN) if form in output]


def open_wss(url, cafile) -> int:
    context = ssl.create_default_context(cafile=str(cafile))

    async def run():
        try:
            async with connect(url, subprotocols=EXEC_PROTOCOLS, user_agent_header=BROWSER_UA, origin=PAGE_ORIGIN,
                               ssl=context, open_timeout=10, proxy=None) as ws:
                await asyncio.wait_for(ws.recv(), 10)
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    return asyncio.run(run())


# --- the systemd unit ---------------------------------------------------------------------------

def unit() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n", " ", UNIT.read_text()).splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_has_no_reload_and_is_sandboxed():
    settings = unit()
    assert "ExecReload" not in settings  # SIGHUP ends mitmdump; the rules need no signal
    assert settings["KillSignal"] == ["SIGINT"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "PrivateDevices": "yes", "DynamicUser": "yes", "CapabilityBoundingSet": ""}.items():
        assert settings[key] == [value], key
    [start] = settings["ExecStart"]
    assert start.split()[:3] == ["/opt/k8s-ws/.venv/bin/mitmdump", "-s", "/opt/k8s-ws/addon/k8s_ws.py"]
    assert "--set confdir=/var/lib/k8s-ws" in start and settings["StateDirectory"] == ["k8s-ws"]


@pytest.mark.e2e
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("needs systemd-analyze (apt-get install systemd)")
    mitmdump = Path(sys.executable).parent / "mitmdump"
    # The unit as installed by its own instructions: a clone in /opt/k8s-ws with its venv. Here,
    # this clone and this interpreter's mitmdump (verify checks that the programs exist).
    text = UNIT.read_text().replace("/opt/k8s-ws/.venv/bin/mitmdump", str(mitmdump)).replace("/opt/k8s-ws/", f"{ROOT}/")
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr
