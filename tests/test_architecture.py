"""The layout docs/architecture.md describes is the layout the code has.

The import rules are import-linter contracts in pyproject.toml; this runs them, so `pytest`
alone catches a room importing one above it or a new cycle. The page must also name every
room of gateway/, so a new package or top-level module cannot appear without a place on it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "architecture.md"


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run(
        [str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout
    assert run.stdout.count("KEPT") >= 4  # every contract in pyproject.toml was checked


def rooms() -> list[str]:
    """The packages (``admin/``) and modules (``app.py``) directly under gateway/."""
    found = []
    for entry in sorted((REPO / "gateway").iterdir()):
        if entry.is_dir() and (entry / "__init__.py").exists():
            found.append(entry.name + "/")
        elif entry.suffix == ".py" and not entry.name.startswith("__"):
            found.append(entry.name)
    return found


def test_the_page_names_every_room() -> None:
    text = PAGE.read_text(encoding="utf-8")
    missing = [room for room in rooms() if room not in text]
    assert not missing, f"docs/architecture.md does not place {missing}"
