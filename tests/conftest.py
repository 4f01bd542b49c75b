"""Fixtures shared by the end-to-end modules: one test PKI, test server and mitmdump of each
kind per module (module scope keeps each module's server records to itself).

And a guard at collection: no test id may hold a test token in any form, since ids are printed
(progress, failures, -v, junit files) and the tests' whole point is that tokens are never shown.
"""

import logging
import shutil
import sys

import pytest

import helpers
from fake_rancher import FakeServer, make_test_pki
from mitmdump_harness import Mitmdump


@pytest.hookimpl(tryfirst=True)  # before -m / -k deselect: every collected test is checked
def pytest_collection_modifyitems(config, items):
    forms = {form for token in helpers.TOKENS for form in helpers.secret_forms(token)}
    for item in items:
        leaked = [form for form in forms if form in item.nodeid]
        if leaked:
            shown = item.nodeid
            for form in sorted(leaked, key=len, reverse=True):
                shown = shown.replace(form, "<token>")
            raise pytest.UsageError(
                f"the test id {shown} holds a test token (shown here as <token>): give its "
                "parametrize a readable id, e.g. pytest.param(..., id=\"two bearer entries\") or ids=[...]"
            )


@pytest.fixture(autouse=True)
def no_log_filter_left_behind():
    """mitmproxy calls an addon's `done`, which takes its log filter off mitmproxy's loggers;
    taddons does not. Without this, a test's addon would redact the log lines of the next."""
    yield
    logfilter = sys.modules.get("kubews.mitm._logfilter")
    if logfilter is None:
        return
    for logger in [logging.getLogger(), *logging.root.manager.loggerDict.values()]:
        for installed in getattr(logger, "filters", ())[:]:
            if isinstance(installed, logfilter.RedactingFilter):
                logger.removeFilter(installed)


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


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium-headless-shell, or a skip that says how to get it."""
    path = shutil.which("chromium-headless-shell")
    if path is None:
        pytest.skip(
            "chromium-headless-shell not found on PATH: install Debian's chromium-headless-shell "
            "(.ci/run does) to run the browser tests"
        )
    return path
