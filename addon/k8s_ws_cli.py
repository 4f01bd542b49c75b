"""`k8s-ws`: the command line, a second thin face over the same core as the addon."""

from __future__ import annotations

import argparse
import sys

from k8s_ws_rules import RulesError, default_rules_path, load_rules


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k8s-ws",
        description="Check k8s-ws rules files. The proxy itself runs as `mitmdump -s addon/k8s_ws.py`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser("check", help="validate a rules file", description="Validate a rules file.")
    check.add_argument("file", nargs="?", help=f"the rules file (default: {default_rules_path()})")
    check.set_defaults(run=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
