"""Request targets: the path a rule matches, and which paths are the Kubernetes API's."""

from __future__ import annotations

import re

#: Kubernetes API paths, after an optional Rancher (/k8s/clusters/<id>, /k8s/proxy/<id>) or
#: Headlamp (/clusters/<name>) prefix (facts §4, §5).
K8S_API_PATH = re.compile(r"(?:/k8s/(?:clusters|proxy)/[^/]+|/clusters/[^/]+)?/apis?/")


def split_target(target: str) -> tuple[str, str]:
    """A request target's path and query (without the '?')."""
    path, _, query = target.partition("?")
    return path, query


def is_k8s_api_path(path: str) -> bool:
    return K8S_API_PATH.match(path) is not None
