"""End to end against a running ``gateway serve`` process, with real SigV4 signers."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from aws_requests_auth.aws_auth import AWSRequestsAuth
from requests_aws4auth import AWS4Auth

from gateway.store import open_store
from tests.support.gateway_proc import GatewayProcess
from tests.support.signing import sign

pytestmark = pytest.mark.e2e

DEMO = {"epost": "john.doe@example.com", "namn": "John Doe", "some_tags": ["TAG1", "TAG2"]}


@pytest.fixture
def gw(tmp_path: Path):
    g = GatewayProcess(tmp_path)
    yield g
    if g.proc is not None and g.proc.poll() is None:
        g.stop()


def _stored_ids(g: GatewayProcess) -> set[str]:
    """Every record id in the gateway's store, read directly from the database."""
    import asyncio
    import sqlite3

    async def run() -> None:  # opening applies recovery exactly as the server would
        store = open_store(f"sqlite:///{g.data_dir / 'gateway.db'}")
        await store.open()
        await store.close()

    asyncio.run(run())
    con = sqlite3.connect(g.data_dir / "gateway.db")
    try:
        return {row[0] for row in con.execute("SELECT id FROM records")}
    finally:
        con.close()


def _get_record(g: GatewayProcess, rid: str, key: str, secret: str) -> dict:
    url, headers = sign("GET", f"{g.url}/v1/records/{rid}", key=key, secret=secret)
    r = requests.get(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _body(group: str = "demo", data: dict | None = None) -> bytes:
    return json.dumps({"group_key": group, "data": data or DEMO}).encode()


def test_real_signers_are_accepted_and_records_stored(gw: GatewayProcess) -> None:
    gw.start()
    key, secret = gw.create_key("demo")
    url = gw.url + "/v1/records"
    ids: dict[str, str] = {}

    # botocore SigV4Auth
    signed_url, headers = sign(
        "POST",
        url,
        _body(data={"via": "botocore"}),
        {"Content-Type": "application/json"},
        key=key,
        secret=secret,
    )
    r = requests.post(signed_url, data=_body(data={"via": "botocore"}), headers=headers, timeout=10)
    assert r.status_code == 202, r.text
    ids["botocore"] = r.json()["id"]

    # requests-aws4auth
    auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
    r = requests.post(
        url,
        data=_body(data={"via": "aws4auth"}),
        auth=auth,
        timeout=10,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 202, r.text
    ids["aws4auth"] = r.json()["id"]

    # aws-requests-auth
    auth2 = AWSRequestsAuth(
        aws_access_key=key,
        aws_secret_access_key=secret,
        aws_host=f"127.0.0.1:{gw.port}",
        aws_region="us-east-1",
        aws_service="execute-api",
    )
    r = requests.post(
        url,
        data=_body(data={"via": "aws-requests-auth"}),
        auth=auth2,
        timeout=10,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 202, r.text
    ids["aws-requests-auth"] = r.json()["id"]

    # curl --aws-sigv4
    if shutil.which("curl") is None:
        pytest.fail("curl is required for this test (apt-get install curl)")
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--aws-sigv4",
            "aws:amz:us-east-1:execute-api",
            "--user",
            f"{key}:{secret}",
            "-H",
            "Content-Type: application/json",
            "-d",
            _body(data={"via": "curl"}).decode(),
            "-w",
            "\n%{http_code}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    body, status = out.rsplit("\n", 1)
    assert status == "202", out
    ids["curl"] = json.loads(body)["id"]

    # awscurl (defaults to service execute-api; region given explicitly)
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "awscurl"),
            "--service",
            "execute-api",
            "--region",
            "us-east-1",
            "--access_key",
            key,
            "--secret_key",
            secret,
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            _body(data={"via": "awscurl"}).decode(),
            url,
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    ids["awscurl"] = json.loads(out.stdout)["id"]

    # gateway send (botocore under the hood)
    out = gw.cli(
        "send",
        "--url",
        gw.url,
        "--group",
        "demo",
        "--data",
        '{"via": "send"}',
        "--access-key",
        key,
        "--secret-key",
        secret,
        "--json",
    )
    answer = json.loads(out.stdout)
    assert answer["status"] == 202
    ids["send"] = answer["body"]["id"]

    # Presigned (query auth) as botocore's SigV4QueryAuth makes it. That signer moves a body
    # into the query string (it serves query-protocol APIs), so it is used for reads.
    signed_url, headers = sign(
        "GET", f"{gw.url}/v1/records/{ids['curl']}", key=key, secret=secret, presign=True
    )
    assert "X-Amz-Signature=" in signed_url
    assert "Authorization" not in headers
    r = requests.get(signed_url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"via": "curl"}

    # Every record is stored, as sent, and readable by its key.
    for via, rid in ids.items():
        rec = _get_record(gw, rid, key, secret)
        assert rec["group_key"] == "demo"
        assert rec["data"] == {"via": via}, via
        # The demo mapping sends every record to its file integration: one delivery, which
        # the engine may already have made.
        [(name, state)] = [(d["integration"], d["state"]) for d in rec["deliveries"]]
        assert name == "local_file"
        assert state in ("pending", "delivered")
    assert set(ids.values()) <= _stored_ids(gw)


def test_bootstrap_key_prints_a_curl_command_that_works(gw: GatewayProcess) -> None:
    gw.start("--bootstrap-key", "demo")
    printed = gw.output()
    match = re.search(r"(curl --aws-sigv4 .*?/v1/records)", printed, re.S)
    assert match, printed
    command = match.group(1)
    out = subprocess.run(
        ["bash", "-c", command + " -sS -w '\n%{http_code}'"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    body, status = out.rsplit("\n", 1)
    assert status == "202", out
    assert json.loads(body)["status"] == "accepted"
    # The quick start's demo integration appends the mapped record to a local file.
    demo_file = gw.root / "var" / "demo-deliveries.ndjson"
    deadline = time.monotonic() + 10
    while not demo_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = demo_file.read_text().splitlines()
    assert json.loads(line) == {
        "email": "john.doe@example.com",
        "first_name": "John",
        "last_name": "Doe",
        "tags": ["tag1", "tag2"],
    }
    keys = json.loads(gw.cli("keys", "list", "--json").stdout)
    assert len(keys) == 1
    assert "secret" not in json.dumps(keys).lower()
    assert gw.stop() == 0
    # A second start on a store that has keys creates none.
    gw.start("--bootstrap-key", "demo")
    assert len(json.loads(gw.cli("keys", "list", "--json").stdout)) == 1
    assert shlex.split(command)[0] == "curl"


def test_revoked_key_is_refused_by_the_running_server_within_seconds(gw: GatewayProcess) -> None:
    gw.start()
    key, secret = gw.create_key("demo")
    auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
    headers = {"Content-Type": "application/json"}
    r = requests.post(gw.url + "/v1/records", data=_body(), auth=auth, headers=headers, timeout=10)
    assert r.status_code == 202
    gw.cli("keys", "revoke", key)
    deadline = time.monotonic() + 10
    while True:
        r = requests.post(
            gw.url + "/v1/records", data=_body(), auth=auth, headers=headers, timeout=10
        )
        if r.status_code != 202 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "ACCESS_KEY_REVOKED"
    listed = json.loads(gw.cli("keys", "list", "--json").stdout)
    assert listed[0]["revoked_at"] is not None
    assert gw.cli("keys", "revoke", "AKGWNOSUCHKEY0000000", check=False).returncode == 1


def _load(
    g: GatewayProcess,
    key: str,
    secret: str,
    stop: threading.Event,
    acked: list[str],
    errors: list[str],
) -> None:
    session = requests.Session()
    auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
    n = 0
    while not stop.is_set():
        n += 1
        try:
            r = session.post(
                g.url + "/v1/records",
                data=_body(data={"n": n}),
                auth=auth,
                headers={"Content-Type": "application/json"},
                timeout=5,
            )
        except requests.RequestException:
            return  # the server is gone
        if r.status_code == 202:
            acked.append(r.json()["id"])
        else:
            errors.append(f"{r.status_code} {r.text[:200]}")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_every_acknowledged_record_survives_the_server_stopping(
    gw: GatewayProcess, how: str
) -> None:
    gw.start()
    key, secret = gw.create_key("demo")
    stop = threading.Event()
    acked: list[str] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=_load, args=(gw, key, secret, stop, acked, errors))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    code = gw.stop(signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not errors, errors[:5]
    assert len(acked) >= 300
    if how == "SIGTERM":
        assert code == 0, gw.output()[-2000:]
    stored = _stored_ids(gw)
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged records lost"
    # And the restarted server serves them.
    gw.start()
    rec = _get_record(gw, acked[-1], key, secret)
    assert rec["id"] == acked[-1]


def test_request_log_lines_carry_ids_and_no_secrets_or_data(gw: GatewayProcess) -> None:
    gw.start()
    key, secret = gw.create_key("demo")
    auth = AWS4Auth(key, secret, "us-east-1", "execute-api")
    r = requests.post(
        gw.url + "/v1/records",
        data=_body(),
        auth=auth,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 202
    rid = r.json()["id"]
    requests.post(gw.url + "/v1/records", data=b"{}", timeout=10)  # unsigned: refused
    assert gw.stop() == 0
    lines = [json.loads(line) for line in gw.output().splitlines() if line.startswith("{")]
    requests_logged = [line for line in lines if line["event"] == "request"]
    ok = next(line for line in requests_logged if line.get("record_id") == rid)
    assert ok["status"] == 202
    assert ok["access_key_id"] == key
    assert ok["group"] == "demo"
    assert isinstance(ok["latency_ms"], int | float)
    assert 0 < ok["latency_ms"] < 10_000  # a durable commit takes time, a timeout would not
    refused = [line for line in requests_logged if line["status"] == 401]
    assert refused
    assert refused[0]["code"] == "MISSING_AUTHENTICATION_TOKEN"
    text = gw.output()
    assert secret not in text
    assert "john.doe@example.com" not in text
    assert "Signature=" not in text


def test_wrong_master_key_stops_the_server_with_a_clear_message(gw: GatewayProcess) -> None:
    gw.create_key("demo")  # encrypted under the key file made in the data directory
    gw.env["GATEWAY_MASTER_KEY"] = "a different master key entirely"
    with pytest.raises(RuntimeError, match="master key is not the one"):
        gw.start()
    assert gw.proc is not None
    assert gw.proc.returncode != 0
