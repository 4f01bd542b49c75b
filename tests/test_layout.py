"""The package's layout promises: the core and the command line never import mitmproxy; only
kubews.mitm does (README, "The layout")."""

import subprocess
import sys

from mitmdump_harness import ROOT

PURE = ["kubews", "kubews.rulesfile", "kubews.hints", "kubews.explain", "kubews.diagnose", "kubews.cli"]


def imported_after(modules: list[str]) -> set[str]:
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('\\n'.join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT / "addon")
    return set(run.stdout.split())


def test_the_core_and_the_command_line_import_no_mitmproxy():
    assert not {m for m in imported_after(PURE) if m.split(".")[0] == "mitmproxy"}


def test_the_addon_does():
    # The check above can fail: the same probe sees mitmproxy when the mitmproxy face is imported.
    assert "mitmproxy" in imported_after(["kubews.mitm"])
