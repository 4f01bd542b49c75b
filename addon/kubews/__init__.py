"""k8s-ws: moves Kubernetes bearer tokens out of WebSocket subprotocols, per host rules.

This package's top level is the sans-IO core: parsing, rule matching and the rewrite decision as
pure functions over plain values, with no mitmproxy import and no I/O. Around it:

- `rulesfile`: reading rules.yaml into a RuleSet (file I/O), errors as FILE:LINE:COL;
- `hints`: what a failed handshake means (pure); `explain`: what a rule does to a request (pure);
- `diagnose` and `cli`: the `k8s-ws` command;
- `mitm`: the mitmproxy addon, the only part that imports mitmproxy.

Facts cited as "facts §N" are from docs/protocol.md.
"""

from ._decision import Forward, RefusalCode, Refuse, decide, refusal_body, withheld_token
from ._handshake import Destination, Handshake
from ._headers import (
    PROTOCOL_HEADER,
    Headers,
    header_elements,
    header_index,
    header_values,
    is_websocket_upgrade,
    printable,
    replace_headers,
)
from ._paths import is_k8s_api_path, split_target
from ._redaction import redact_header_value, redact_text
from ._rules import (
    HOST_GLOB,
    USER_AGENT_KEEP,
    USER_AGENT_REMOVE,
    Auth,
    ClientAuthorization,
    OriginAction,
    Rule,
    RuleSet,
    StoredToken,
    TokenSource,
    host_glob_matches,
)
from ._tokens import (
    BEARER_PREFIX,
    TokenError,
    bearer_payload,
    check_token,
    decode_token,
    encode_token,
    fingerprint,
    is_bearer_entry,
)

__all__ = [
    "BEARER_PREFIX",
    "HOST_GLOB",
    "PROTOCOL_HEADER",
    "USER_AGENT_KEEP",
    "USER_AGENT_REMOVE",
    "Auth",
    "ClientAuthorization",
    "Destination",
    "Forward",
    "Handshake",
    "Headers",
    "OriginAction",
    "RefusalCode",
    "Refuse",
    "Rule",
    "RuleSet",
    "StoredToken",
    "TokenError",
    "TokenSource",
    "bearer_payload",
    "check_token",
    "decide",
    "decode_token",
    "encode_token",
    "fingerprint",
    "header_elements",
    "header_index",
    "header_values",
    "host_glob_matches",
    "is_bearer_entry",
    "is_k8s_api_path",
    "is_websocket_upgrade",
    "printable",
    "redact_header_value",
    "redact_text",
    "refusal_body",
    "replace_headers",
    "split_target",
    "withheld_token",
]
