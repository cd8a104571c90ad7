"""The wheel a device installs carries every file the packages read at run time.

An editable install reads the source tree, so a file missing from the wheel (the manifest
schema once was) breaks every device while every other test passes. This test builds the
wheel the way a user's pip does and compares it with the package folders.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_sdk", "optimize", "device_profiles", "sync")
DATA_NAME = re.compile(r"[\"']([\w.-]+\.(?:json|yaml|yml|txt|csv))[\"']")


def wheel_source(dest: Path) -> Path:
    """What the wheel is built from, copied: setuptools reuses the tree's build/lib, so a
    module deleted from the tree stayed in every wheel built there later (and the build wrote
    build/ and *.egg-info into the checkout)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = wheel_source(tmp_path_factory.mktemp("source"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                           "-w", str(out), str(source)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("edge_ai_toolkit-*.whl")
    return path


def package_files() -> set[str]:
    """Every file inside the package folders, as the wheel names it (bytecode aside)."""
    files = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files.add(path.relative_to(ROOT).as_posix())
    return files


def names_opened_beside(source: str) -> set[str]:
    """File names on the lines that use `__file__`, or a constant made from it
    (`PROFILE_DIR = Path(__file__).parent` ... `PROFILE_DIR / "profile.schema.json"`)."""
    lines = source.splitlines()
    anchors = {"__file__"} | {m.group(1) for line in lines
                              if (m := re.match(r"(\w+)\s*=.*__file__", line))}
    return {name for line in lines if any(a in line for a in anchors)
            for name in DATA_NAME.findall(line)}


def test_wheel_carries_every_package_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(package_files() - names)
    assert not missing, (f"{wheel.name} leaves out {missing}: add their suffix to "
                         "[tool.setuptools.package-data] in pyproject.toml")


def test_wheel_carries_what_the_code_opens_next_to_its_module(wheel):
    """File names written in a module that reads files next to `__file__` (schemas, profiles)
    are in the wheel, in that module's package: a data file kept outside the package folders
    would pass the test above and still be missing on a device."""
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = set()
    for package in PACKAGES:
        for module in (ROOT / package).rglob("*.py"):
            folder = module.parent.relative_to(ROOT).as_posix()
            wanted |= {f"{folder}/{name}" for name in names_opened_beside(module.read_text())}
    assert wanted, "no module reads files next to __file__: this test needs updating"
    missing = sorted(wanted - names)
    assert not missing, f"{wheel.name} lacks {missing}, which the code opens"


def test_wheel_installs_only_the_packages(wheel):
    """Tests, examples and benchmarks stay out of site-packages."""
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == set(PACKAGES)


def test_wheel_carries_only_the_package_files(wheel):
    """Nothing left over from an earlier build: a deleted module, migration or page that is
    still in the wheel runs on devices although the tree no longer has it."""
    names = {n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n}
    stale = sorted(names - package_files())
    assert not stale, f"{wheel.name} carries {stale}, which the package folders do not have"
