"""The built wheel installs one package, nowcast, holding every module of the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.test_layers import ROOT, modules


@pytest.mark.slow
def test_wheel_holds_only_the_nowcast_namespace(tmp_path):
    source = tmp_path / "source"  # build from a copy of the tracked files, so the checkout stays clean
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True)
    for name in files.stdout.split():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w",
                    str(tmp_path / "dist")], check=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("nowcast-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"nowcast"}, f"the wheel installs {sorted(top_level)}"
    packaged = {name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                for name in names if name.endswith(".py")}
    assert packaged == {module for module, _ in modules()}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nowcast = nowcast.flows.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
