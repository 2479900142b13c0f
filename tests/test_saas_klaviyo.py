"""The ``klaviyo`` type: the same call as klaviyo-api (Klaviyo's own SDK), every body valid
against Klaviyo's published OpenAPI document (tests/data/vendors/klaviyo, MIT), and the
delivery engine against a fake answering Klaviyo's 200/201/202, 400, 429, 401 and 5xx shapes."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml
from referencing import Registry, Resource

from gateway.integrations.base import BuildErrors
from gateway.mapping.errors import SpecErrors
from gateway.mapping.model import CompiledIntegration, compile_mapping
from gateway.store.base import DeliveryState
from tests.support import vendor_fakes
from tests.support.saas import call_of, engine_requests, sdk_capture

pytestmark = pytest.mark.e2e  # real local servers and the delivery engine

API_KEY = "pk_0f1e2d3c4b5a69788796a5b4c3d2e1f0ab"
SPEC = Path(__file__).parent / "data" / "vendors" / "klaviyo" / "profiles-stable.json"

ENTRY = """\
- name: saas
  type: klaviyo
  connection:
    api_key: "${KLAVIYO_API_KEY}"
    base_url: "{url}"
  fields:
    email: {path: epost, transform: [trim, lower]}
    first_name: {path: namn, transform: [first_word]}
    last_name: {path: namn, transform: [rest_words]}
    properties.intressen: some_tags
    location.country: {value: Sverige}
  options: {retry: {base: 20ms, cap: 100ms, max_attempts: 30}}
"""
LIST_ENTRY = ENTRY.replace("  fields:", "  settings: {list_id: VRgFBd}\n  fields:").replace(
    "  options: {", "  options: {batch_size: 50, batch_wait: 50ms, "
)

RECORD = {"epost": "Åsa.Öberg@Exempel.se", "namn": "Åsa Öberg Ström", "some_tags": ["kött", "fisk"]}
ATTRIBUTES = {
    "email": "åsa.öberg@exempel.se",
    "first_name": "Åsa",
    "last_name": "Öberg Ström",
    "properties": {"intressen": ["kött", "fisk"]},
    "location": {"country": "Sverige"},
}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLAVIYO_API_KEY", API_KEY)


def compiled(entry: str = ENTRY) -> CompiledIntegration:
    text = "group_key: shop\nintegrations:\n" + "\n".join(
        "  " + line for line in entry.replace('    base_url: "{url}"\n', "").splitlines()
    )
    env = {"KLAVIYO_API_KEY": API_KEY}
    return compile_mapping(yaml.safe_load(text), text.encode(), environ=env).integrations[0]


# -- Klaviyo's published schema ------------------------------------------------------------


@functools.cache
def _spec() -> dict[str, Any]:
    return orjson.loads(SPEC.read_bytes())


def validate(path: str, body: Any) -> None:
    """Validate a request body against the schema Klaviyo's OpenAPI gives ``POST path``, and
    check every profile attribute sent is one the document declares (its schemas allow
    unknown keys, which Klaviyo ignores: a misspelt attribute would pass silently)."""
    spec = _spec()
    op = spec["paths"][path]["post"]
    schema = op["requestBody"]["content"]["application/vnd.api+json"]["schema"]
    registry: Registry[Any] = Registry().with_resource("urn:klaviyo", Resource.opaque(spec))
    ref = {"$ref": "urn:klaviyo#" + schema["$ref"].removeprefix("#")}
    # OpenAPI 3.0 refs inside the document are document-relative ("#/components/...").
    validator = jsonschema.Draft7Validator(
        ref, registry=registry.with_resource("", Resource.opaque(spec))
    )
    validator.validate(body)
    declared = spec["components"]["schemas"]["ProfileUpsertQueryResourceObject"]["properties"][
        "attributes"
    ]["properties"]
    location = spec["components"]["schemas"]["ProfileLocation"]["properties"]
    data = body["data"]
    profiles = (
        data["attributes"]["profiles"]["data"] if "profiles" in data["attributes"] else [data]
    )
    for p in profiles:
        assert set(p["attributes"]) <= set(declared), set(p["attributes"]) - set(declared)
        assert set(p["attributes"].get("location", {})) <= set(location)


def test_the_schema_check_itself_refuses_a_wrong_body() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate("/api/profile-import", {"data": {"type": "person", "attributes": {}}})
    with pytest.raises(AssertionError):
        validate(
            "/api/profile-import", {"data": {"type": "profile", "attributes": {"firstname": "Å"}}}
        )


def test_profile_import_bodies_follow_klaviyos_openapi() -> None:
    integ = compiled()
    batch = [
        ("dlv_a", {"email": "a@x.se", "first_name": "Åsa", "properties.intressen": ["k"]}),
        (
            "dlv_b",
            {
                "phone_number": "+46701234567",
                "location.city": "Malmö",
                "image": "https://x.se/a.png",
            },
        ),
    ]
    requests = integ.type.build(integ, batch)  # type: ignore[misc]
    assert len(requests) == 2
    for r in requests:
        assert r.url == "https://a.klaviyo.com/api/profile-import"
        assert r.headers["revision"] == _spec()["info"]["version"]
        validate("/api/profile-import", orjson.loads(r.body))


def test_bulk_import_job_bodies_follow_klaviyos_openapi() -> None:
    integ = compiled(LIST_ENTRY)
    batch = [(f"dlv_{n}", {"email": f"u{n}@x.se", "last_name": "Öberg"}) for n in range(30)]
    batch.append(("dlv_dup", {"email": "U3@x.se"}))
    requests = integ.type.build(integ, batch)  # type: ignore[misc]
    assert [len(r.delivery_ids) for r in requests] == [30, 1]
    for r in requests:
        assert r.url == "https://a.klaviyo.com/api/profile-bulk-import-jobs"
        body = orjson.loads(r.body)
        validate("/api/profile-bulk-import-jobs", body)
        assert body["data"]["relationships"]["lists"]["data"] == [{"type": "list", "id": "VRgFBd"}]


# -- the vendor's own SDK ------------------------------------------------------------------


async def test_profile_import_is_the_call_klaviyos_sdk_makes(tmp_path: Path) -> None:
    fake = vendor_fakes.klaviyo()
    sent, done = await engine_requests(tmp_path, ENTRY, [RECORD], fake)
    assert [d.state for d in done] == [DeliveryState.DELIVERED]
    validate("/api/profile-import", sent[0].json())

    from klaviyo_api import KlaviyoAPI

    def sdk(url: str) -> None:
        KlaviyoAPI(API_KEY, test_host=url, max_retries=0).Profiles.create_or_update_profile(
            {"data": {"type": "profile", "attributes": ATTRIBUTES}}
        )

    oracle = await sdk_capture(sdk, fake)
    assert call_of(sent[0]) == call_of(oracle[0])
    assert call_of(sent[0])[3] == ("klaviyo-api-key", API_KEY)


async def test_a_bulk_import_job_is_the_call_klaviyos_sdk_makes(tmp_path: Path) -> None:
    fake = vendor_fakes.klaviyo()
    sent, done = await engine_requests(tmp_path, LIST_ENTRY, [RECORD], fake)
    assert [d.state for d in done] == [DeliveryState.DELIVERED]
    validate("/api/profile-bulk-import-jobs", sent[0].json())

    from klaviyo_api import KlaviyoAPI

    def sdk(url: str) -> None:
        KlaviyoAPI(API_KEY, test_host=url, max_retries=0).Profiles.bulk_import_profiles(
            {
                "data": {
                    "type": "profile-bulk-import-job",
                    "attributes": {
                        "profiles": {"data": [{"type": "profile", "attributes": ATTRIBUTES}]}
                    },
                    "relationships": {"lists": {"data": [{"type": "list", "id": "VRgFBd"}]}},
                }
            }
        )

    oracle = await sdk_capture(sdk, fake)
    assert call_of(sent[0]) == call_of(oracle[0])


def test_a_profile_without_an_identifier_fails_alone() -> None:
    integ = compiled()
    with pytest.raises(BuildErrors) as caught:
        integ.type.build(  # type: ignore[misc]
            integ, [("dlv_a", {"first_name": "Åsa"}), ("dlv_b", {"email": "b@x.se"})]
        )
    assert set(caught.value.errors) == {"dlv_a"}


@pytest.mark.parametrize("bad", ["firstname", "location.stad", "traits.x"])
def test_field_names_are_checked_at_load(bad: str) -> None:
    with pytest.raises(SpecErrors) as caught:
        compiled(ENTRY.replace("    properties.intressen: some_tags", f"    {bad}: some_tags"))
    assert any(bad in str(e) for e in caught.value.errors)


# -- the fake's answer shapes --------------------------------------------------------------


def _records(*emails: str) -> list[dict[str, Any]]:
    return [{"epost": e, "namn": "Åsa Öberg", "some_tags": ["a"]} for e in emails]


async def test_created_and_updated_are_delivered(tmp_path: Path) -> None:
    fake = vendor_fakes.klaviyo()
    sent, done = await engine_requests(tmp_path, ENTRY, _records("new@x.se", "known@x.se"), fake)
    assert len(sent) == 2
    assert sorted(d.last_status or 0 for d in done) == [200, 201]
    assert all(d.state == DeliveryState.DELIVERED for d in done)


async def test_an_invalid_profile_is_dead_with_klaviyos_detail(tmp_path: Path) -> None:
    fake = vendor_fakes.klaviyo()
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se", "invalid@x.se"), fake)
    assert len(sent) == 2
    assert [d.state for d in done] == [DeliveryState.DELIVERED, DeliveryState.DEAD]
    assert done[1].last_error == (
        "HTTP 400: invalid: Invalid email address (/data/attributes/email)"
    )


async def test_rate_limit_holds_for_retry_after(tmp_path: Path) -> None:
    fake = vendor_fakes.klaviyo(retry_after="1")
    fake.plan = ["rate_limit"]
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert len(sent) == 2
    assert sent[1].at - sent[0].at >= 0.95


async def test_a_bad_key_is_permanent(tmp_path: Path) -> None:
    fake = vendor_fakes.klaviyo()
    fake.default = "bad_key"
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert len(sent) == 1
    assert done[0].state == DeliveryState.DEAD
    assert "not_authenticated: Missing or invalid private key." in (done[0].last_error or "")


async def test_server_errors_retry(tmp_path: Path) -> None:
    fake = vendor_fakes.klaviyo()
    fake.plan = ["server_error"]
    _, done = await engine_requests(tmp_path, LIST_ENTRY, _records("a@x.se", "b@x.se"), fake)
    assert all(d.state == DeliveryState.DELIVERED for d in done)
    assert fake.answered[0] == "server_error"


async def test_a_server_asked_wait_holds_for_an_outage_too(tmp_path: Path) -> None:
    # The engine reads Retry-After for every type, not only the types that read it
    # themselves: a 503 (no lane-wide hold, unlike a 429) waits the second it asks for.
    fake = vendor_fakes.klaviyo()
    fake.shapes["busy"] = lambda r: vendor_fakes.Answer(
        503, {"Retry-After": "1", "Content-Type": "text/plain"}, b"down for maintenance"
    )
    fake.plan = ["busy"]
    sent, done = await engine_requests(tmp_path, ENTRY, _records("a@x.se"), fake)
    assert done[0].state == DeliveryState.DELIVERED
    assert len(sent) == 2
    assert sent[1].at - sent[0].at >= 0.95
