"""The producer API fuzzed from its own OpenAPI document (Schemathesis) against a real
``gateway serve``, every request SigV4-signed by botocore's SigV4Auth through Schemathesis's auth
hook (``schema.auth.set_from_requests``), so generated requests get past authentication and
reach validation, the store and the answers.

Checks on every answer: no 5xx (``not_a_server_error``), the status is one the document lists
for the operation, the content type is the documented one, and the body validates against the
documented schema. Examples are bounded and derandomized (Hypothesis's seed is derived from the
test), so CI runs the same cases each time in a few seconds.

The admin API (``/admin/v1``) has no OpenAPI document yet; when it gets one it joins here with
a bearer token instead of the signer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.botocore_auth import BotocoreSigV4
from tests.support.gateway_proc import REPO, GatewayProcess

pytestmark = pytest.mark.e2e

SCHEMA = schemathesis.openapi.from_path(REPO / "gateway" / "openapi.json")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Two groups the key may send to: one with a live mapping, one it may not (403 paths).
GROUPS = ("demo", "fuzz")


class _Gateway:
    """The gateway the schema's cases go to; set by the module fixture."""

    url = ""
    auth: BotocoreSigV4 | None = None
    acked: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root: Path = tmp_path_factory.mktemp("schemathesis")
    gw = GatewayProcess(root, groups=GROUPS, GATEWAY_DELIVERY="false")
    gw.start()
    key, secret = gw.create_key(*GROUPS)
    _Gateway.url = gw.url
    _Gateway.auth = BotocoreSigV4(key, secret)
    SCHEMA.auth.set_from_requests(_Gateway.auth)
    try:
        yield gw
    finally:
        code = gw.stop()
        output = gw.output()
        # A crash or a logged internal error is a failure even if every answer looked fine.
        assert code == 0, output[-3000:]
        assert '"internal_error"' not in output, output[-3000:]


@SCHEMA.hook
def map_body(context: Any, body: Any) -> Any:
    """Point some generated records at a live group, so accepted paths (202/200) and the
    record lookup are exercised too, not only the refusals of unknown groups."""
    if isinstance(body, dict) and isinstance(body.get("group_key"), str):
        body["group_key"] = GROUPS[len(body["group_key"]) % 3 % 2]
    if isinstance(body, dict) and isinstance(body.get("records"), list):
        for i, item in enumerate(body["records"]):
            if isinstance(item, dict) and isinstance(item.get("group_key"), str):
                item["group_key"] = GROUPS[i % 2]
    return body


@SCHEMA.parametrize()
@settings(
    max_examples=50,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_as_documented(case: schemathesis.Case[Any]) -> None:
    response = case.call_and_validate(base_url=_Gateway.url, checks=CHECKS, timeout=10)
    if case.path == "/v1/records" and response.status_code == 202:
        _Gateway.acked.append(response.json()["id"])


def test_records_accepted_during_fuzzing_can_be_read_back(gateway: GatewayProcess) -> None:
    # Runs after the fuzzing above (module order): what it was told was stored, is.
    import requests

    assert _Gateway.acked, "fuzzing never got a record accepted: the map_body hook is broken"
    for rid in _Gateway.acked[:20]:
        r = requests.get(f"{gateway.url}/v1/records/{rid}", auth=_Gateway.auth, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["id"] == rid
