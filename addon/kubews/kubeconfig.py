"""Kubeconfigs for `k8s-ws kubeconfig` and `k8s-ws diagnose --context`.

Reads and merges kubeconfigs the way kubectl does for a `$KUBECONFIG` list (client-go's
clientcmd loader), picks the clusters to send through k8s-ws, and rewrites them:

- regular mode: the cluster gets `proxy-url`, and its `certificate-authority-data` becomes
  mitmproxy's CA plus what the cluster trusted before (its own CA, or the public roots when it had
  none). client-go trusts *only* a cluster's CA when one is set (facts §5), so mitmproxy's CA must
  be in it; and both `certificate-authority` and `-data` set is an error that Headlamp turns into
  dropped credentials, so the file form goes;
- reverse mode: `server` points at the proxy, path kept, and the CA is mitmproxy's alone.

Everything else (names, users, tokens, other clusters) is left as it was, except that relative
file references are made absolute against the file that held them, as kubectl's loader does, so
that the new file works wherever it is written.

All functions are pure over plain values except the few marked "I/O" at the end. No mitmproxy
import. No message ever holds a token: errors name the file, the line and the context.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import secrets
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import yaml

#: The list keys of a kubeconfig, and the key that holds each entry's body.
KINDS = {"clusters": "cluster", "users": "user", "contexts": "context"}
CURRENT_CONTEXT = "current-context"
CA_FILE, CA_DATA = "certificate-authority", "certificate-authority-data"
PROXY_URL, INSECURE = "proxy-url", "insecure-skip-tls-verify"
DEFAULT_PROXY = "http://127.0.0.1:8080"
#: A Rancher cluster's API server: Rancher proxies it under either prefix (facts §4).
_RANCHER_PATH = re.compile(r"/k8s/(?:clusters|proxy)/[^/]+/?")
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.S)
_LOOPBACK_NAMES = {"localhost"}


class KubeconfigError(ValueError):
    """A kubeconfig that cannot be read or routed. The message names the file and the context,
    never a token."""


# --- reading and merging --------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """Where an entry was read: an absolute file name and a line (0 when unknown)."""

    file: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class Named:
    """One entry of `clusters`, `users` or `contexts`, kept whole: {"name": ..., "cluster": {...}, ...}."""

    kind: str  # "cluster", "user" or "context"
    name: str
    item: dict = field(repr=False)  # as read (the user's holds its token: never shown)
    where: Where

    @property
    def body(self) -> dict:
        return self.item.get(self.kind) or {}

    def with_body(self, body: dict) -> Named:
        return replace(self, item={**self.item, self.kind: body})


@dataclass(frozen=True)
class KubeConfig:
    """A kubeconfig, or the merge of several as kubectl sees them."""

    files: tuple[str, ...]
    clusters: tuple[Named, ...] = ()
    users: tuple[Named, ...] = ()
    contexts: tuple[Named, ...] = ()
    current_context: str | None = None
    #: The other top-level keys (apiVersion, kind, preferences, extensions, ...), and the order
    #: of all top-level keys as first seen, so that a rewritten single file reads like its input.
    rest: dict = field(default_factory=dict)
    order: tuple[str, ...] = ()

    def entries(self, plural: str) -> tuple[Named, ...]:
        return getattr(self, plural)

    def find(self, plural: str, name: str) -> Named | None:
        return next((n for n in self.entries(plural) if n.name == name), None)

    @property
    def where(self) -> str:
        return ", ".join(self.files) or "no kubeconfig"


def parse_kubeconfig(text: str, file: str) -> KubeConfig:
    """One kubeconfig file's text (YAML or JSON). `file` is its absolute name: relative file
    references in it are resolved against its directory."""
    data, item_lines = _load_yaml(text, file)
    if data is None:
        return KubeConfig(files=(file,))  # kubectl takes an empty file for an empty config
    if not isinstance(data, dict):
        raise KubeconfigError(f"{file}:1: not a kubeconfig: the top level is not a mapping")
    lists: dict[str, tuple[Named, ...]] = {}
    for plural, kind in KINDS.items():
        lists[plural] = _named_entries(data.get(plural), plural, kind, file, item_lines.get(plural, []))
    current = data.get(CURRENT_CONTEXT)
    if current is not None and not isinstance(current, str):
        raise KubeconfigError(f"{file}: {CURRENT_CONTEXT} must be a string")
    return KubeConfig(
        files=(file,),
        **lists,
        current_context=current or None,
        rest={k: v for k, v in data.items() if k not in KINDS and k != CURRENT_CONTEXT},
        order=tuple(str(k) for k in data),
    )


def _load_yaml(text: str, file: str) -> tuple[object, dict[str, list[int]]]:
    """The document, and the line of each item of its top-level lists. YAML errors give the
    position and the problem only: the loader's own message quotes the line, which may hold a token."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise KubeconfigError(f"{where}: not YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise KubeconfigError(f"{file}: not YAML: {type(e).__name__}") from None
    finally:
        loader.dispose()
    lines: dict[str, list[int]] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and isinstance(value, yaml.SequenceNode):
                lines[key.value] = [item.start_mark.line + 1 for item in value.value]
    return data, lines


def _named_entries(value: object, plural: str, kind: str, file: str, lines: list[int]) -> tuple[Named, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise KubeconfigError(f"{file}: {plural} must be a list")
    entries: dict[str, Named] = {}
    for index, item in enumerate(value):
        where = Where(file, lines[index] if index < len(lines) else 0)
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise KubeconfigError(f"{where}: {plural}: an entry without a name")
        body = item.get(kind)
        if body is not None and not isinstance(body, dict):
            raise KubeconfigError(f"{where}: {kind} '{name}': '{kind}' must be a mapping")
        if name in entries:  # client-go refuses a file with the same name twice in a list
            raise KubeconfigError(f"{where}: {kind} '{name}': duplicate name (also at line {entries[name].where.line})")
        entries[name] = _absolute_references(Named(kind, name, item, where))
    return tuple(entries.values())


def _absolute_references(entry: Named) -> Named:
    """Relative file references made absolute against the entry's file (client-go's
    ResolveLocalPaths): a cluster's CA; a user's client certificate, key, token file, and exec
    command when it is a path rather than a name looked up in PATH."""
    base = os.path.dirname(entry.where.file)
    body = dict(entry.body)
    keys = {"cluster": (CA_FILE,), "user": ("client-certificate", "client-key", "tokenFile")}.get(entry.kind, ())
    for key in keys:
        if isinstance(body.get(key), str) and body[key] and not os.path.isabs(body[key]):
            body[key] = os.path.join(base, body[key])
    exec_ = body.get("exec")
    if entry.kind == "user" and isinstance(exec_, dict):
        command = exec_.get("command")
        if isinstance(command, str) and "/" in command and not os.path.isabs(command):
            body["exec"] = {**exec_, "command": os.path.join(base, command)}
    return entry.with_body(body) if body != entry.body else entry


def merge(configs: Iterable[KubeConfig]) -> KubeConfig:
    """kubectl's merge of a $KUBECONFIG list: the first file to define a name keeps it, the first
    to set current-context wins, and so does the first to set any other top-level key."""
    merged = KubeConfig(files=())
    for config in configs:
        lists = {}
        for plural in KINDS:
            known = {n.name for n in merged.entries(plural)}
            lists[plural] = merged.entries(plural) + tuple(n for n in config.entries(plural) if n.name not in known)
        merged = KubeConfig(
            files=merged.files + config.files,
            **lists,
            current_context=merged.current_context or config.current_context,
            rest={**config.rest, **merged.rest},
            order=merged.order + tuple(k for k in config.order if k not in merged.order),
        )
    return merged


def kubeconfig_paths(explicit: str | None, environ: Mapping[str, str], home: str) -> tuple[list[str], bool]:
    """The files to read, and whether each must exist: the one given, else the $KUBECONFIG list
    (empty names dropped, duplicates once, missing files skipped as kubectl does), else ~/.kube/config."""
    if explicit:
        return [explicit], True
    listed = environ.get("KUBECONFIG", "")
    if listed:
        return list(dict.fromkeys(p for p in listed.split(os.pathsep) if p)), False
    return [os.path.join(home, ".kube", "config")], True


def document(config: KubeConfig) -> dict:
    """The merged kubeconfig as one document, top-level keys in the order first seen."""
    values: dict = {**config.rest}
    for plural in KINDS:
        if plural in config.order or config.entries(plural):
            values[plural] = [n.item for n in config.entries(plural)]
    if config.current_context is not None:
        values[CURRENT_CONTEXT] = config.current_context
    first = [k for k in config.order if k in values]
    default = ["apiVersion", "kind", "preferences", "clusters", "users", "contexts", CURRENT_CONTEXT]
    keys = first + [k for k in default if k in values and k not in first] + [k for k in values if k not in first and k not in default]
    return {k: values[k] for k in keys}


def dump(config: KubeConfig) -> str:
    return yaml.safe_dump(document(config), sort_keys=False, default_flow_style=False, allow_unicode=True)


# --- which clusters go through k8s-ws -------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A cluster's https server URL, split."""

    host: str
    port: int
    path: str  # as written, "" for none: "/k8s/clusters/c-m-abc", or with a trailing "/"

    @property
    def origin(self) -> str:
        return f"https://{_host_port(self.host, self.port, 443)}"


def https_server(url: object) -> Server | None:
    """The server URL of an https cluster, or None."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        return None
    if parts.scheme.lower() != "https" or not parts.hostname or parts.query or parts.fragment or parts.username:
        return None
    return Server(parts.hostname, port, "" if parts.path == "/" else parts.path)


def rancher_server(url: object) -> Server | None:
    """The server if it is a Rancher cluster's: https://HOST[:PORT]/k8s/clusters/ID or /k8s/proxy/ID."""
    server = https_server(url)
    return server if server and _RANCHER_PATH.fullmatch(server.path) else None


@dataclass(frozen=True)
class Route:
    """A cluster that goes through k8s-ws, and the contexts that use it."""

    cluster: Named
    contexts: tuple[str, ...]
    server: Server

    @property
    def label(self) -> str:
        """How messages name it: the cluster, its contexts, and where it was read."""
        used = f" (context{'s' if len(self.contexts) > 1 else ''} {', '.join(self.contexts)})" if self.contexts else ""
        return f"cluster '{self.cluster.name}'{used} in {self.cluster.where}"


def contexts_of(config: KubeConfig, cluster: str) -> tuple[str, ...]:
    return tuple(c.name for c in config.contexts if c.body.get("cluster") == cluster)


def select_routes(config: KubeConfig, context_names: Iterable[str] = ()) -> tuple[Route, ...]:
    """The clusters of the named contexts (any https server), or else every Rancher cluster.
    Empty when there is nothing to route."""
    names = list(dict.fromkeys(context_names))
    if not names:
        return tuple(
            Route(c, contexts_of(config, c.name), server) for c in config.clusters if (server := rancher_server(c.body.get("server")))
        )
    routes: dict[str, Route] = {}
    for name in names:
        cluster = _context_cluster(config, name)
        server = https_server(cluster.body.get("server"))
        if server is None:
            raise KubeconfigError(
                f"{cluster.where}: context '{name}': cluster '{cluster.name}' has no https:// server "
                "(k8s-ws kubeconfig routes https servers only)"
            )
        routes.setdefault(cluster.name, Route(cluster, contexts_of(config, cluster.name), server))
    return tuple(routes.values())


def _context_cluster(config: KubeConfig, name: str) -> Named:
    context = config.find("contexts", name)
    if context is None:
        known = ", ".join(c.name for c in config.contexts) or "none"
        raise KubeconfigError(f"{config.where}: no context '{name}' (contexts: {known})")
    cluster_name = context.body.get("cluster")
    cluster = config.find("clusters", cluster_name) if isinstance(cluster_name, str) else None
    if cluster is None:
        raise KubeconfigError(f"{context.where}: context '{name}': its cluster '{cluster_name}' is defined nowhere")
    return cluster


# --- trust ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterTrust:
    """What a cluster's clients verified its server with, before k8s-ws."""

    certificates: tuple[str, ...]  # PEM certificates of its own CA; empty: the public roots, or none
    source: str  # in words, for the summary
    insecure: bool = False  # insecure-skip-tls-verify: true; nothing verified


def pem_certificates(text: str) -> tuple[str, ...]:
    """The PEM certificates in a text, in order, each ending in a newline; keys and the rest left out."""
    return tuple(m.group(0).replace("\r\n", "\n") + "\n" for m in _PEM_CERTIFICATE.finditer(text))


def cluster_trust(route: Route, read_text: Callable[[str], str]) -> ClusterTrust:
    """The cluster's own trust: insecure-skip-tls-verify, certificate-authority-data (which client-go
    prefers when both are set), the certificate-authority file, or none (the public roots)."""
    body = route.cluster.body
    if body.get(INSECURE) is True:
        return ClusterTrust((), "insecure-skip-tls-verify (nothing verified)", insecure=True)
    data = body.get(CA_DATA)
    if data:
        try:
            text = _base64_text(data)
        except (binascii.Error, ValueError):
            raise KubeconfigError(f"{route.label}: {CA_DATA} is not base64 of a PEM file") from None
        certificates = pem_certificates(text)
        if not certificates:
            raise KubeconfigError(f"{route.label}: {CA_DATA} holds no PEM certificate")
        return ClusterTrust(certificates, CA_DATA)
    file = body.get(CA_FILE)
    if file:
        try:
            certificates = pem_certificates(read_text(str(file)))
        except (OSError, UnicodeDecodeError) as e:
            raise KubeconfigError(f"{route.label}: cannot read {CA_FILE} {file}: {_reason(e)}") from None
        if not certificates:
            raise KubeconfigError(f"{route.label}: {CA_FILE} {file} holds no PEM certificate")
        return ClusterTrust(certificates, f"{CA_FILE} {file}")
    return ClusterTrust((), "the public roots (it had no CA)")


def _base64_text(data: object) -> str:
    """certificate-authority-data as text; line breaks allowed, as Go's base64 decoder skips them."""
    return base64.b64decode("".join(str(data).split()), validate=True).decode("utf-8")


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or type(error).__name__


# --- rewriting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regular:
    """Clients reach the clusters through the proxy at proxy_url (CONNECT)."""

    proxy_url: str


@dataclass(frozen=True)
class Reverse:
    """Clients connect to the proxy at url as if it were the server; one upstream per listener."""

    url: str


Mode = Regular | Reverse


def proxy_url(text: str) -> str:
    """A --proxy value: http(s)://HOST[:PORT], nothing else; ValueError saying why not."""
    parts = _listener_url(text, "--proxy", ("http", "https"))
    return f"{parts.scheme}://{parts.netloc}"


def reverse_url(text: str) -> str:
    """A --reverse value: https://HOST[:PORT]. Not http: client-go sends no credentials to an
    http:// server, and mitmproxy's reverse mode answers TLS with a certificate from its CA."""
    if urlsplit(text).scheme.lower() == "http":
        raise ValueError(
            f"--reverse {text}: use https://: kubectl and Headlamp send no token to an http:// server "
            "(mitmproxy answers TLS in reverse mode, with a certificate from its CA)"
        )
    parts = _listener_url(text, "--reverse", ("https",))
    return f"https://{parts.netloc}"


def _listener_url(text: str, option: str, schemes: tuple[str, ...]):
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"{option} {text}: {e}") from None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise ValueError(f"{option} {text}: expected {' or '.join(s + '://HOST[:PORT]' for s in schemes)}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{option} {text}: no path, query or fragment (the cluster's path is kept)")
    if parts.username or parts.password:
        raise ValueError(f"{option}: the URL must not hold credentials")
    return parts._replace(scheme=parts.scheme.lower())


def check_one_upstream(routes: Iterable[Route]) -> str:
    """Reverse mode: the one upstream of all routes; mitmproxy's reverse mode has one upstream per
    listener, so clusters on different hosts cannot share it."""
    origins: dict[str, list[str]] = {}
    for route in routes:
        origins.setdefault(route.server.origin.lower(), []).append(f"'{route.cluster.name}'")
    if len(origins) != 1:
        listing = "; ".join(f"{origin}: cluster{'s' if len(names) > 1 else ''} {', '.join(names)}" for origin, names in origins.items())
        raise KubeconfigError(
            f"reverse mode has one upstream per mitmdump listener, and these clusters are on {len(origins)} "
            f"({listing}): pick the clusters of one with --context, and run one mitmdump (and one "
            "k8s-ws kubeconfig) per host, or use regular mode (--proxy)"
        )
    return next(iter(origins))


def rewrite_cluster(route: Route, trust: ClusterTrust, mode: Mode, mitmproxy_ca: tuple[str, ...], public_roots: tuple[str, ...]) -> Named:
    """The cluster entry as k8s-ws needs it.

    Regular mode keeps what the cluster trusted beside mitmproxy's CA: a client may still dial
    the server itself (Headlamp's watch multiplexer ignores proxy-url, facts §5), and must then
    verify the real server. Reverse mode points every dial at the proxy, so mitmproxy's CA is all
    it needs. A cluster that skipped verification keeps skipping it and gets no CA (client-go
    refuses both); k8s-ws never adds insecure-skip-tls-verify."""
    body = dict(route.cluster.body)
    if PROXY_URL in body:
        raise KubeconfigError(
            f"{route.label}: it already goes through proxy-url (not shown: it may hold credentials); "
            "k8s-ws kubeconfig does not chain proxies: run mitmdump with --mode upstream:<that proxy> and edit the file by hand"
        )
    if isinstance(mode, Regular):
        body[PROXY_URL] = mode.proxy_url
        trusted = mitmproxy_ca + (trust.certificates or public_roots)
    else:
        body["server"] = mode.url + route.server.path
        trusted = mitmproxy_ca
    if not trust.insecure:
        body.pop(CA_FILE, None)
        body[CA_DATA] = base64.b64encode("".join(trusted).encode()).decode("ascii")
    return route.cluster.with_body(body)


def rewrite(config: KubeConfig, clusters: Iterable[Named]) -> KubeConfig:
    """The config with these cluster entries in place of those of the same name; nothing else changes."""
    by_name = {c.name: c for c in clusters}
    return replace(config, clusters=tuple(by_name.get(c.name, c) for c in config.clusters))


def upstream_bundle(trusts: Iterable[ClusterTrust], public_roots: tuple[str, ...]) -> tuple[str, ...]:
    """The CAs mitmproxy must verify the clusters with (ssl_verify_upstream_trusted_ca replaces its
    default roots, so the public roots go in too when a cluster relied on them)."""
    trusts = list(trusts)
    own = [c for t in trusts for c in t.certificates]
    if any(not t.certificates and not t.insecure for t in trusts):
        own += public_roots
    return tuple(dict.fromkeys(own))


def default_upstream_ca_path(out: str) -> str:
    """Beside OUT: k8s-ws.yaml -> k8s-ws-upstream-ca.pem."""
    path = Path(out)
    return str(path.with_name(f"{path.stem or path.name}-upstream-ca.pem"))


def mitmdump_command(
    mode: Mode,
    upstream_origin: str | None,
    addon: str,
    upstream_ca: str | None,
    confdir: str | None,
    insecure_clusters: bool,
) -> list[str]:
    """The mitmdump command line that serves the rewritten kubeconfig."""
    url = urlsplit(mode.proxy_url if isinstance(mode, Regular) else mode.url)
    command = ["mitmdump", "-s", addon]
    if isinstance(mode, Reverse):
        command += ["--mode", f"reverse:{upstream_origin}"]
    if _is_loopback(url.hostname or ""):
        command += ["--listen-host", url.hostname]
    command += ["--listen-port", str(url.port or {"http": 80, "https": 443}[url.scheme])]
    if confdir:
        command += ["--set", f"confdir={confdir}"]
    if upstream_ca:
        command += ["--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]
    if insecure_clusters:
        command += ["--set", "ssl_insecure=true"]
    return command


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(host: str, port: int, default: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == default else f"{name}:{port}"


def shell_line(command: list[str]) -> str:
    return shlex.join(command)


# --- what was done, in words ----------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """What `k8s-ws kubeconfig` did, for its summary."""

    inputs: tuple[str, ...]
    output: str
    mode: Mode
    routes: tuple[Route, ...]
    trusts: tuple[ClusterTrust, ...]
    rewritten: tuple[Named, ...]  # the routes' clusters as written
    untouched: tuple[str, ...]  # the other clusters' names
    upstream_ca: str | None  # the file written, None when there was no CA to write
    upstream_certificates: int
    command: tuple[str, ...]


def summary(done: Written) -> str:
    """The summary printed on success: which clusters, how, and the mitmdump line to run. Names,
    URLs and files only: no token."""
    lines = [f"read: {', '.join(done.inputs)}", f"wrote: {done.output} (mode 0600: it holds the input's credentials)"]
    if isinstance(done.mode, Regular):
        lines.append(f"regular mode: proxy-url {done.mode.proxy_url}")
    else:
        lines.append(f"reverse mode: server {done.mode.url} with the cluster's path")
    for route, trust, cluster in zip(done.routes, done.trusts, done.rewritten, strict=True):
        if trust.insecure:
            trusts = "no CA (insecure-skip-tls-verify kept, as the input had it)"
        elif isinstance(done.mode, Regular):
            trusts = f"mitmproxy's CA and {trust.source}"
        else:
            trusts = "mitmproxy's CA"
        server = route.cluster.body.get("server")
        if isinstance(done.mode, Reverse):
            server = f"{server} -> {cluster.body.get('server')}"
        lines.append(f"  {route.label}: {server}; trusts {trusts}")
    if done.untouched:
        lines.append(f"left as they were: {', '.join(repr(n) for n in done.untouched)}")
    if done.upstream_ca:
        count = done.upstream_certificates
        lines.append(f"wrote: {done.upstream_ca} ({count} CA certificate{'s' if count != 1 else ''} mitmproxy verifies the clusters with)")
    else:
        lines.append("no upstream CA to write: the clusters skip verification")
    lines += ["run the proxy:", f"  {shell_line(list(done.command))}"]
    lines.append(f"then: KUBECONFIG={shlex.quote(done.output)} kubectl, headlamp, ...")
    return "\n".join(lines)


# --- diagnose --context ---------------------------------------------------------------------


@dataclass(frozen=True)
class ContextAccess:
    """What `diagnose --context` takes from a context: the server, and how the context's user
    authenticates to it and trusts it."""

    context: str
    where: Where
    server: str
    namespace: str
    user: str | None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None  # absolute
    ca_data: str | None = None  # PEM text
    ca_file: str | None = None  # absolute
    insecure: bool = False

    @property
    def trust(self) -> str:
        if self.insecure:
            return "insecure-skip-tls-verify (not verified)"
        if self.ca_data:
            return CA_DATA
        return f"{CA_FILE} {self.ca_file}" if self.ca_file else "the system's roots"

    @property
    def credential(self) -> str:
        if self.token_file:  # client-go prefers it to token
            return f"user '{self.user}' tokenFile {self.token_file}"
        if self.token is not None:
            return f"user '{self.user}' token"
        return f"none (user '{self.user}' has neither token nor tokenFile)" if self.user else "none (the context names no user)"


def context_access(config: KubeConfig, name: str | None) -> ContextAccess:
    """The context's server, token and CA; name None: the current context."""
    name = name or config.current_context
    if not name:
        raise KubeconfigError(f"{config.where}: no current-context: name one with --context")
    context = config.find("contexts", name)
    cluster = _context_cluster(config, name)
    server = cluster.body.get("server")
    if not isinstance(server, str) or not server:
        raise KubeconfigError(f"{cluster.where}: context '{name}': cluster '{cluster.name}' has no server")
    user_name = context.body.get("user")
    user = config.find("users", user_name) if isinstance(user_name, str) and user_name else None
    if isinstance(user_name, str) and user_name and user is None:
        raise KubeconfigError(f"{context.where}: context '{name}': its user '{user_name}' is defined nowhere")
    credentials = user.body if user else {}
    ca_data = None
    if cluster.body.get(CA_DATA):
        try:
            ca_data = _base64_text(cluster.body[CA_DATA])
        except (binascii.Error, ValueError):
            raise KubeconfigError(f"{cluster.where}: context '{name}': {CA_DATA} is not base64 of a PEM file") from None
    return ContextAccess(
        context=name,
        where=context.where,
        server=server,
        namespace=str(context.body.get("namespace") or "default"),
        user=user.name if user else None,
        token=str(credentials["token"]) if credentials.get("token") else None,
        token_file=str(credentials["tokenFile"]) if credentials.get("tokenFile") else None,
        ca_data=ca_data,
        ca_file=str(cluster.body[CA_FILE]) if cluster.body.get(CA_FILE) and not ca_data else None,
        insecure=cluster.body.get(INSECURE) is True,
    )


def context_url(access: ContextAccess, path: str | None) -> str:
    """The URL to probe: the server's, with an API path (default: a watch of the context's
    namespace's pods, which needs no pod name) appended to the cluster's path."""
    if path is None:
        path = f"/api/v1/namespaces/{access.namespace}/pods?watch=1"
    if not path.startswith("/"):
        raise ValueError(f"with --context, URL is a path on the cluster's server, e.g. /api/v1/pods?watch=1 (not {path})")
    return access.server.rstrip("/") + path


# --- I/O ------------------------------------------------------------------------------------


def read_kubeconfigs(paths: Iterable[str], must_exist: bool) -> KubeConfig:
    """I/O: read and merge the files. With must_exist False (a $KUBECONFIG list) missing files are
    skipped, as kubectl does, but not all of them."""
    configs, missing = [], []
    for path in paths:
        absolute = os.path.abspath(path)
        try:
            with open(absolute, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            if must_exist:
                raise KubeconfigError(f"{path}: no such file") from None
            missing.append(path)
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise KubeconfigError(f"{path}: cannot read it: {_reason(e)}") from None
        configs.append(parse_kubeconfig(text, absolute))
    if not configs:
        raise KubeconfigError(f"none of the files in $KUBECONFIG exists: {', '.join(missing)}")
    return merge(configs)


def read_text(path: str) -> str:
    """I/O."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_mitmproxy_ca(path: str) -> tuple[str, ...]:
    """I/O: mitmproxy's CA certificate. Only the certificates of the file: never a key, should the
    file be mitmproxy-ca.pem (key and certificate) rather than mitmproxy-ca-cert.pem."""
    try:
        certificates = pem_certificates(read_text(path))
    except FileNotFoundError:
        raise KubeconfigError(
            f"{path}: mitmproxy's CA does not exist yet: run mitmdump once (it creates its CA in "
            "~/.mitmproxy on its first start), or give the CA file with --mitmproxy-ca"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise KubeconfigError(f"{path}: cannot read mitmproxy's CA: {_reason(e)}") from None
    if not certificates:
        raise KubeconfigError(f"{path}: holds no PEM certificate (mitmproxy's is mitmproxy-ca-cert.pem)")
    return certificates


def public_roots() -> tuple[str, ...]:
    """I/O: the public roots mitmproxy itself trusts upstream (certifi, installed with mitmproxy)."""
    import certifi  # a dependency of mitmproxy, so always there; imported only when needed

    return pem_certificates(read_text(certifi.where()))


def same_file(a: str, b: str) -> bool:
    """I/O: whether two names are one file: the same path once links are resolved, or the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_new_file(path: str, data: bytes, mode: int) -> None:
    """I/O: a new file at path, created with this mode (never wider: the umask only narrows it),
    then moved over path in one step. An existing path (or a link there) is replaced, never
    written through."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
