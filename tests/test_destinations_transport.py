"""The destination policy in the shared transport, against a real local receiver: names are
checked when they resolve (a re-resolution to a denied address is refused: DNS rebinding),
address literals before connecting, and pooled keep-alive connections before reuse."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.integrations import destinations
from gateway.integrations.base import OutboundRequest
from gateway.integrations.destinations import DestinationRefused, PolicyResolver
from gateway.integrations.transport import Timeouts, Transport
from tests.support.receiver import Receiver

pytestmark = pytest.mark.e2e


class _Options:
    def __init__(self, allow: list[str] | None = None, deny: list[str] | None = None) -> None:
        self.allow = allow or []
        self.deny = deny or []


class _Entry:
    def __init__(self, **destinations: list[str]) -> None:
        self.options = type("O", (), {"destinations": _Options(**destinations)})()


def _post(url: str) -> OutboundRequest:
    return OutboundRequest("POST", url, {"Content-Type": "application/json"}, b"{}", ["d1"])


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def transport():
    t = Transport()
    yield t
    await t.close()


async def test_literal_metadata_address_is_refused_before_connecting(transport) -> None:
    destinations.use(_Entry())
    with pytest.raises(DestinationRefused) as err:
        await transport.send(_post("http://169.254.169.254/latest/meta-data/"), Timeouts())
    assert err.value.permanent
    assert "169.254.169.254" in str(err.value)
    with pytest.raises(DestinationRefused):  # IPv4-mapped IPv6 is the same address
        await transport.send(_post("http://[::ffff:169.254.169.254]/"), Timeouts())


async def test_name_resolving_to_a_denied_address_is_refused(receiver, transport) -> None:
    destinations.use(_Entry(deny=["loopback"]))
    with pytest.raises(DestinationRefused) as err:
        await transport.send(_post(f"http://localhost:{receiver.port}/x"), Timeouts())
    assert "localhost" in str(err.value)
    assert "loopback" not in str(err.value).split(":")[0]
    assert receiver.seen == []
    destinations.use(_Entry())  # the same name is fine where loopback is allowed
    resp = await transport.send(_post(f"http://localhost:{receiver.port}/x"), Timeouts())
    assert resp.status == 200


async def test_pooled_connection_is_checked_before_reuse(receiver, transport) -> None:
    url = f"http://127.0.0.1:{receiver.port}/x"
    destinations.use(_Entry())
    assert (await transport.send(_post(url), Timeouts())).status == 200
    # The keep-alive connection is still in the pool; a stricter entry may not ride it.
    destinations.use(_Entry(deny=["127.0.0.1/32"]))
    with pytest.raises(DestinationRefused):
        await transport.send(_post(url), Timeouts())
    assert len(receiver.seen) == 1


class _RebindingDNS(AbstractResolver):
    """An attacker's DNS: the first answer is harmless, later ones point at metadata."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.calls = 0

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
        addr = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return [
            {
                "hostname": host,
                "host": addr,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


async def test_rebinding_name_is_checked_at_each_resolution() -> None:
    dns = _RebindingDNS(["127.0.0.1", "169.254.169.254"])
    resolver = PolicyResolver(dns)
    destinations.use(_Entry())
    first = await resolver.resolve("rebind.example", 80)
    assert [r["host"] for r in first] == ["127.0.0.1"]
    with pytest.raises(DestinationRefused) as err:
        await resolver.resolve("rebind.example", 80)
    assert "rebind.example" in str(err.value)
    assert "169.254.169.254" in str(err.value)


async def test_mixed_answer_keeps_only_allowed_addresses() -> None:
    class Both(_RebindingDNS):
        async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
            a = await _RebindingDNS(["169.254.169.254"]).resolve(host, port)
            b = await _RebindingDNS(["127.0.0.1"]).resolve(host, port)
            return a + b

    destinations.use(_Entry())
    got = await PolicyResolver(Both([])).resolve("mixed.example", 80)
    assert [r["host"] for r in got] == ["127.0.0.1"]
