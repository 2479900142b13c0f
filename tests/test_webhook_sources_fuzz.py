"""Generated events (hypothesis) through a real ``gateway serve``'s webhook endpoint: every
answer is 202 or a documented refusal in the envelope, never a server error, and what is
stored is the event flattened by the documented rules (checked against a plain re-statement
of them here)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests_aws4auth import AWS4Auth

from tests.support.gateway_proc import GatewayProcess

pytestmark = pytest.mark.e2e

TOKEN = "fuzz-token-0123456789"
SOURCE = """\
group_key: fuzz
verify: {scheme: bearer, token: "${FUZZ_TOKEN}"}
events: {accept: [thing.happened], data: ""}
"""


class G:
    gw: GatewayProcess
    auth: AWS4Auth
    statuses: list[int] = []  # every answer of the generated events, in order


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(
        tmp_path_factory.mktemp("fuzz"), groups=("fuzz",), FUZZ_TOKEN=TOKEN, GATEWAY_DELIVERY="0"
    )
    (gw.mappings / "sources").mkdir()
    (gw.mappings / "sources" / "fuzz.yaml").write_text(SOURCE)
    gw.start()
    key, secret = gw.create_key("fuzz")
    G.gw, G.auth = gw, AWS4Auth(key, secret, "us-east-1", "execute-api")
    try:
        yield gw
    finally:
        assert gw.stop() == 0
        assert '"internal_error"' not in gw.output()


class AsJson:
    """An expected JSON text: compared parsed, since number spellings differ between
    serialisers (1e-07 / 1e-7)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and json.loads(other) == self.value

    def __repr__(self) -> str:
        return f"AsJson({self.value!r})"


def expected(obj: dict[str, Any], prefix: str = "", depth: int = 1) -> dict[str, Any]:
    """docs/webhook-sources.md's table, stated plainly (keys here hold no '.')."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            if depth >= 8:
                out[name] = AsJson(v)
            else:
                out.update(expected(v, name, depth + 1))
        elif isinstance(v, list) and any(isinstance(x, dict | list) for x in v):
            out[name] = AsJson(v)
        else:
            out[name] = v
    return out


keys = st.text(st.characters(codec="utf-8", exclude_characters="."), min_size=1, max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=30,
)
events = st.dictionaries(keys.filter(lambda k: k not in ("type", "id")), values, max_size=8)


@settings(
    max_examples=80,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(event=events, kind=st.sampled_from(["thing.happened", "other"]))
def test_generated_events(gateway: GatewayProcess, event: dict[str, Any], kind: str) -> None:
    body = {**event, "type": kind, "id": str(uuid.uuid4())}  # a new event every time
    raw = json.dumps(body, ensure_ascii=False).encode()
    r = requests.post(
        f"{gateway.url}/v1/webhooks/fuzz",
        data=raw,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert r.status_code < 500, r.text
    G.statuses.append(r.status_code)
    if r.status_code != 202:
        err = r.json()["error"]
        assert r.status_code in (400, 422), r.text
        if kind != "thing.happened":
            assert err["code"] == "EVENT_TYPE_NOT_ACCEPTED"
        return
    assert kind == "thing.happened"
    got = requests.get(f"{gateway.url}/v1/records/{r.json()['id']}", auth=G.auth, timeout=10)
    assert got.status_code == 200, got.text
    data = got.json()["data"]
    want = expected(body)
    want["event_type"] = kind
    want["event_id"] = body["id"]
    assert sorted(data) == sorted(want)
    for name, value in want.items():
        assert value == data[name], name


def test_generation_reached_both_outcomes(gateway: GatewayProcess) -> None:
    # Runs after the test above (module order): it must have stored events and refused some.
    assert G.statuses.count(202) >= 10, G.statuses
    assert 422 in G.statuses
