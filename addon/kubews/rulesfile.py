"""Reading rules.yaml into a RuleSet, with errors that point at the file, line and column.

Pure apart from reading the rules file and the token sources it names; no mitmproxy import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from ._rules import HOST_GLOB, Auth, ClientAuthorization, OriginAction, Rule, RuleSet, StoredToken, TokenSource
from ._tokens import TokenError, check_token

RULE_KEYS = ("name", "hosts", "paths", "auth", "authorization", "user_agent", "origin", "token")


def default_rules_path() -> Path:
    """The project's rules.yaml: beside addon/ in a clone, or where `pip install .` put it."""
    beside = Path(__file__).resolve().parents[2] / "rules.yaml"
    if beside.is_file():
        return beside
    return Path(sys.prefix) / "share" / "k8s-ws" / "rules.yaml"


class RulesError(ValueError):
    """One or more problems in a rules file, each as "FILE:LINE:COL: message"."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def load_rules(path: str | os.PathLike) -> RuleSet:
    """Read and validate a rules file, then read the token sources it names."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError([f"{path}:1:1: cannot read the rules file: {e}"]) from e
    rules = parse_rules(text, path)
    return RuleSet(rules, {r.name: read_token(r.token) for r in rules if r.token}, path)


def read_token(source: TokenSource) -> StoredToken:
    """The token a source holds, or the reason it holds none. The reason never quotes a token."""
    try:
        if source.kind == "env":
            if source.ref not in os.environ:
                raise TokenError(f"environment variable {source.ref} is not set")
            return check_token(os.environ[source.ref].strip())
        with open(source.ref, encoding="utf-8") as f:
            return check_token(f.read().strip())
    except TokenError as e:
        return e
    except (OSError, UnicodeDecodeError) as e:
        return TokenError(f"cannot read {source.ref}: {getattr(e, 'strerror', None) or type(e).__name__}")


def parse_rules(text: str, path: str = "<rules>") -> tuple[Rule, ...]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise RulesError([f"{path}:{mark.line + 1}:{mark.column + 1}: YAML: {e.problem}"]) from e
    except yaml.YAMLError as e:
        raise RulesError([f"{path}:1:1: YAML: {e}"]) from e
    parser = _Parser(path)
    rules = parser.document(root)
    if parser.errors:
        raise RulesError(parser.errors)
    return rules


class _Invalid(Exception):
    pass


class _Parser:
    """Walks the YAML node tree, so that every error knows where it stands in the file."""

    def __init__(self, path: str):
        self.path = path
        self.errors: list[str] = []

    def fail(self, node: yaml.Node, message: str) -> _Invalid:
        mark = node.start_mark
        self.errors.append(f"{self.path}:{mark.line + 1}:{mark.column + 1}: {message}")
        return _Invalid()

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name not in allowed:
                self.fail(key, f"{what}: unknown key '{name}' (known: {', '.join(allowed)})")
            elif name in items:
                self.fail(key, f"{what}: duplicate key '{name}'")
            else:
                items[name] = (key, value)
        return items

    def scalar(self, node: yaml.Node, what: str, tag: str = "tag:yaml.org,2002:str") -> str:
        # compose() has resolved plain scalars' tags as the safe loader would.
        if not isinstance(node, yaml.ScalarNode) or node.tag != tag:
            kind = {"tag:yaml.org,2002:str": "a string", "tag:yaml.org,2002:int": "an integer"}[tag]
            raise self.fail(node, f"{what} must be {kind}")
        return node.value

    def string_list(self, node: yaml.Node, what: str, check) -> tuple[str, ...]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
            items = [node]  # a single glob is taken as a list of one
        elif isinstance(node, yaml.SequenceNode) and node.value:
            items = node.value
        else:
            raise self.fail(node, f"{what} must be a non-empty list of strings")
        globs = []
        for item in items:
            glob = self.scalar(item, what)
            problem = check(glob)
            if problem:
                raise self.fail(item, f"{what}: bad glob '{glob}': {problem}")
            globs.append(glob)
        return tuple(globs)

    def choice(self, node: yaml.Node, what: str, enum_type):
        value = self.scalar(node, what)
        try:
            return enum_type(value)
        except ValueError:
            options = " | ".join(e.value for e in enum_type)
            raise self.fail(node, f"{what}: unknown value '{value}' (one of: {options})") from None

    def document(self, root: yaml.Node | None) -> tuple[Rule, ...]:
        if root is None:
            self.errors.append(f"{self.path}:1:1: the rules file is empty (it needs a 'rules:' list)")
            return ()
        try:
            top = self.mapping(root, "the rules file", ("version", "rules"))
            if "version" in top:
                key, node = top["version"]
                if self.scalar(node, "version", "tag:yaml.org,2002:int") != "1":
                    self.fail(node, f"version: unknown value '{node.value}' (only 1 is known)")
            if "rules" not in top:
                raise self.fail(root, "the rules file needs a 'rules:' list")
            key, rules_node = top["rules"]
            if not isinstance(rules_node, yaml.SequenceNode):
                raise self.fail(rules_node, "rules must be a list of rules")
        except _Invalid:
            return ()
        rules = []
        names: dict[str, int] = {}
        for index, node in enumerate(rules_node.value, 1):
            try:
                rule = self.rule(node, index)
            except _Invalid:
                continue
            if rule.name in names:
                self.fail(node, f"rule '{rule.name}': duplicate name (rule {names[rule.name]} has it too)")
            names.setdefault(rule.name, index)
            rules.append(rule)
        return tuple(rules)

    def rule(self, node: yaml.Node, index: int) -> Rule:
        fields = self.mapping(node, f"rule {index}", RULE_KEYS)
        if "name" not in fields:
            raise self.fail(node, f"rule {index}: 'name' is required")
        name = self.scalar(fields["name"][1], f"rule {index}: name").strip()
        if not name:
            raise self.fail(fields["name"][1], f"rule {index}: name must not be empty")
        where = f"rule '{name}'"
        if "hosts" not in fields:
            raise self.fail(node, f"{where}: 'hosts' is required")
        values: dict[str, object] = {"name": name}
        parsers = {
            "hosts": lambda n: self.string_list(n, f"{where}: hosts", _host_glob_problem),
            "paths": lambda n: self.string_list(n, f"{where}: paths", _path_glob_problem),
            "auth": lambda n: self.choice(n, f"{where}: auth", Auth),
            "authorization": lambda n: self.choice(n, f"{where}: authorization", ClientAuthorization),
            "user_agent": lambda n: self.user_agent(n, where),
            "origin": lambda n: self.choice(n, f"{where}: origin", OriginAction),
            "token": lambda n: self.token(n, where),
        }
        failed = False
        for key, parse in parsers.items():
            if key in fields:
                try:
                    values[key] = parse(fields[key][1])
                except _Invalid:
                    failed = True
        if failed:
            raise _Invalid()
        return Rule(**values)

    def user_agent(self, node: yaml.Node, where: str) -> str:
        value = self.scalar(node, f"{where}: user_agent")
        if not value.strip() or any(c in value for c in "\r\n\0"):
            raise self.fail(node, f"{where}: user_agent must be keep, remove or a one-line User-Agent")
        return value

    def token(self, node: yaml.Node, where: str) -> TokenSource:
        fields = self.mapping(node, f"{where}: token", ("env", "file"))
        if len(fields) != 1:
            raise self.fail(node, f"{where}: token needs exactly one of 'env' or 'file'")
        ((kind, (key, value)),) = fields.items()
        ref = self.scalar(value, f"{where}: token: {kind}")
        if not ref.strip():
            raise self.fail(value, f"{where}: token: {kind} must not be empty")
        return TokenSource(kind, ref)


def _brackets_problem(glob: str) -> str | None:
    depth = 0
    for c in glob:
        if c == "[":
            if depth:
                return "nested '['"
            depth = 1
        elif c == "]" and depth:
            depth = 0
    return "unclosed '['" if depth else None


def _host_glob_problem(glob: str) -> str | None:
    if not HOST_GLOB.fullmatch(glob):
        return "a host glob is a host name with *, ? or [...], and an optional :port"
    return _brackets_problem(glob)


def _path_glob_problem(glob: str) -> str | None:
    if not glob.startswith(("/", "*")):
        return "a path glob starts with '/' or '*'"
    if any(c.isspace() for c in glob):
        return "a path glob contains no white space"
    return _brackets_problem(glob)
