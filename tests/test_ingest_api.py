"""The producer API in process: acceptance, every refusal (and that it stores nothing)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import STORE, create_app
from gateway.auth.keys import SecretBox, create_key, load_master_key
from gateway.config import load_settings
from tests.support.signing import sign
from tests.support.store_rows import count_records

DEMO = {"epost": "john.doe@example.com", "namn": "John Doe", "some_tags": ["TAG1", "TAG2"]}
JSON = {"Content-Type": "application/json"}


class Api:
    """A test client plus a signed-request helper."""

    def __init__(self, client: TestClient, data_dir: Path) -> None:
        self.client = client
        self.app = client.server.app
        self.store = self.app[STORE]
        self.box = SecretBox(load_master_key(data_dir, None))

    async def key(self, *groups: str, **kw: Any) -> tuple[str, str]:
        k = await create_key(self.store, self.box, list(groups), **kw)
        return k.access_key_id, k.secret_access_key

    async def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        key: str,
        secret: str,
        tamper: Any = None,
        **sign_kw: Any,
    ):
        url = str(self.client.make_url(path))
        signed_url, signed = sign(method, url, body, headers, key=key, secret=secret, **sign_kw)
        if tamper:
            body, signed = tamper(body, signed)
        target = signed_url[len(str(self.client.make_url(""))) :]
        return await self.client.request(method, target, data=body, headers=signed)

    async def count(self) -> int:
        return await count_records(self.store)


def record(group: str = "demo", data: Any = None) -> bytes:
    return json.dumps({"group_key": group, "data": DEMO if data is None else data}).encode()


@pytest.fixture
async def api(aiohttp_client, tmp_path: Path) -> Api:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for g in ("demo", "other"):
        (mappings / f"{g}.yaml").write_text(f"group_key: {g}\nintegrations: []\n")
    settings = load_settings(
        {
            "data_dir": tmp_path / "data",
            "mappings": mappings,
            "max_body_bytes": 4096,
            "max_batch_bytes": 16384,
            "max_batch_records": 5,
            "max_attributes": 10,
            "key_cache_ttl": 0.05,
        },
        environ={},
    )
    client = await aiohttp_client(create_app(settings))
    return Api(client, tmp_path / "data")


async def error_of(resp) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


async def test_accepts_a_signed_record_and_stores_it(api: Api) -> None:
    key, secret = await api.key("demo")
    r = await api.send("POST", "/v1/records", record(), JSON, key=key, secret=secret)
    assert r.status == 202
    body = await r.json()
    assert body["status"] == "accepted"
    assert body["id"].startswith("rec_")
    assert body["integrations"] == []
    assert r.headers["X-RateLimit-Limit"] == "2000"
    stored = await api.store.get_record(body["id"])
    assert stored is not None
    assert json.loads(stored.data_json) == DEMO
    assert stored.access_key_id == key
    r = await api.send("GET", f"/v1/records/{body['id']}", key=key, secret=secret)
    assert r.status == 200
    view = await r.json()
    assert view["data"] == DEMO
    assert view["group_key"] == "demo"
    assert view["deliveries"] == []
    assert view["received_at"].endswith("Z")


async def test_record_of_another_group_is_not_found(api: Api) -> None:
    key, secret = await api.key("demo")
    other_key, other_secret = await api.key("other")
    r = await api.send("POST", "/v1/records", record(), JSON, key=key, secret=secret)
    rid = (await r.json())["id"]
    r = await api.send("GET", f"/v1/records/{rid}", key=other_key, secret=other_secret)
    assert r.status == 404
    assert (await error_of(r))["code"] == "RECORD_NOT_FOUND"
    r = await api.send("GET", "/v1/records/rec_nope", key=key, secret=secret)
    assert r.status == 404


def _replace_header(name: str, value: str):
    def tamper(body: bytes, headers: dict[str, str]):
        headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
        headers[name] = value
        return body, headers

    return tamper


def _mangle_auth(fn):
    def tamper(body: bytes, headers: dict[str, str]):
        headers = dict(headers)
        headers["Authorization"] = fn(headers["Authorization"])
        return body, headers

    return tamper


def _today_to_yesterday(auth: str) -> str:
    now = dt.datetime.now(dt.UTC)  # at signing time: the suite may run across midnight
    return auth.replace(f"/{now:%Y%m%d}/", f"/{now - dt.timedelta(days=1):%Y%m%d}/")


REFUSALS: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "garbled authorization",
        {"tamper": _mangle_auth(lambda a: "AWS4-HMAC-SHA256 garbage")},
        401,
        "INCOMPLETE_SIGNATURE",
    ),
    (
        "wrong algorithm",
        {"tamper": _mangle_auth(lambda a: a.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"))},
        401,
        "UNSUPPORTED_ALGORITHM",
    ),
    ("unknown key", {"key": "AKGWUNKNOWNKEY000000"}, 401, "INVALID_CLIENT_TOKEN_ID"),
    ("wrong secret", {"secret": "x" * 40}, 401, "SIGNATURE_DOES_NOT_MATCH"),
    (
        "body changed after signing",
        {"tamper": lambda b, h: (b.replace(b"John", b"Jane"), h)},
        401,
        "SIGNATURE_DOES_NOT_MATCH",
    ),
    (
        "signed header changed",
        {"headers": {"X-Custom": "a"}, "tamper": _replace_header("X-Custom", "b")},
        401,
        "SIGNATURE_DOES_NOT_MATCH",
    ),
    (
        "unsigned x-amz header",
        {"tamper": _replace_header("X-Amz-Foo", "bar")},
        401,
        "HEADERS_NOT_SIGNED",
    ),
    # Offsets from the moment of signing (a time fixed at import goes stale in a long run).
    ("expired", {"when": dt.timedelta(minutes=-6)}, 401, "REQUEST_EXPIRED"),
    ("future", {"when": dt.timedelta(minutes=6)}, 401, "REQUEST_NOT_YET_VALID"),
    ("wrong region", {"region": "eu-west-1"}, 401, "INVALID_CREDENTIAL_SCOPE"),
    ("wrong service", {"service": "s3"}, 401, "INVALID_CREDENTIAL_SCOPE"),
    (
        "wrong scope date",
        {"tamper": _mangle_auth(_today_to_yesterday)},
        401,
        "INVALID_CREDENTIAL_SCOPE",
    ),
    ("group not allowed", {"body": record("other")}, 403, "GROUP_NOT_ALLOWED"),
    ("nested object", {"body": record(data={"address": {"street": "x"}})}, 422, "INVALID_DATA"),
    ("list holding an object", {"body": record(data={"tags": [{"a": 1}]})}, 422, "INVALID_DATA"),
    ("malformed json", {"body": b'{"group_key": "demo", "data": '}, 400, "MALFORMED_JSON"),
    (
        "wrong content type",
        {"headers": {"Content-Type": "text/plain"}},
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    ),
    ("oversized body", {"body": record(data={"x": "y" * 5000})}, 413, "PAYLOAD_TOO_LARGE"),
    (
        "too many attributes",
        {"body": record(data={f"k{i}": i for i in range(11)})},
        422,
        "INVALID_DATA",
    ),
]


@pytest.mark.parametrize(
    ("case", "change", "status", "code"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
async def test_refusals_store_nothing(
    api: Api, case: str, change: dict, status: int, code: str
) -> None:
    key, secret = await api.key("demo")
    kw: dict[str, Any] = {"key": key, "secret": secret}
    body = change.pop("body", record())
    headers = {**JSON, **change.pop("headers", {})}
    if "key" in change:
        kw["key"] = change.pop("key")
    kw.update(change)
    if isinstance(kw.get("when"), dt.timedelta):
        kw["when"] = dt.datetime.now(dt.UTC) + kw["when"]
    r = await api.send("POST", "/v1/records", body, headers, **kw)
    err = await error_of(r)
    assert (r.status, err["code"]) == (status, code), err
    assert err["message"]
    assert await api.count() == 0
    if code == "SIGNATURE_DOES_NOT_MATCH":
        assert "AWS4-HMAC-SHA256" in err["string_to_sign"]
        assert err["canonical_request"].startswith("POST\n/v1/records\n")
        assert secret not in json.dumps(err)
    if code == "INVALID_DATA" and case != "too many attributes":
        assert err["errors"][0]["field"].startswith("data.")


async def test_unknown_group_is_422_even_when_the_key_names_it(api: Api) -> None:
    key, secret = await api.key("ghost")
    r = await api.send("POST", "/v1/records", record("ghost"), JSON, key=key, secret=secret)
    assert r.status == 422
    assert (await error_of(r))["code"] == "UNKNOWN_GROUP"
    assert await api.count() == 0


async def test_missing_and_revoked_keys(api: Api) -> None:
    r = await api.client.post("/v1/records", data=record(), headers=JSON)
    assert r.status == 401
    assert (await error_of(r))["code"] == "MISSING_AUTHENTICATION_TOKEN"
    key, secret = await api.key("demo")
    import time

    assert await api.store.revoke_access_key(key, time.time())
    await asyncio.sleep(0.1)  # past the key cache TTL
    r = await api.send("POST", "/v1/records", record(), JSON, key=key, secret=secret)
    assert r.status == 401
    assert (await error_of(r))["code"] == "ACCESS_KEY_REVOKED"
    assert await api.count() == 0


async def test_aiohttp_errors_use_the_envelope(api: Api) -> None:
    r = await api.client.get("/nope")
    assert r.status == 404
    assert (await error_of(r))["code"] == "NOT_FOUND"
    r = await api.client.put("/v1/records")
    assert r.status == 405
    assert (await error_of(r))["code"] == "METHOD_NOT_ALLOWED"
    assert "POST" in r.headers["Allow"]


async def test_batch_stores_valid_items_and_reports_each(api: Api) -> None:
    key, secret = await api.key("demo")
    items = [
        {"group_key": "demo", "data": {"n": 1}},
        {"group_key": "demo", "data": {"bad": {"nested": True}}},
        {"group_key": "other", "data": {"n": 3}},
        {"group_key": "demo", "data": {"n": 4}},
        "not a record",
    ]
    body = json.dumps({"records": items}).encode()
    r = await api.send("POST", "/v1/records/batch", body, JSON, key=key, secret=secret)
    assert r.status == 200
    answer = await r.json()
    assert (answer["accepted"], answer["rejected"]) == (2, 3)
    res = answer["results"]
    assert [x["status"] for x in res] == [
        "accepted",
        "rejected",
        "rejected",
        "accepted",
        "rejected",
    ]
    assert res[1]["error"]["code"] == "INVALID_DATA"
    assert res[1]["error"]["errors"][0]["field"] == "data.bad"
    assert (res[2]["error"]["code"], res[2]["http_status"]) == ("GROUP_NOT_ALLOWED", 403)
    assert await api.count() == 2
    for x in (res[0], res[3]):
        assert await api.store.get_record(x["id"]) is not None


async def test_batch_limits(api: Api) -> None:
    key, secret = await api.key("demo")
    six = json.dumps({"records": [{"group_key": "demo", "data": {}}] * 6}).encode()
    r = await api.send("POST", "/v1/records/batch", six, JSON, key=key, secret=secret)
    assert (r.status, (await error_of(r))["code"]) == (413, "BATCH_TOO_LARGE")
    big = json.dumps({"records": [{"group_key": "demo", "data": {"x": "y" * 9000}}] * 2}).encode()
    r = await api.send("POST", "/v1/records/batch", big, JSON, key=key, secret=secret)
    assert (r.status, (await error_of(r))["code"]) == (413, "PAYLOAD_TOO_LARGE")
    r = await api.send("POST", "/v1/records/batch", b'{"records": 1}', JSON, key=key, secret=secret)
    assert (r.status, (await error_of(r))["code"]) == (400, "INVALID_REQUEST")
    assert await api.count() == 0


async def test_idempotency_key_replays_and_conflicts(api: Api) -> None:
    key, secret = await api.key("demo")
    h = {**JSON, "Idempotency-Key": "order-1"}
    r1 = await api.send("POST", "/v1/records", record(), h, key=key, secret=secret)
    r2 = await api.send("POST", "/v1/records", record(), h, key=key, secret=secret)
    assert (r1.status, r2.status) == (202, 202)
    assert await r1.json() == await r2.json()
    assert r2.headers["Idempotent-Replayed"] == "true"
    assert await api.count() == 1
    r3 = await api.send("POST", "/v1/records", record(data={"other": 1}), h, key=key, secret=secret)
    assert r3.status == 409
    assert (await error_of(r3))["code"] == "IDEMPOTENCY_CONFLICT"
    # Keys are per access key: another key may use the same Idempotency-Key.
    key2, secret2 = await api.key("demo")
    r4 = await api.send("POST", "/v1/records", record(), h, key=key2, secret=secret2)
    assert r4.status == 202
    assert (await r4.json())["id"] != (await r1.json())["id"]
    assert await api.count() == 2


async def test_concurrent_same_idempotency_key_stores_once(api: Api) -> None:
    key, secret = await api.key("demo")
    h = {**JSON, "Idempotency-Key": "burst"}
    rs = await asyncio.gather(
        *[api.send("POST", "/v1/records", record(), h, key=key, secret=secret) for _ in range(10)]
    )
    ids = {(await r.json())["id"] for r in rs}
    assert [r.status for r in rs] == [202] * 10
    assert len(ids) == 1
    assert await api.count() == 1


async def test_exact_replay_of_a_signed_request_is_not_stored_twice(api: Api) -> None:
    key, secret = await api.key("demo")
    url = str(api.client.make_url("/v1/records"))
    _, headers = sign("POST", url, record(), JSON, key=key, secret=secret)
    r1 = await api.client.post("/v1/records", data=record(), headers=headers)
    r2 = await api.client.post("/v1/records", data=record(), headers=headers)
    assert (r1.status, r2.status) == (202, 202)
    assert (await r1.json())["id"] == (await r2.json())["id"]
    assert r2.headers["Idempotent-Replayed"] == "true"
    assert await api.count() == 1


async def test_rate_limit_answers_429_with_headers(api: Api) -> None:
    key, secret = await api.key("demo", rate_limit=0.5, rate_burst=2)
    statuses = []
    for i in range(3):
        r = await api.send(
            "POST", "/v1/records", record(data={"i": i}), JSON, key=key, secret=secret
        )
        statuses.append(r.status)
    assert statuses == [202, 202, 429]
    err = await error_of(r)
    assert err["code"] == "RATE_LIMITED"
    assert r.headers["Retry-After"] == "2"
    assert r.headers["X-RateLimit-Limit"] == "2"
    assert r.headers["X-RateLimit-Remaining"] == "0"
    assert int(r.headers["X-RateLimit-Reset"]) >= 2
    assert await api.count() == 2


async def test_health_readiness_and_openapi(api: Api) -> None:
    r = await api.client.get("/healthz")
    assert r.status == 200
    r = await api.client.get("/readyz")
    assert r.status == 200
    body = await r.json()
    assert body["checks"]["store"]["status"] == "ok"
    assert body["checks"]["mappings"]["detail"] == "2 groups"
    r = await api.client.get("/openapi.json")
    assert r.status == 200
    assert (await r.json())["openapi"].startswith("3.1")


async def test_store_falling_behind_sheds_load_with_503(api: Api, tmp_path: Path) -> None:
    """While another connection holds SQLite's write lock, commits cannot finish; once the
    queue of uncommitted records is full, ingest answers 503 instead of queueing more."""
    import sqlite3

    key, secret = await api.key("demo")
    five = json.dumps({"records": [{"group_key": "demo", "data": {"i": i}} for i in range(5)]})
    api.store.max_pending_writes = 5
    blocker = sqlite3.connect(tmp_path / "data" / "gateway.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        first = asyncio.create_task(
            api.send("POST", "/v1/records/batch", five.encode(), JSON, key=key, secret=secret)
        )
        for _ in range(100):
            await asyncio.sleep(0.01)
            if api.store.pending_writes() == 5:
                break
        assert api.store.pending_writes() == 5
        r = await api.send("POST", "/v1/records", record(), JSON, key=key, secret=secret)
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"
        assert (await error_of(r))["code"] == "OVERLOADED"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    r1 = await first
    assert r1.status == 200
    assert (await r1.json())["accepted"] == 5
    assert await api.count() == 5


async def test_readyz_reports_a_missing_mappings_directory(api: Api, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(tmp_path / "mappings")
    r = await api.client.get("/readyz")
    assert r.status == 503
    body = await r.json()
    assert body["checks"]["mappings"]["status"] == "failing"
    assert body["checks"]["store"]["status"] == "ok"


async def test_group_whose_only_mapping_file_is_broken_is_refused_saying_so(
    api: Api, tmp_path: Path
) -> None:
    from gateway.app import MAPPINGS

    (tmp_path / "mappings" / "broken.yaml").write_text("group_key: broken\nintegrations: 3\n")
    api.app[MAPPINGS].reload()
    key, secret = await api.key("broken")
    r = await api.send("POST", "/v1/records", record("broken"), JSON, key=key, secret=secret)
    err = await error_of(r)
    assert (r.status, err["code"]) == (422, "UNKNOWN_GROUP")
    assert "mapping file has errors" in err["message"]
    r = await api.client.get("/readyz")
    assert any("broken.yaml" in e for e in (await r.json())["checks"]["mappings"]["errors"])
