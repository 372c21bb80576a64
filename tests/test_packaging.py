"""The first screen a newcomer sees: installing the package and asking the
command for help print nothing but what was asked for.

The install runs in a fresh virtual environment with an up-to-date pip (as
``make run`` has), on a copy of the project's packaging files and packages,
so it sees exactly what a fresh clone would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _complaints(output: str) -> list[str]:
    """Lines that warn, other than pip's notes about this machine's own index settings."""
    return [line for line in output.splitlines()
            if ("warn" in line.lower() or "!!" in line or "please be careful" in line.lower())
            and not line.startswith("WARNING: Location 'file:")]


@pytest.mark.slow
def test_an_editable_install_of_a_fresh_copy_prints_no_warning(tmp_path: Path) -> None:
    project = tmp_path / "blocklist"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    for package in ("app", "workers", "client"):
        shutil.copytree(ROOT / package, project / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip"]
    upgrade = subprocess.run([*pip, "install", "-q", "--upgrade", "pip"], capture_output=True, text=True,
                             timeout=240)
    assert upgrade.returncode == 0, upgrade.stderr
    install = subprocess.run([*pip, "install", "-q", "--no-deps", "-e", str(project)], capture_output=True,
                             text=True, timeout=240)
    assert install.returncode == 0, install.stderr
    assert _complaints(install.stdout + install.stderr) == []
    # The editable install points at the copy: its packages import from there.
    where = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import app; print(app.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(project))


def test_blocklist_help_prints_usage_and_no_warning() -> None:
    command = Path(sys.executable).parent / "blocklist"
    assert command.exists(), "the package is not installed in this environment (pip install -e .)"
    result = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: blocklist")
    assert result.stderr == ""
    assert _complaints(result.stdout) == []
