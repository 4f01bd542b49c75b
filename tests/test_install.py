"""`pip install .` (not editable): the installed `k8s-ws` finds the shipped rules without a clone
(interface §1, §7). The other tests run against the editable install."""

import shutil
import site
import subprocess
import sys

import pytest

from mitmdump_harness import ROOT

pytestmark = pytest.mark.e2e  # pip builds and installs into a fresh venv


def test_installed_copy_finds_the_shipped_rules(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the work tree
    shutil.copytree(ROOT / "addon", source / "addon", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "rules.yaml"):
        shutil.copy(ROOT / name, source / name)
    venv = tmp_path / "venv"
    site_packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    # The venv sees the dependencies already installed; pip only builds and installs k8s-ws.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    if sys.prefix != sys.base_prefix:
        # The tests run in a venv themselves: --system-site-packages reaches the base Python's
        # packages, not that venv's, where the dependencies are. Add its site-packages after ours
        # (plain path lines: its .pth files, the editable k8s-ws among them, stay unprocessed).
        (site_packages / "_tests_venv.pth").write_text("".join(f"{path}\n" for path in site.getsitepackages()))
    install = subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", source], capture_output=True, text=True)
    if install.returncode and "Could not find a version that satisfies the requirement setuptools" in install.stderr:
        pytest.skip(f"pip could not fetch the build backend (no package index?): {install.stderr.strip()[-300:]}")
    assert install.returncode == 0, install.stderr
    shutil.rmtree(source)  # nothing may depend on the source tree any more

    check = subprocess.run([venv / "bin" / "k8s-ws", "check"], capture_output=True, text=True, cwd=tmp_path)
    assert (check.returncode, check.stdout) == (0, "ok: 1 rules\n"), check.stderr
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import kubews.rulesfile as r; print(r.__file__); print(r.default_rules_path())"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.split()
    assert where == [str(site_packages / "kubews" / "rulesfile.py"), str(venv / "share" / "k8s-ws" / "rules.yaml")]
    assert (venv / "share" / "k8s-ws" / "rules.yaml").read_text() == (ROOT / "rules.yaml").read_text()
