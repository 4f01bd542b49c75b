"""Rules and the rule set: which rule applies to a handshake.

A rule set owns an index of its rules by literal host name, built once with the set, so that a
request is tried against the rules that can match it only: deciding takes the same time whatever
the number of rules.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from functools import lru_cache

from ._handshake import Handshake
from ._headers import upgrades_to_websocket
from ._paths import is_k8s_api_path
from ._tokens import TokenError


class Auth(enum.Enum):
    HEADER = "header"
    SUBPROTOCOL = "subprotocol"
    BOTH = "both"


class ClientAuthorization(enum.Enum):
    KEEP = "keep"
    REPLACE = "replace"


class OriginAction(enum.Enum):
    KEEP = "keep"
    REMOVE = "remove"
    MATCH_HOST = "match-host"


#: The two user_agent values that are actions; any other string is the new User-Agent.
USER_AGENT_KEEP = "keep"
USER_AGENT_REMOVE = "remove"


@dataclass(frozen=True)
class TokenSource:
    kind: str  # "env" or "file"
    ref: str  # the variable's name or the file's path

    def __str__(self) -> str:
        return f"{self.kind} {self.ref}"


@dataclass(frozen=True)
class Rule:
    name: str
    hosts: tuple[str, ...]
    paths: tuple[str, ...] | None = None  # None: every Kubernetes API path
    auth: Auth = Auth.HEADER
    authorization: ClientAuthorization = ClientAuthorization.KEEP
    user_agent: str = USER_AGENT_KEEP
    origin: OriginAction = OriginAction.KEEP
    token: TokenSource | None = None


#: A stored token as read from its source, or why it could not be read.
StoredToken = str | TokenError

#: A host glob: a host name with glob characters, and an optional port (itself a glob).
HOST_GLOB = re.compile(r"[A-Za-z0-9.*?!\[\]_-]+(?P<port>:[0-9*?!\[\]-]+)?")


@lru_cache(maxsize=4096)
def _compiled_host_glob(glob: str):
    """Whether the glob names a port, and the match of its lower-cased form (as fnmatchcase's)."""
    shape = HOST_GLOB.fullmatch(glob)
    return bool(shape and shape["port"]), re.compile(translate(glob.lower())).match


@lru_cache(maxsize=4096)
def _compiled_path_globs(globs: tuple[str, ...]):
    """One match for a rule's path globs: any of them, as fnmatchcase's."""
    return re.compile("|".join(f"(?:{translate(glob)})" for glob in globs)).match


def host_glob_matches(glob: str, name: str, port: int) -> bool:
    """Shell-style, case-insensitive; against "host:port" when the glob names a port."""
    with_port, match = _compiled_host_glob(glob)
    return match((f"{name}:{port}" if with_port else name).lower()) is not None


def rule_matches_path(rule: Rule, path: str) -> bool:
    if rule.paths is None:
        return is_k8s_api_path(path)
    # An empty list matches nothing (the rules file admits none; the regex of no globs would match all).
    return bool(rule.paths) and _compiled_path_globs(rule.paths)(path) is not None


def rule_matches_host(rule: Rule, request: Handshake, *, verified_only: bool = False) -> bool:
    """Whether a destination name of the request matches one of the rule's hosts; with
    `verified_only`, a name that is not only the client's word (see Destination). A rule with a
    stored token matches only so: the token goes only where the rule names."""
    names = [d.name for d in request.destinations if d.verified or not verified_only]
    return any(host_glob_matches(glob, name, request.port) for glob in rule.hosts for name in names)


def _is_literal(glob: str) -> bool:
    """A glob with no '*', '?' or '[' matches only itself, in any case."""
    return not any(c in glob for c in "*?[")


@dataclass(frozen=True)
class _HostIndex:
    """The positions of the rules that may match a destination name (or "name:port")."""

    by_literal: dict[str, tuple[int, ...]]  # lower-cased literal glob -> positions of its rules
    wildcard: tuple[int, ...]  # positions of the rules with at least one wildcard glob

    @classmethod
    def of(cls, rules: tuple[Rule, ...]) -> _HostIndex:
        by_literal: dict[str, list[int]] = {}
        wildcard = []
        for position, rule in enumerate(rules):
            if all(_is_literal(glob) for glob in rule.hosts):
                for glob in rule.hosts:
                    by_literal.setdefault(glob.lower(), []).append(position)
            else:
                wildcard.append(position)
        return cls({glob: tuple(positions) for glob, positions in by_literal.items()}, tuple(wildcard))

    def candidates(self, request: Handshake) -> list[int]:
        """The positions of the rules that may match the request, in rule order."""
        positions = set(self.wildcard)
        for destination in request.destinations:
            positions.update(self.by_literal.get(destination.name.lower(), ()))
            positions.update(self.by_literal.get(f"{destination.name}:{request.port}".lower(), ()))
        return sorted(positions)


@dataclass(frozen=True)
class RuleSet:
    """Rules in order, the tokens their sources gave, and where they were read from."""

    rules: tuple[Rule, ...]
    tokens: Mapping[str, StoredToken] = field(default_factory=dict)  # by rule name, for rules with `token:`
    path: str = "<rules>"
    _index: _HostIndex = field(init=False, repr=False, compare=False)
    # Whether any rule has `token:` (only then can a token be withheld), known once, not per request.
    has_stored_tokens: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _HostIndex.of(self.rules))
        object.__setattr__(self, "has_stored_tokens", any(rule.token is not None for rule in self.rules))

    def stored_token(self, rule: Rule) -> StoredToken | None:
        return self.tokens.get(rule.name)

    def watched_files(self) -> tuple[str, ...]:
        """The rules file and every token file: a change to any of them means a reload."""
        return (self.path, *(r.token.ref for r in self.rules if r.token and r.token.kind == "file"))

    def match(self, request: Handshake, upgrade_values: list[str]) -> Rule | None:
        """The first rule that applies to a request, or None. Only WebSocket upgrades ever match.

        `upgrade_values`: the request's Upgrade lines, which the caller has read already.
        """
        if not upgrades_to_websocket(upgrade_values):
            return None
        for position in self._index.candidates(request):
            rule = self.rules[position]
            if rule_matches_path(rule, request.path) and rule_matches_host(rule, request, verified_only=rule.token is not None):
                return rule
        return None

    def withheld_token_rule(self, request: Handshake, upgrade_values: list[str]) -> Rule | None:
        """The rule with a token that would apply before the one that does (if any), were the
        destination name it matches not only the client's word: its token was withheld."""
        if not upgrades_to_websocket(upgrade_values):
            return None
        for position in self._index.candidates(request):
            rule = self.rules[position]
            if not rule_matches_path(rule, request.path) or not rule_matches_host(rule, request):
                continue
            if rule.token is None or rule_matches_host(rule, request, verified_only=True):
                return None  # this rule applies, with nothing withheld
            return rule
        return None
