"""Mapping files compiled against the integration declarations: errors with file, line and key
path (all of them at once), fan-out, mapping a record, versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.mapping.errors import MappingError
from gateway.mapping.loader import MappingRegistry, load_file

GOOD = """\
group_key: shop
description: test
integrations:
  - name: hook
    type: http
    when: {consent: {eq: true}}
    connection:
      url: https://hooks.example.com/{email}
    fields:
      email: {path: epost, transform: [trim, lower], required: true}
      first: {path: namn, transform: [first_word]}
      tags: {path: some_tags, transform: [{join: ";"}]}
      source: {value: web}
    options: {rate_limit: 600/min, batch_wait: 250ms}
  - name: archive
    type: file
    connection: {path: ./out.ndjson}
    fields:
      email: epost
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_good_file_compiles_fans_out_and_maps(tmp_path: Path) -> None:
    mapping, problems = load_file(write(tmp_path, "shop", GOOD))
    assert problems == []
    assert mapping is not None
    assert len(mapping.version) == 16
    data = {
        "epost": " John@Example.COM ",
        "namn": "Åsa Öberg",
        "some_tags": ["a", "b"],
        "consent": True,
    }
    assert mapping.fan_out(data) == ["hook", "archive"]
    assert mapping.fan_out({**data, "consent": False}) == ["archive"]
    hook = mapping.integration("hook")
    assert hook is not None
    assert hook.options.rate_limit == 10.0
    assert hook.options.batch_wait == 0.25
    assert hook.map(data) == {
        "email": "john@example.com",
        "first": "Åsa",
        "tags": "a;b",
        "source": "web",
    }


def test_mapping_error_names_integration_field_and_source(tmp_path: Path) -> None:
    mapping, _ = load_file(write(tmp_path, "shop", GOOD))
    assert mapping is not None
    hook = mapping.integration("hook")
    assert hook is not None
    with pytest.raises(MappingError) as exc:
        hook.map({"namn": "x"})
    err = exc.value
    assert (err.integration, err.field, err.source) == ("hook", "email", "epost")


BAD = """\
group_key: other
integrations:
  - name: one
    type: nope
  - name: two
    type: http
    connection: {method: GET, colour: red}
    fields:
      email: {path: epost, transform: [no_such_transform]}
    when: {age: {between: [1, 2]}}
  - name: two
    type: file
    connection: {path: "${GATEWAY_TEST_UNSET_VARIABLE}"}
    options: {rate_limit: fast}
"""


def test_every_error_is_reported_with_its_line_and_key_path(tmp_path: Path) -> None:
    mapping, problems = load_file(write(tmp_path, "shop", BAD))
    assert mapping is None
    found = {(p.line, p.path) for p in problems}
    messages = " | ".join(str(p) for p in problems)
    assert (1, "group_key") in found, messages  # must equal the file name
    assert (4, "integrations[0].type") in found, messages
    assert (7, "integrations[1].connection.colour") in found, messages
    assert (7, "integrations[1].connection.url") in found, messages  # required, missing
    assert any(p.path.startswith("integrations[1].fields.email.transform") for p in problems)
    assert any(p.path.startswith("integrations[1].when") for p in problems)
    assert any(p.path == "integrations[2].options.rate_limit" for p in problems), messages
    assert all(p.file.endswith("shop.yaml") for p in problems)


def test_pydantic_stage_errors_and_secrets(tmp_path: Path, monkeypatch) -> None:
    # Model errors stop compilation before declarations are checked, still with lines.
    _, problems = load_file(write(tmp_path, "shop", "group_key: shop\nintegrations: 3\n"))
    assert [(p.line, p.path) for p in problems] == [(2, "integrations")]
    _, problems = load_file(write(tmp_path, "shop", "group_key: shop\nintegrations: [\n"))
    assert problems[0].path == "(yaml)"
    assert problems[0].line is not None
    monkeypatch.setenv("GATEWAY_TEST_HOOK", "https://h.example.com/x")
    text = GOOD.replace("https://hooks.example.com/{email}", "${GATEWAY_TEST_HOOK}")
    mapping, problems = load_file(write(tmp_path, "shop", text))
    assert problems == []
    assert mapping is not None
    hook = mapping.integration("hook")
    assert hook is not None
    assert hook.connection.value["url"] == "https://h.example.com/x"
    assert hook.connection.redacted()["url"] == "***"


def test_registry_keeps_the_last_good_version_and_forgets_deleted_files(tmp_path: Path) -> None:
    path = write(tmp_path, "shop", GOOD)
    reg = MappingRegistry(tmp_path)
    assert reg.reload().loaded == ["shop"]
    good = reg.get("shop")
    assert good is not None
    path.write_text(GOOD.replace("type: file", "type: nope") + "\n# edit\n")
    result = reg.reload()
    assert str(path) in result.failed
    assert reg.get("shop") is good  # still live
    assert reg.problems_of("shop")
    path.write_text(GOOD.replace("source: {value: web}", "source: {value: app}"))
    assert reg.reload().loaded == ["shop"]
    fixed = reg.get("shop")
    assert fixed is not None
    assert fixed.version != good.version
    assert reg.problems_of("shop") == []
    assert reg.reload().loaded == []  # unchanged files are not recompiled
    path.unlink()
    assert reg.reload().removed == ["shop"]
    assert reg.get("shop") is None


def test_repository_mappings_are_valid() -> None:
    reg = MappingRegistry(Path(__file__).resolve().parent.parent / "mappings")
    result = reg.reload()
    assert result.failed == {}
    assert "demo" in result.loaded


def test_check_command_exit_codes_and_output(tmp_path: Path, capsys) -> None:
    import json

    from gateway.cli import main

    write(tmp_path, "shop", GOOD)
    assert main(["check", str(tmp_path)]) == 0
    assert "ok: 1 group(s), 2 integration(s)" in capsys.readouterr().out
    write(tmp_path, "broken", BAD.replace("group_key: other", "group_key: broken"))
    assert main(["check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'broken.yaml'}:4: integrations[0].type: unknown integration type" in out
    assert main(["check", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["groups"] == 1
    assert {p["file"] for p in report["problems"]} == {str(tmp_path / "broken.yaml")}
    # A directory that cannot be read is no report of problems: an error, exit 2.
    assert main(["check", str(tmp_path / "missing")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == (
        f"error: cannot read mappings directory {tmp_path / 'missing'}: No such file or directory"
    )


def test_literal_secrets_in_auth_blocks_are_refused(tmp_path: Path) -> None:
    text = GOOD.replace(
        "      url: https://hooks.example.com/{email}\n",
        "      url: https://hooks.example.com/{email}\n"
        "      auth: {type: basic, username: u, password: hunter2}\n",
    )
    _, problems = load_file(write(tmp_path, "shop", text))
    assert [(p.line, p.path) for p in problems] == [(9, "integrations[0].connection.auth.password")]
    assert "must not be written in the file" in problems[0].message


def test_reload_keeps_compiled_mappings_out_of_the_collectors_way(tmp_path: Path) -> None:
    import gc

    gc.unfreeze()
    write(tmp_path, "shop", GOOD)
    reg = MappingRegistry(tmp_path)
    reg.reload()
    try:
        assert gc.isenabled()  # paused while compiling only
        assert gc.get_freeze_count() > 0
        mapping = reg.get("shop")
        assert mapping is not None
        # Frozen objects are no longer in the generations full collections walk.
        hook = mapping.integration("hook")
        assert not any(o is hook for o in gc.get_objects())
    finally:
        gc.unfreeze()
