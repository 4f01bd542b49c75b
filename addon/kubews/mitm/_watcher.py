"""The rules in force: loaded when the option is set, re-read when the file or a token file changes.

A broken file at start is an OptionsError (mitmdump exits with it); a broken edit later is
logged, and the last good rules stay in force. The files are polled rather than watched with
inotify: a Kubernetes ConfigMap mounted as a directory changes by swapping a `..data` symlink,
which a poll of the file's stat sees like any other edit.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from .. import RuleSet
from ..rulesfile import RulesError, load_rules
from . import _report

#: How often the rules file (and the token files it names) are checked for changes.
RELOAD_POLL_SECONDS = 0.5


def _file_states(paths) -> tuple:
    states = []
    for path in paths:
        try:
            st = os.stat(path)
            states.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            states.append((path, None))
    return tuple(states)


class RulesWatcher:
    def __init__(self, on_reload: Callable[[bool], None] | None = None) -> None:
        self.ruleset: RuleSet | None = None
        self._on_reload = on_reload or (lambda reloaded: None)  # told of each reload: True if it worked
        self._seen: tuple | None = None  # the watched files' states when last read
        self._task: asyncio.Task | None = None

    def load(self, path: str) -> None:
        """Read the rules at `path`; RulesError if they are broken (nothing changes then)."""
        self._use(load_rules(path), "loaded")

    def reload(self) -> bool:
        """Re-read the rules; on error, log it and keep the rules in force. True if reloaded."""
        assert self.ruleset is not None
        try:
            ruleset = load_rules(self.ruleset.path)
        except RulesError as e:
            self._seen = _file_states(self.ruleset.watched_files())  # report each broken edit once
            _report.rules_broken(e, self.ruleset)
            self._on_reload(False)
            return False
        self._use(ruleset, "reloaded")
        self._on_reload(True)
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _use(self, ruleset: RuleSet, verb: str) -> None:
        self.ruleset = ruleset
        self._seen = _file_states(ruleset.watched_files())
        _report.rules_in_force(ruleset, verb)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL_SECONDS)
            if self.ruleset is not None and _file_states(self.ruleset.watched_files()) != self._seen:
                self.reload()
