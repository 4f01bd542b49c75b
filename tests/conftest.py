"""Fixtures shared by the end-to-end modules: one test PKI, test server and mitmdump of each
kind per module (module scope keeps each module's server records to itself)."""

import pytest

from fake_rancher import FakeServer, make_test_pki
from mitmdump_harness import Mitmdump


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rancher(pki):
    """Rancher in front of a kube-apiserver, over TLS."""
    with FakeServer(rancher=True, pki=pki) as server:
        yield server


@pytest.fixture(scope="module")
def apiserver(pki):
    """A plain kube-apiserver, over TLS."""
    with FakeServer(rancher=False, pki=pki) as server:
        yield server


@pytest.fixture(scope="module")
def reverse(tmp_path_factory, rancher, pki):
    """mitmdump in reverse mode in front of Rancher (verifying its certificate), with the shipped rules.yaml."""
    with Mitmdump(tmp_path_factory.mktemp("reverse"), mode=f"reverse:{rancher.url}", upstream_ca=pki.ca_cert) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def regular(tmp_path_factory, pki):
    """mitmdump as a regular proxy (clients use CONNECT for wss://), with the shipped rules.yaml."""
    with Mitmdump(tmp_path_factory.mktemp("regular"), upstream_ca=pki.ca_cert) as proxy:
        yield proxy
