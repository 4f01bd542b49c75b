"""k8s-ws: `mitmdump -s addon/k8s_ws.py` moves Kubernetes bearer tokens out of WebSocket
subprotocols into Authorization, per the rules in rules.yaml. See README.md.

This file is only the entry point mitmproxy loads; the addon lives in k8s_ws_addon.
"""

from k8s_ws_addon import K8sWs

addons = [K8sWs()]
