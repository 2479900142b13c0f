"""The management API fuzzed from its OpenAPI document (Schemathesis) against a real
``gateway serve`` with the admin bearer token.

Checks on every answer: no 5xx, a documented status, the documented content type, and a body
that validates against the documented schema. Path parameters are often pointed at a real
group and key, so the cases get past 404 into validation, If-Match and the writes. Bounded and
derandomized: the same cases every run, in well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.gateway_proc import REPO, GatewayProcess

pytestmark = pytest.mark.e2e

TOKEN = "fuzz-admin-token-0123456789"
SCHEMA = schemathesis.openapi.from_path(REPO / "gateway" / "admin" / "openapi.json")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class _Gateway:
    url = ""
    key_id = ""


@pytest.fixture(scope="module", autouse=True)
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root: Path = tmp_path_factory.mktemp("admin-schemathesis")
    gw = GatewayProcess(
        root, groups=("demo", "fuzz"), GATEWAY_DELIVERY="false", GATEWAY_ADMIN_TOKEN=TOKEN
    )
    gw.start()
    _Gateway.url = gw.url + "/admin/v1"
    _Gateway.key_id, _ = gw.create_key("fuzz")
    try:
        yield gw
    finally:
        code = gw.stop()
        output = gw.output()
        assert code == 0, output[-3000:]
        assert '"internal_error"' not in output, output[-3000:]


@SCHEMA.hook
def map_path_parameters(context: Any, path_parameters: Any) -> Any:
    """Half the cases on the real group and key, the rest as generated (404 paths)."""
    if not isinstance(path_parameters, dict):
        return path_parameters
    if isinstance(path_parameters.get("group"), str) and len(path_parameters["group"]) % 2 == 0:
        path_parameters["group"] = "fuzz"
    if isinstance(path_parameters.get("key_id"), str) and len(path_parameters["key_id"]) % 2 == 0:
        path_parameters["key_id"] = _Gateway.key_id
    return path_parameters


@SCHEMA.parametrize()
@settings(
    max_examples=10,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_admin_api_answers_as_documented(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(
        base_url=_Gateway.url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=CHECKS,
        timeout=10,
    )


def test_every_file_the_fuzzing_wrote_passes_check(gateway: GatewayProcess) -> None:
    # Runs after the fuzzing above: writes are checked before they happen, so whatever the
    # fuzzer created or changed, every mapping file passes `gateway check`, and no temporary
    # file of an atomic write is left behind.
    r = requests.get(
        f"{_Gateway.url}/groups", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert r.status_code == 200, r.text
    result = gateway.cli("check", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [p.name for p in gateway.mappings.iterdir() if p.name.endswith(".tmp")]
