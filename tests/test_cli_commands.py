"""The ``gateway`` command as installed: its entry point, and ``check`` on a directory that
cannot be read (run as a real process)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import gateway.cli


def gateway_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_the_console_script_is_the_package_main() -> None:
    [script] = [e for e in entry_points(group="console_scripts") if e.name == "gateway"]
    assert script.value == "gateway.cli:main"
    assert script.load() is gateway.cli.main


def test_check_on_a_missing_directory_is_an_error_not_a_report(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    out = gateway_cmd("check", str(missing), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr == (
        f"error: cannot read mappings directory {missing}: No such file or directory\n"
    )
    out = gateway_cmd("check", str(missing), "--json", cwd=tmp_path)
    assert out.returncode == 2
    report = json.loads(out.stdout)
    assert report["ok"] is False
    assert [p["path"] for p in report["problems"]] == ["(directory)"]


def test_check_on_a_file_instead_of_a_directory(tmp_path: Path) -> None:
    file = tmp_path / "shop.yaml"
    file.write_text("group_key: shop\nintegrations: []\n")
    out = gateway_cmd("check", str(file), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: cannot read mappings directory {file}: Not a directory")


def test_check_counts_files_and_problems(tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text("group_key: shop\nintegrations: []\n")
    (tmp_path / "bad.yaml").write_text("group_key: bad\nintegrations: [{name: x}]\n")
    out = gateway_cmd("check", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1].endswith("problem(s) in 1 of 2 file(s)")
