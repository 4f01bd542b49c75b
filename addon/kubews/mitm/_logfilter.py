"""Keeping credentials out of mitmproxy's own log lines.

Some of mitmproxy's lines quote what a client sent before any flow exists, so no hook of ours
can hide it first (mitmproxy 11.0.2 and 12.x, `proxy/layers/http/_http1.py`):
- "Client closed connection before completing request headers: b'...'" (INFO), with the whole
  head a client sent before it hung up: a closed browser tab is enough;
- "<peer>: Invalid header line: b'...'" for a head line it cannot parse.

So while the addon is loaded, a filter on mitmproxy's loggers rewrites every record's message
(and traceback) with its credentials redacted (`kubews.redact_text`). mitmproxy logs through
`logging.getLogger(__name__)` per module, and a logger's filters see only the records made on
that logger, so the filter goes on every `mitmproxy.*` logger that exists when the addon loads
(all of the proxy's modules are imported by then) and comes off in `done`.
"""

from __future__ import annotations

import logging

from .. import redact_text

#: Where the lines above are made (proxy/server.py logs every layer's `Log` command), named so
#: that they are filtered even if nothing has created them yet. Not the addon's own logger: its
#: lines hold no credential, and its hints speak of Authorization in words this filter would take
#: for a header.
_KNOWN_LOGGERS = ("mitmproxy", "mitmproxy.proxy.server")


class RedactingFilter(logging.Filter):
    """Redacts credentials in every record that passes; never drops one."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True  # off with k8s_ws_show_tokens
        self._loggers: list[logging.Logger] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.enabled:
            return True
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            # The formatter caches the traceback here and prints this instead of formatting it.
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True

    def install(self) -> None:
        names = {*_KNOWN_LOGGERS, *(name for name in logging.root.manager.loggerDict if name.startswith("mitmproxy."))}
        for name in sorted(names):
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)
                self._loggers.append(logger)

    def uninstall(self) -> None:
        for logger in self._loggers:
            logger.removeFilter(self)
        self._loggers.clear()
