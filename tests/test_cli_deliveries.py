"""``gateway deliveries list|replay`` and ``gateway status`` against a real gateway on a real
port (in process; the CLI runs in a thread, as it blocks)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import logs
from gateway.app import STORE
from gateway.cli import main
from gateway.delivery.engine import ENGINE
from gateway.store.base import DeliveryState
from tests.support.delivery_rig import FAST_RETRY, http_entry
from tests.support.gateway_proc import free_port
from tests.support.receiver import Answer, Receiver
from tests.test_admin_deliveries import TOKEN, add, make_client, wait_state

pytestmark = pytest.mark.e2e


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture(autouse=True)
def _env(monkeypatch) -> list[dict[str, Any]]:
    """A clean environment, and the server's log lines kept apart from what the CLI prints
    (both run in this process)."""
    for var in ("GATEWAY_URL", "GATEWAY_ADMIN_TOKEN", "GATEWAY_HOST", "GATEWAY_PORT"):
        monkeypatch.delenv(var, raising=False)
    lines: list[dict[str, Any]] = []
    monkeypatch.setattr(
        logs, "log", lambda event, level="info", **f: lines.append({"event": event, **f})
    )
    return lines


async def gateway(aiohttp_client, tmp_path: Path, monkeypatch, entries: list[str], **kw: Any):
    """A gateway on a real port; GATEWAY_URL and GATEWAY_ADMIN_TOKEN point the CLI at it."""
    client = await make_client(aiohttp_client, tmp_path, entries, **kw)
    monkeypatch.setenv("GATEWAY_URL", str(client.make_url("/")))
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    return client


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``gateway argv`` in a thread; (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def cli_json(capsys, *argv: str) -> Any:
    code, out, err = await cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_list_follows_cursors_to_the_end_or_the_limit(
    aiohttp_client, tmp_path: Path, monkeypatch, capsys
) -> None:
    client = await gateway(aiohttp_client, tmp_path, monkeypatch, [], delivery=False)
    made = sorted([(await add(client, ["crm"], n=i))[0] for i in range(12)])
    got = await cli_json(capsys, "deliveries", "list", "--page-size", "5", "--limit", "0")
    assert [d["id"] for d in got["deliveries"]] == made  # in order, none twice, none skipped
    assert got["next_cursor"] is None
    first = await cli_json(capsys, "deliveries", "list", "--page-size", "5", "--limit", "7")
    assert [d["id"] for d in first["deliveries"]] == made[:7]
    assert first["next_cursor"]
    rest = await cli_json(
        capsys, "deliveries", "list", "--page-size", "5", "--cursor", first["next_cursor"]
    )
    assert [d["id"] for d in rest["deliveries"]] == made[7:]
    # Filters reach the API.
    assert (await cli_json(capsys, "deliveries", "list", "--state", "dead"))["deliveries"] == []
    other = await cli_json(capsys, "deliveries", "list", "--group", "elsewhere")
    assert other["deliveries"] == []
    # The table.
    code, out, _ = await cli(capsys, "deliveries", "list", "--limit", "3", "--state", "pending")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATE",
        "GROUP",
        "INTEGRATION",
        "ATTEMPTS",
        "CREATED",
        "LAST",
        "ERROR",
    ]
    assert [line.split()[0] for line in lines[1:4]] == made[:3]
    assert lines[1].split()[1:5] == ["pending", "shop", "crm", "0"]
    assert "3 deliveries" in out
    assert "more match: go on with --cursor" in out
    code, out, _ = await cli(capsys, "deliveries", "list", "--state", "dead")
    assert (code, out.strip()) == (0, "no deliveries match")


async def test_replay_by_id_and_by_state(
    aiohttp_client, tmp_path: Path, monkeypatch, capsys, receiver: Receiver
) -> None:
    receiver.answer = lambda r: Answer(400)
    client = await gateway(
        aiohttp_client, tmp_path, monkeypatch, [http_entry("hook", receiver.url)]
    )
    store = client.app[STORE]
    ids = sorted([(await add(client, ["hook"], n=i))[0] for i in range(3)])
    await wait_state(store, ids, DeliveryState.DEAD)
    receiver.answer = lambda r: Answer(200)
    code, out, err = await cli(capsys, "deliveries", "replay", "--id", ids[1])
    assert code == 0, err
    assert out.splitlines() == [
        "replayed 1 delivery (pending again, due now):",
        f"  {ids[1]}",
    ]
    await wait_state(store, [ids[1]], DeliveryState.DELIVERED)
    dead = await cli_json(capsys, "deliveries", "list", "--state", "dead")
    assert [d["id"] for d in dead["deliveries"]] == [ids[0], ids[2]]
    answer = await cli_json(capsys, "deliveries", "replay", "--state", "dead", "--group", "shop")
    assert answer == {"replayed": 2, "ids": [ids[0], ids[2]]}
    await wait_state(store, ids, DeliveryState.DELIVERED)
    await receiver.wait_for(6)
    code, out, _ = await cli(capsys, "deliveries", "replay", "--state", "dead")
    assert (code, out.strip()) == (0, "nothing replayed: no dead or delivered delivery matched")


async def test_status_shows_every_lane(
    aiohttp_client, tmp_path: Path, monkeypatch, capsys, receiver: Receiver
) -> None:
    receiver.answer = lambda r: Answer(503, body=b"down for maintenance")
    breaking = http_entry(
        "hook", receiver.url, options=FAST_RETRY + ", breaker: {failures: 2, cooldown: 5m}"
    )
    client = await gateway(
        aiohttp_client,
        tmp_path,
        monkeypatch,
        [breaking, http_entry("archive", receiver.url + "/archive")],
    )
    await client.app[ENGINE].pause("shop", "archive")
    await add(client, ["hook", "archive"], n=1)
    await add(client, ["hook", "archive"], n=2)
    await add(client, ["gone"], group="oldgroup")
    deadline = time.monotonic() + 10
    while True:
        lanes = (await cli_json(capsys, "status"))["lanes"]
        by = {(x["group_key"], x["integration"]): x for x in lanes}
        if (
            by[("shop", "hook")]["breaker"] == "open"
            and by[("oldgroup", "gone")]["backlog"]["dead"]
        ):
            break
        assert time.monotonic() < deadline, by
        await asyncio.sleep(0.05)
    code, out, err = await cli(capsys, "status")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == [
        "GROUP",
        "INTEGRATION",
        "BREAKER",
        "PAUSED",
        "BACKLOG",
        "OLDEST",
        "DEAD",
        "LAST",
        "ERROR",
    ]
    table = {tuple(r.split()[:2]): r for r in rows}
    hook = table[("shop", "hook")].split()
    assert hook[2] == "open"
    assert hook[3].startswith("(")
    assert hook[3].endswith("s)")
    assert hook[4:6] == ["no", "2"]
    assert hook[6].endswith("s")  # the oldest pending one's age
    assert hook[7] == "0"
    assert " ".join(hook[8:]).startswith("HTTP 503")
    archive = table[("shop", "archive")].split()
    assert archive[2:7] == ["closed", "yes", "2", archive[5], "0"]
    assert archive[7] == "-"
    gone = table[("oldgroup", "gone")]
    assert "(not in mapping)" in gone
    assert "no mapping file" in gone


async def test_errors_and_exit_codes(aiohttp_client, tmp_path: Path, monkeypatch, capsys) -> None:
    client = await gateway(aiohttp_client, tmp_path, monkeypatch, [], delivery=False)
    # An API error: code and message, exit 1.
    code, out, err = await cli(capsys, "status", "--admin-token", "wrong")
    assert (code, out) == (1, "")
    assert err.strip() == "error: INVALID_ADMIN_TOKEN (HTTP 401): The admin token is not valid"
    code, _, err = await cli(capsys, "deliveries", "list", "--created-after", "yesterday")
    assert code == 1
    assert err.startswith("error: INVALID_PARAMETER (HTTP 400): created_after:")
    assert "  created_after: " in err
    # No token: a usage error.
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN")
    code, _, err = await cli(capsys, "status")
    assert code == 2
    assert "no admin token: set GATEWAY_ADMIN_TOKEN" in err
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    # The URL from GATEWAY_HOST and GATEWAY_PORT when GATEWAY_URL is unset.
    monkeypatch.delenv("GATEWAY_URL")
    monkeypatch.setenv("GATEWAY_PORT", str(client.port))
    assert (await cli_json(capsys, "status"))["lanes"] == []
    # Nobody listening: exit 2.
    dead_url = f"http://127.0.0.1:{free_port()}"
    code, _, err = await cli(capsys, "deliveries", "list", "--url", dead_url)
    assert code == 2
    assert err.startswith(f"error: cannot reach the gateway at {dead_url}:")
    monkeypatch.setenv("GATEWAY_URL", "not a url")
    code, _, err = await cli(capsys, "status")
    assert code == 2
    assert "the gateway's URL must be http(s)://HOST:PORT, not 'not a url'" in err
    monkeypatch.setenv("GATEWAY_URL", str(client.make_url("/")))
    # Replay must be told what to replay.
    code, _, err = await cli(capsys, "deliveries", "replay")
    assert code == 2
    assert "say what to replay" in err
    code, _, err = await cli(capsys, "deliveries", "replay", "--id", "dlv_x", "--group", "g")
    assert code == 2
    assert "not both" in err
    with pytest.raises(SystemExit) as exc:
        await cli(capsys, "deliveries", "replay", "--state", "pending")
    assert exc.value.code == 2
    # A wrong base path: the 404 envelope, exit 1.
    code, _, err = await cli(capsys, "status", "--url", str(client.make_url("/nowhere")))
    assert code == 1
    assert "NOT_FOUND (HTTP 404)" in err


class _Pages:
    """An AdminClient whose list endpoint answers from a script of pages."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        from gateway.cli.adminclient import AdminClient

        self.asked: list[str] = []
        self.answers = answers
        self.client = AdminClient.__new__(AdminClient)
        self.client.url = "http://gw.test"
        self.client.call = self.call  # type: ignore[method-assign]

    def call(self, method: str, path: str, *_: Any, **__: Any) -> Any:
        self.asked.append(path)
        return self.answers[len(self.asked) - 1]


def test_pages_follow_the_cursor_up_to_the_limit() -> None:
    fake = _Pages(
        [
            {"links": [{"n": 1}, {"n": 2}], "next_cursor": "c1"},
            {"links": [{"n": 3}], "next_cursor": "c2"},
        ]
    )
    items, cursor = fake.client.pages(
        "/admin/v1/links", {"group": "g", "key": None}, "links", cursor=None, limit=3, page_size=2
    )
    assert [i["n"] for i in items] == [1, 2, 3]
    assert cursor == "c2"  # where a later call would go on
    # The second page asks only for what the limit leaves, from the first page's cursor.
    assert fake.asked == [
        "/admin/v1/links?group=g&limit=2",
        "/admin/v1/links?group=g&cursor=c1&limit=1",
    ]


@pytest.mark.parametrize(
    "second", [{"links": [{"n": 2}], "next_cursor": "c1"}, {"links": [], "next_cursor": "c2"}]
)
def test_pages_refuse_a_cursor_that_does_not_move_on(second: dict[str, Any]) -> None:
    from gateway.cli.adminclient import CliFailure

    fake = _Pages([{"links": [{"n": 1}], "next_cursor": "c1"}, second])
    with pytest.raises(CliFailure) as failure:
        fake.client.pages("/admin/v1/links", {}, "links", cursor=None, limit=0)
    assert failure.value.code == 1
    assert "http://gw.test gave a cursor that does not move on" in failure.value.lines[0]
