"""k8s-ws: `mitmdump -s addon/k8s_ws.py` moves Kubernetes bearer tokens out of WebSocket
subprotocols into Authorization, per the rules in rules.yaml. See README.md.

This file is only the entry point mitmproxy loads. mitmproxy puts its folder, addon/, first on
sys.path and runs it as a module of its own (not in sys.modules, so a relative import here would
fail); the package beside it, kubews, imports normally. mitmproxy hot-reloads this file only:
after editing the package, restart mitmdump.
"""

from kubews.mitm import K8sWs

addons = [K8sWs()]
