"""mitmproxy commands (the console's and mitmweb's command bar): kubews.rules, kubews.reload,
kubews.explain. Names are lower-case letters and dots: mitmweb 11 accepts no others."""

from __future__ import annotations

from mitmproxy import command, exceptions

from ..explain import describe_rules, explain, parse_header_lines, parse_target
from ._watcher import RulesWatcher


class Commands:
    name = "k8s_ws_commands"

    def __init__(self, rules: RulesWatcher) -> None:
        self._rules = rules

    @command.command("kubews.rules")
    def rules(self) -> str:
        """The k8s-ws rules in force."""
        return describe_rules(self._rules.ruleset)

    @command.command("kubews.reload")
    def reload(self) -> str:
        """Re-read the k8s-ws rules file now."""
        path = self._rules.ruleset.path
        if not self._rules.reload():
            return f"{path} has errors (see the event log): the last good rules stay in force"
        return f"reloaded {len(self._rules.ruleset.rules)} rules from {path}"

    @command.command("kubews.explain")
    def explain(self, url: str, *headers: str) -> str:
        """The rule a WebSocket upgrade to URL with headers ('Name: value') matches, and the request
        as it would be forwarded, tokens redacted."""
        try:
            target = parse_target(url)
            fields = parse_header_lines(list(headers))
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from e
        return explain(self._rules.ruleset, target, fields)
