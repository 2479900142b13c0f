"""The integration catalog: generated docs stay in step with the declarations."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.cli import main
from gateway.integrations import catalog
from gateway.integrations.base import all_types

DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


def test_docs_integrations_md_is_generated_from_the_declarations() -> None:
    assert DOC.read_text() == catalog.markdown(), (
        "docs/integrations.md is stale: run "
        "`gateway integrations --markdown > docs/integrations.md`"
    )


def test_every_type_is_in_the_catalog_with_its_actions(capsys) -> None:
    assert main(["integrations", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [t["type"] for t in printed] == [t.name for t in all_types()]
    for entry, decl in zip(printed, all_types(), strict=True):
        assert [a["name"] for a in entry["actions"]] == [a.name for a in decl.actions]
        assert [p["name"] for p in entry["connection"]] == [p.name for p in decl.connection]


def test_unknown_type_is_an_error(capsys) -> None:
    assert main(["integrations", "no_such_type"]) == 1
    assert "no integration type 'no_such_type'" in capsys.readouterr().err
