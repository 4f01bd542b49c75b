"""The mitmproxy face of k8s-ws: the only part of the package that imports mitmproxy.

`K8sWs` is the addon; `addon/k8s_ws.py` is the script mitmproxy loads, and all it does is make one.
"""

from ._hooks import K8sWs

__all__ = ["K8sWs"]
