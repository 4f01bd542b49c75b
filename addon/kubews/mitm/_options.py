"""The addon's mitmproxy options; each starts with k8s_ws_ (interface §2)."""

from __future__ import annotations

from ..rulesfile import default_rules_path
from ._logformat import FORMATS


def add_options(loader) -> None:
    loader.add_option("k8s_ws_rules", str, str(default_rules_path()), "k8s-ws: path of the rules file.")
    loader.add_option(
        "k8s_ws_show_tokens",
        bool,
        False,
        "k8s-ws: show tokens and Authorization values in flows, logs and saved files "
        "(off: they are replaced by their sha256 fingerprint).",
    )
    loader.add_option(
        "k8s_ws_inspect",
        bool,
        False,
        "k8s-ws: let mitmproxy parse and show the messages of the streams a rule handled "
        "(off: they are relayed as raw bytes once the handshake is through, and not kept).",
    )
    loader.add_option(
        "k8s_ws_inspect_history",
        int,
        100,
        "k8s-ws: with k8s_ws_inspect, how many of the latest messages of a handled stream "
        "its flow keeps (at least 1).",
    )
    loader.add_option(
        "k8s_ws_metrics",
        str,
        "",
        "k8s-ws: host:port to serve Prometheus metrics on, at /metrics (empty: off). "
        "Needs prometheus-client: pip install 'k8s-ws[metrics]'.",
    )
    loader.add_option(
        "k8s_ws_log_format",
        str,
        "text",
        "k8s-ws: text: the addon's lines go to mitmproxy's event log; json: instead, to standard "
        "error as one JSON object per line.",
        choices=FORMATS,
    )
