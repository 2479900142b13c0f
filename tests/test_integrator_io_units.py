"""The integrator_io type's pure parts: load-time checks, requests built with and without a
link, times from the record's arrival, reading answers into outcomes with links."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway.integrations.base import OutboundRequest, OutcomeKind, RecordContext, Response
from gateway.integrations.integrator_io import INTEGRATOR_IO, _Context, iso
from gateway.mapping.loader import MappingRegistry

ENTRY = """\
group_key: saas
integrations:
  - name: licences
    type: integrator_io
    action: {action}
    connection: {{token: "${{IIO_T}}", connector_id: "c/1"}}
    settings: {{{settings}}}
    fields: {{{fields}}}
"""


def _registry(tmp_path: Path, monkeypatch, action: str, settings: str, fields: str):
    monkeypatch.setenv("IIO_T", "tok")
    (tmp_path / "saas.yaml").write_text(
        ENTRY.format(action=action, settings=settings, fields=fields)
    )
    reg = MappingRegistry(tmp_path)
    reg.reload()
    return reg


def test_check_wants_email_and_add_on_pairs(tmp_path: Path, monkeypatch) -> None:
    reg = _registry(tmp_path, monkeypatch, "license", "trial_days: 0", "addOnType: t")
    problems = " ".join(str(p) for p in reg.all_problems())
    assert "map email" in problems
    assert "addOnType and addOnEdition together" in problems
    assert "trial_days must be positive" in problems


def _integration(tmp_path: Path, monkeypatch, action: str, settings: str = "", fields: str = ""):
    reg = _registry(tmp_path, monkeypatch, action, settings, "email: email" + fields)
    assert not reg.all_problems(), [str(p) for p in reg.all_problems()]
    mapping = reg.get("saas")
    assert mapping is not None
    integration = mapping.integration("licences")
    assert integration is not None
    return integration


def test_build_posts_without_a_link_and_puts_with_one(tmp_path: Path, monkeypatch) -> None:
    integ = _integration(tmp_path, monkeypatch, "license", "trial_days: 2")
    arrival = 1_800_000_000.25
    fields = {"email": "A@b.se"}
    [first] = INTEGRATOR_IO.build(
        integ, [("d1", fields)], records={"d1": RecordContext(arrival, "a@b.se", None)}
    )
    assert (first.method, first.url) == (
        "POST",
        "https://api.integrator.io/v1/connectors/c%2F1/licenses",
    )
    assert orjson.loads(first.body) == {"email": "A@b.se", "expires": iso(arrival + 2 * 86400)}
    assert first.headers["Authorization"] == "Bearer tok"
    assert "Authorization" in first.secret_headers
    # Built again later (a retry): the same date, counted from the arrival.
    [again] = INTEGRATOR_IO.build(
        integ, [("d1", fields)], now=arrival + 5000,
        records={"d1": RecordContext(arrival, "a@b.se", "lic 9")},
    )  # fmt: skip
    assert (again.method, again.url) == (
        "PUT",
        "https://api.integrator.io/v1/connectors/c%2F1/licenses/lic%209",
    )
    assert orjson.loads(again.body) == {"expires": iso(arrival + 2 * 86400)}


def test_mapped_expires_is_normalised_and_wins(tmp_path: Path, monkeypatch) -> None:
    integ = _integration(tmp_path, monkeypatch, "license", "trial_days: 2", ", expires: ends")
    [req] = INTEGRATOR_IO.build(integ, [("d1", {"email": "a@b.se", "expires": "2027-03-01"})])
    assert orjson.loads(req.body)["expires"] == "2027-03-01T00:00:00.000Z"


def _ctx(action: str, ext: str | None = None) -> _Context:
    return _Context(action, "a@b.se", "a@b.se", ext, 1000.0, "http://x/licenses", 60.0, 600.0)


def _read(action: str, status: int, body: object, ext: str | None = None, detail=None):
    req = OutboundRequest("POST", "http://x", {}, b"", ["d1"], context=_ctx(action, ext))
    raw = orjson.dumps(body) if body is not None else b""
    [out] = INTEGRATOR_IO.read(req, Response(status, {}, raw, detail))
    return out


def test_read_links_created_licences_and_forgets_deleted_ones() -> None:
    out = _read("license", 201, {"_id": "lic1"})
    assert out.kind == OutcomeKind.DELIVERED
    assert (out.link.link_key, out.link.external_id) == ("a@b.se", "lic1")
    out = _read("expire", 200, {}, detail={"external_id": "found"})
    assert out.link.external_id == "found"
    for status in (204, 404):
        out = _read("delete", status, None, ext="lic1")
        assert out.kind == OutcomeKind.DELIVERED
        assert out.link.external_id is None
    # A 2xx without an id to link: retried rather than losing the licence's id.
    assert _read("license", 201, {}).kind == OutcomeKind.RETRY


def test_read_invalid_user_slow_schedule_and_errors() -> None:
    err = {"errors": [{"code": "invalid_user", "message": "No user a@b.se"}]}
    out = _read("license", 400, err)
    assert out.kind == OutcomeKind.RETRY
    assert (out.retry_after, out.retry_until) == (60.0, 1600.0)
    assert "invalid_user: No user a@b.se" in out.error
    assert _read("license", 401, {"message": "Unauthorized"}).kind == OutcomeKind.PERMANENT
    assert _read("license", 429, {"message": "slow"}).kind == OutcomeKind.RETRY
    assert _read("license", 503, None).kind == OutcomeKind.RETRY
    assert _read("expire", 404, {"message": "nothing"}).kind == OutcomeKind.PERMANENT
    assert 401 in INTEGRATOR_IO.breaker_statuses
