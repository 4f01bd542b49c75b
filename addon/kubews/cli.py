"""`k8s-ws`: the command line, a second thin face over the same core as the addon."""

from __future__ import annotations

import argparse
import asyncio
import sys

from . import diagnose
from ._paths import is_k8s_api_path
from ._rules import TokenSource
from ._tokens import TokenError, fingerprint
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
    try:
        target = parse_target(args.url)
        if not is_k8s_api_path(target.path):
            raise ValueError(
                "the URL's path is not a Kubernetes API path; give the endpoint's own, e.g. "
                ".../api/v1/namespaces/NS/pods/POD/log?follow=true or .../api/v1/pods?watch=1"
            )
        tls = diagnose.tls_context(target, args.cacert, args.insecure)
    except (ValueError, OSError) as e:  # a bad URL, an unreadable --cacert
        print(f"k8s-ws diagnose: {e}", file=sys.stderr)
        return 2
    token = None
    if args.token_env or args.token_file:
        source = TokenSource("env", args.token_env) if args.token_env else TokenSource("file", args.token_file)
        token = read_token(source)
        if isinstance(token, TokenError):
            print(f"k8s-ws diagnose: the token ({source}): {token}", file=sys.stderr)
            return 2

    def progress(index: int, total: int, outcome: diagnose.Outcome) -> None:
        print(f"[{index}/{total}] {outcome.variant}: {outcome.status or 'no answer'}", file=sys.stderr, flush=True)

    outcomes = asyncio.run(diagnose.probe_all(target, token, tls, args.timeout, progress))
    print(diagnose.report(target, outcomes, fingerprint(token) if token else None))
    return 0 if diagnose.recommended(outcomes) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k8s-ws",
        description="Check k8s-ws rules, explain what they do to a request, and diagnose a failing "
        "WebSocket handshake. The proxy itself runs as `mitmdump -s addon/k8s_ws.py`.",
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
        "url", metavar="URL", help="the WebSocket URL of an API endpoint, e.g. .../pods/POD/log?follow=true"
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
