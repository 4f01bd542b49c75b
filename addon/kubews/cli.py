"""`k8s-ws`: the command line, a second thin face over the same core as the addon."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from . import diagnose
from . import kubeconfig as kc
from ._paths import is_k8s_api_path
from ._rules import TokenSource
from ._tokens import TokenError, check_token, fingerprint
from .explain import explain, parse_header_lines, parse_target
from .rulesfile import RulesError, default_rules_path, load_rules, read_token


def _check(args: argparse.Namespace) -> int:
    path = args.file or str(default_rules_path())
    try:
        ruleset = load_rules(path)
    except RulesError as e:
        for error in e.errors:
            print(error, file=sys.stderr)
        return 1
    for name, token in ruleset.tokens.items():
        if not isinstance(token, str):
            print(f"{path}: warning: rule '{name}': its token source cannot be read: {token}", file=sys.stderr)
    print(f"ok: {len(ruleset.rules)} rules")
    return 0


def _explain(args: argparse.Namespace) -> int:
    path = args.rules or str(default_rules_path())
    try:
        target = parse_target(args.url)
        headers = parse_header_lines(args.header)
        ruleset = load_rules(path)
    except RulesError as e:
        for error in e.errors:
            print(error, file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"k8s-ws explain: {e}", file=sys.stderr)
        return 2
    print(f"rules: {path}")
    print(explain(ruleset, target, headers))
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    access = None
    try:
        if args.context is not None:
            access = kc.context_access(_read_kubeconfig(args.kubeconfig), args.context)
            print(f"context '{access.context}' ({access.where}): {access.server}; token: {access.credential}; "
                  f"CA: {access.trust}", file=sys.stderr)
        elif args.kubeconfig:
            raise ValueError("--kubeconfig goes with --context NAME")
        elif args.url is None:
            raise ValueError("give the URL to probe, or --context NAME to take it from a kubeconfig")
        target = parse_target(kc.context_url(access, args.url) if access else args.url)
        if not is_k8s_api_path(target.path):
            raise ValueError(
                "the URL's path is not a Kubernetes API path; give the endpoint's own, e.g. "
                ".../api/v1/namespaces/NS/pods/POD/log?follow=true or .../api/v1/pods?watch=1"
            )
        tls = _diagnose_tls(target, args, access)
    except (ValueError, OSError) as e:  # a bad URL or kubeconfig, an unreadable --cacert
        print(f"k8s-ws diagnose: {e}", file=sys.stderr)
        return 2
    token = None
    source = _token_source(args, access)
    if source is not None:
        token = read_token(source)
        if isinstance(token, TokenError):
            print(f"k8s-ws diagnose: the token ({source}): {token}", file=sys.stderr)
            return 2
    elif access is not None and access.token is not None:
        token = access.token
        try:
            check_token(token)
        except TokenError as e:
            print(f"k8s-ws diagnose: context '{access.context}': user '{access.user}': token: {e}", file=sys.stderr)
            return 2

    def progress(index: int, total: int, outcome: diagnose.Outcome) -> None:
        print(f"[{index}/{total}] {outcome.variant}: {outcome.status or 'no answer'}", file=sys.stderr, flush=True)

    outcomes = asyncio.run(diagnose.probe_all(target, token, tls, args.timeout, progress))
    print(diagnose.report(target, outcomes, fingerprint(token) if token else None))
    return 0 if diagnose.recommended(outcomes) else 1


def _read_kubeconfig(explicit: str | None) -> kc.KubeConfig:
    return kc.read_kubeconfigs(*kc.kubeconfig_paths(explicit, os.environ, str(Path.home())))


def _token_source(args: argparse.Namespace, access: kc.ContextAccess | None) -> TokenSource | None:
    """--token-env or --token-file; else the context user's tokenFile, which client-go prefers to
    its token when both are set (it re-reads the file). None: the user's token, or no token."""
    if args.token_env:
        return TokenSource("env", args.token_env)
    if args.token_file:
        return TokenSource("file", args.token_file)
    if access is not None and access.token_file:
        return TokenSource("file", access.token_file)
    return None


def _diagnose_tls(target, args: argparse.Namespace, access: kc.ContextAccess | None):
    """--cacert or --insecure when given; else the context's CA, and its insecure-skip-tls-verify
    only if the kubeconfig says so."""
    if access is None or args.cacert or args.insecure:
        return diagnose.tls_context(target, args.cacert, args.insecure)
    try:
        return diagnose.tls_context(target, access.ca_file, access.insecure, access.ca_data)
    except OSError as e:  # ssl.SSLError too: a CA that does not load
        raise ValueError(f"context '{access.context}': its CA ({access.trust}) does not load: {e}") from None


def _kubeconfig(args: argparse.Namespace) -> int:
    mode = kc.Reverse(args.reverse) if args.reverse else kc.Regular(args.proxy or kc.DEFAULT_PROXY)
    home = Path.home()
    inputs, must_exist = kc.kubeconfig_paths(args.input, os.environ, str(home))
    mitmproxy_ca = args.mitmproxy_ca or str(home / ".mitmproxy" / "mitmproxy-ca-cert.pem")
    upstream_ca = os.path.abspath(args.upstream_ca_out or kc.default_upstream_ca_path(args.output))
    output = os.path.abspath(args.output)
    clash = _clash(output, upstream_ca, inputs, mitmproxy_ca)
    if clash:
        print(f"k8s-ws kubeconfig: {clash}", file=sys.stderr)
        return 2
    try:
        config = kc.read_kubeconfigs(inputs, must_exist)
        routes = kc.select_routes(config, args.context)
        if not routes:
            print(f"k8s-ws kubeconfig: nothing to route in {config.where}: no cluster has a Rancher server "
                  "(https://HOST[:PORT]/k8s/clusters/ID or /k8s/proxy/ID); name the contexts to route with --context",
                  file=sys.stderr)
            return 1
        upstream = kc.check_one_upstream(routes) if isinstance(mode, kc.Reverse) else None
        mitmproxy_certificates = kc.read_mitmproxy_ca(mitmproxy_ca)
        trusts = tuple(kc.cluster_trust(route, kc.read_text) for route in routes)
        needs_roots = any(not t.certificates and not t.insecure for t in trusts)
        roots = kc.public_roots() if needs_roots else ()
        clusters = tuple(kc.rewrite_cluster(r, t, mode, mitmproxy_certificates, roots) for r, t in zip(routes, trusts, strict=True))
        bundle = kc.upstream_bundle(trusts, roots)
    except kc.KubeconfigError as e:
        print(f"k8s-ws kubeconfig: {e}", file=sys.stderr)
        return 1
    writes = [(output, kc.dump(kc.rewrite(config, clusters)).encode("utf-8"), 0o600)]  # it holds tokens
    if bundle:
        writes.append((upstream_ca, "".join(bundle).encode("ascii"), 0o644))
    for path, data, file_mode in writes:
        try:
            kc.write_new_file(path, data, file_mode)
        except OSError as e:
            print(f"k8s-ws kubeconfig: cannot write {path}: {e.strerror or e}", file=sys.stderr)
            return 1
    command = kc.mitmdump_command(
        mode, upstream, _addon_path(), upstream_ca if bundle else None, _confdir(mitmproxy_ca, home),
        any(t.insecure for t in trusts),
    )
    routed = {r.cluster.name for r in routes}
    print(kc.summary(kc.Written(
        inputs=config.files, output=output, mode=mode, routes=routes, trusts=trusts, rewritten=clusters,
        untouched=tuple(c.name for c in config.clusters if c.name not in routed),
        upstream_ca=upstream_ca if bundle else None, upstream_certificates=len(bundle), command=tuple(command),
    )))
    return 0


def _clash(output: str, upstream_ca: str, inputs: list[str], mitmproxy_ca: str) -> str | None:
    """Why the files to write cannot be written, if they cannot: an input or mitmproxy's CA is never
    written, whether named as it is, through a link, or as another name of its inode."""
    for written, option in ((output, "-o"), (upstream_ca, "--upstream-ca-out")):
        for other, what in [*((i, "the input kubeconfig") for i in inputs), (mitmproxy_ca, "mitmproxy's CA")]:
            if kc.same_file(written, other):
                return f"{option} {written} is {what} ({other}); it is never written: give another file"
    if kc.same_file(output, upstream_ca):
        return f"-o and --upstream-ca-out are the same file ({output})"
    return None


def _addon_path() -> str:
    """The addon mitmdump loads: beside the package in a clone (also after `pip install -e .`)."""
    beside = Path(__file__).resolve().parents[1] / "k8s_ws.py"
    return str(beside) if beside.is_file() else "addon/k8s_ws.py"


def _confdir(mitmproxy_ca: str, home: Path) -> str | None:
    """The confdir mitmdump must use to present that CA, when it is not the default ~/.mitmproxy."""
    path = Path(mitmproxy_ca).expanduser().resolve()
    default = (home / ".mitmproxy").resolve()
    return str(path.parent) if path.name == "mitmproxy-ca-cert.pem" and path.parent != default else None


def _url_argument(parse):
    """argparse type for --proxy and --reverse: a bad URL is bad usage (exit 2) with the reason."""

    def check(text: str) -> str:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return check


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k8s-ws",
        description="Check k8s-ws rules, explain what they do to a request, diagnose a failing "
        "WebSocket handshake, and write kubeconfigs that go through k8s-ws. The proxy itself runs as "
        "`mitmdump -s addon/k8s_ws.py`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser("check", help="validate a rules file", description="Validate a rules file.")
    check.add_argument("file", nargs="?", help=f"the rules file (default: {default_rules_path()})")
    check.set_defaults(run=_check)

    explain_command = commands.add_parser(
        "explain",
        help="show the rule a WebSocket upgrade matches and the request as forwarded",
        description="Say which rule a WebSocket upgrade to URL with these headers would match, and print "
        "the request as k8s-ws would forward it (in regular or reverse mode), tokens redacted.",
    )
    explain_command.add_argument("url", metavar="URL", help="wss://, https://, ws:// or http:// URL")
    explain_command.add_argument(
        "-H", "--header", action="append", default=[], metavar="'Name: value'", help="a request header (repeatable)"
    )
    explain_command.add_argument("--rules", metavar="FILE", help=f"the rules file (default: {default_rules_path()})")
    explain_command.set_defaults(run=_explain)

    diagnose_command = commands.add_parser(
        "diagnose",
        help="try a WebSocket handshake against a server in every variant, say what works",
        description="Try the WebSocket handshake a browser console sends to URL, in the variants a rule can "
        "make of it (token as subprotocol or header; browser or no User-Agent; Origin foreign, matching or "
        "absent); print what each got, why, and the rules.yaml entry that works. The token is never printed. "
        "Exit status: 0 when a variant worked, 1 when none did, 2 on bad usage.",
    )
    diagnose_command.add_argument(
        "url", metavar="URL", nargs="?",
        help="the WebSocket URL of an API endpoint, e.g. .../pods/POD/log?follow=true; with --context, a path "
        "on the cluster's server (default: /api/v1/namespaces/<the context's namespace>/pods?watch=1)",
    )
    diagnose_command.add_argument(
        "--context", metavar="NAME",
        help="take the server, the token (token or tokenFile) and the CA from this kubeconfig context; "
        "--token-*, --cacert and --insecure still win when given",
    )
    diagnose_command.add_argument(
        "--kubeconfig", metavar="F", help="with --context: the kubeconfig (default: $KUBECONFIG, merged as kubectl does, or ~/.kube/config)"
    )
    token = diagnose_command.add_mutually_exclusive_group()
    token.add_argument("--token-env", metavar="VAR", help="read the token from this environment variable")
    token.add_argument("--token-file", metavar="F", help="read the token from this file")
    trust = diagnose_command.add_mutually_exclusive_group()
    trust.add_argument("--cacert", metavar="F", help="trust the server certificate's CA from this PEM file")
    trust.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    diagnose_command.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="per probe (default: 10)"
    )
    diagnose_command.set_defaults(run=_diagnose)

    kubeconfig_command = commands.add_parser(
        "kubeconfig",
        help="write a kubeconfig whose Rancher clusters go through k8s-ws",
        description="Write a new kubeconfig in which the Rancher clusters of IN (https://HOST[:PORT]/k8s/clusters/ID "
        "or /k8s/proxy/ID), or the clusters of the contexts named, go through k8s-ws; nothing else changes, and IN "
        "is never written. Regular mode adds proxy-url and makes the cluster's CA mitmproxy's plus its own (or the "
        "public roots); reverse mode points server at the proxy, with mitmproxy's CA. Also writes the clusters' "
        "own CAs for mitmproxy (ssl_verify_upstream_trusted_ca) and prints the mitmdump command to run. "
        "Exit status: 0 written, 1 nothing to route or an input that cannot be read, 2 bad usage.",
    )
    kubeconfig_command.add_argument(
        "input", metavar="IN", nargs="?", help="the kubeconfig to read (default: $KUBECONFIG, merged as kubectl does, or ~/.kube/config)"
    )
    kubeconfig_command.add_argument("-o", "--output", metavar="OUT", required=True, help="the kubeconfig to write (mode 0600)")
    where = kubeconfig_command.add_mutually_exclusive_group()
    where.add_argument(
        "--proxy", metavar="URL", type=_url_argument(kc.proxy_url),
        help=f"regular mode: mitmdump's URL, for proxy-url (default: {kc.DEFAULT_PROXY})",
    )
    where.add_argument(
        "--reverse", metavar="URL", type=_url_argument(kc.reverse_url),
        help="reverse mode: mitmdump's https:// URL in front of Rancher, for server",
    )
    kubeconfig_command.add_argument(
        "--mitmproxy-ca", metavar="F", help="mitmproxy's CA certificate (default: ~/.mitmproxy/mitmproxy-ca-cert.pem)"
    )
    kubeconfig_command.add_argument(
        "--upstream-ca-out", metavar="F", help="where to write the clusters' own CAs (default: OUT's name with -upstream-ca.pem)"
    )
    kubeconfig_command.add_argument(
        "--context", metavar="NAME", action="append", default=[],
        help="route the cluster of this context, whatever its server (repeatable; default: every Rancher cluster)",
    )
    kubeconfig_command.set_defaults(run=_kubeconfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
