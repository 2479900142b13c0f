"""Where deliveries may go: the destination policy, checked on every connection.

An address is judged by the rules that contain it; the most specific range (longest prefix)
decides, and a deny wins a tie. Three layers are checked, each on its own:

1. the built-in rules: link-local and cloud metadata addresses denied (:data:`BUILTIN_DENY`);
2. the gateway's settings (``GATEWAY_DESTINATIONS_ALLOW`` / ``GATEWAY_DESTINATIONS_DENY``), on
   top of the built-in rules: an operator opens a metadata address by allowing it there;
3. an integration entry's ``options.destinations``, on top of both: it can only narrow what
   the settings allow (a mapping file is not trusted to open what the operator closed).

Loopback and private ranges are allowed unless denied: the quick start, the demo and most
on-premises targets live there. Names are checked when they resolve (a wrapper around
aiohttp's resolver, so a name that re-resolves to a forbidden address is caught at connect
time, DNS rebinding included), and the peer address of every connection is checked again
before a request is written on it (address literals, which aiohttp never resolves, and pooled
keep-alive connections opened for another entry).

A refused destination raises :class:`DestinationRefused`, a permanent delivery error.
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.integrations.base import TransportError

if TYPE_CHECKING:
    from aiohttp import ClientRequest, ClientTimeout
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Names an operator may use instead of ranges.
ALIASES: dict[str, tuple[str, ...]] = {
    "loopback": ("127.0.0.0/8", "::1/128"),
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"),
    "link-local": ("169.254.0.0/16", "fe80::/10"),
    "metadata": (
        "169.254.169.254/32",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
        "169.254.170.2/32",  # AWS ECS task credentials
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud
    ),
    "unspecified": ("0.0.0.0/8", "::/128"),  # "this host": reaches loopback on Linux
    "any": ("0.0.0.0/0", "::/0"),
}

#: Denied unless allowed: link-local (cloud metadata lives there), the known metadata
#: addresses outside it, and the unspecified address (a way around a loopback deny).
BUILTIN_DENY: tuple[str, ...] = ALIASES["link-local"] + ALIASES["metadata"] + ALIASES["unspecified"]


class DestinationRefused(TransportError):
    """The destination policy refuses the address a request would go to. Permanent: the
    same request would be refused again."""

    permanent = True


def parse_ranges(value: str | Iterable[str] | None) -> tuple[Network, ...]:
    """Ranges from CIDRs, single addresses or alias names (comma-separated in a string);
    raises ``ValueError`` naming a bad item."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[Network] = []
    for raw in items:
        item = str(raw).strip()
        if not item:
            continue
        if item.lower() in ALIASES:
            out.extend(ipaddress.ip_network(r) for r in ALIASES[item.lower()])
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            names = ", ".join(ALIASES)
            raise ValueError(
                f"{item!r} is not an address range (like 10.0.0.0/8 or fe80::/10) nor one "
                f"of {names}"
            ) from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Rules:
    """One layer of allowed and denied ranges, over the layers below it (``base``)."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    base: Rules | None = None

    def verdict(self, addr: Address) -> tuple[bool, Network] | None:
        """(allowed, deciding range) for the most specific range holding ``addr``, or None.
        Within a layer a deny wins a tie; between layers the upper one does (an operator's
        ``169.254.169.254/32`` allow opens the built-in ``/32`` deny)."""
        own: tuple[bool, Network] | None = None
        for allowed, nets in ((True, self.allow), (False, self.deny)):
            for net in nets:
                if addr.version != net.version or addr not in net:
                    continue
                if (
                    own is None
                    or net.prefixlen > own[1].prefixlen
                    or (net.prefixlen == own[1].prefixlen and not allowed)
                ):
                    own = (allowed, net)
        below = self.base.verdict(addr) if self.base is not None else None
        if own is None or (below is not None and below[1].prefixlen > own[1].prefixlen):
            return below
        return own

    def over(self, base: Rules) -> Rules:
        """This layer (and those under it) on top of ``base``."""
        return Rules(self.allow, self.deny, base if self.base is None else self.base.over(base))


@dataclass(frozen=True, slots=True)
class Policy:
    """The gateway's rules (built-in and settings) and an entry's own, checked in turn."""

    gateway: Rules = field(default_factory=lambda: Rules(deny=parse_ranges(BUILTIN_DENY)))
    entry: Rules | None = None

    def refusal(self, addr: str) -> str | None:
        """Why ``addr`` may not be connected to, or None when it may."""
        if self.entry is None and self.gateway is _gateway_rules:
            # The common case (no options.destinations): the verdict depends on the address
            # alone, and is asked again for every request on a pooled connection (parsing
            # the address and walking the ranges showed in one-a-request delivery profiles).
            try:
                return _verdicts[addr]
            except KeyError:
                pass
            why = self._refusal(addr)
            if len(_verdicts) >= 4096:
                _verdicts.clear()
            _verdicts[addr] = why
            return why
        return self._refusal(addr)

    def _refusal(self, addr: str) -> str | None:
        try:
            ip: Address = ipaddress.ip_address(addr.split("%", 1)[0])
        except ValueError:
            return f"{addr!r} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
        layers = [("the gateway's destination policy", self.gateway)]
        if self.entry is not None:
            layers.append(("the integration's options.destinations", self.entry.over(self.gateway)))
        for name, rules in layers:
            verdict = rules.verdict(ip)
            if verdict is not None and not verdict[0]:
                return f"{ip} is in {verdict[1]}, which {name} denies"
        return None


_gateway_rules = Rules(deny=parse_ranges(BUILTIN_DENY))
# Policy.refusal's answers under _gateway_rules alone, by address; emptied when they change.
_verdicts: dict[str, str | None] = {}
# policy_for's answers by (allow, deny) of an entry, None for none; emptied when the rules change.
_policies: dict[tuple[tuple[str, ...], tuple[str, ...]] | None, Policy] = {}
_current: contextvars.ContextVar[Policy | None] = contextvars.ContextVar(
    "destination_policy", default=None
)


def configure(allow: str | Iterable[str] | None, deny: str | Iterable[str] | None) -> None:
    """Set the gateway-wide rules (from settings) on top of the built-in ones; once, at start."""
    global _gateway_rules
    _gateway_rules = Rules(parse_ranges(allow), parse_ranges(deny)).over(
        Rules(deny=parse_ranges(BUILTIN_DENY))
    )
    _verdicts.clear()
    _policies.clear()


def policy_for(options: Any = None) -> Policy:
    """The policy for an entry with these ``options.destinations`` (None: none of its own).

    Made once per distinct setting (asked once per attempt: parsing the ranges every time
    showed in one-a-request delivery profiles); :func:`configure` forgets them."""
    key = None if options is None else (tuple(options.allow), tuple(options.deny))
    policy = _policies.get(key)
    if policy is None:
        if len(_policies) >= 1024:
            _policies.clear()
        entry = (
            None
            if options is None
            else Rules(parse_ranges(options.allow), parse_ranges(options.deny))
        )
        policy = _policies[key] = Policy(_gateway_rules, entry)
    return policy


def use(integration: Any) -> None:
    """Check the connections this task makes (and the tasks it starts) against the entry's
    policy. Called once per attempt, before anything is sent for ``integration``."""
    opts = getattr(getattr(integration, "options", None), "destinations", None)
    _current.set(policy_for(opts))


def current() -> Policy:
    """The policy in force for this task: the entry's, or the gateway's."""
    return _current.get() or Policy(_gateway_rules)


def _refused(what: str) -> DestinationRefused:
    return DestinationRefused(
        f"destination refused: {what} (settings GATEWAY_DESTINATIONS_ALLOW and _DENY, the "
        "entry's options.destinations)"
    )


class PolicyResolver(AbstractResolver):
    """aiohttp resolver that drops addresses the policy denies, and refuses a name left with
    none. Wraps aiohttp's default resolver."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or aiohttp.DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
        """The resolved addresses the current policy allows."""
        found = await self._inner.resolve(host, port, family)
        policy = current()
        allowed, why = [], ""
        for r in found:
            refusal = policy.refusal(r["host"])
            if refusal is None:
                allowed.append(r)
            else:
                why = why or refusal
        if not allowed:
            raise _refused(f"{host} resolves only to denied addresses: {why}")
        return allowed

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCP connector that resolves through :class:`PolicyResolver` (no DNS cache: every
    new connection re-resolves under the current policy) and checks the peer address of
    each connection it hands out, new or pooled, before a request is written on it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(resolver=PolicyResolver(), use_dns_cache=False, **kwargs)

    async def connect(
        self,
        req: ClientRequest,
        traces: Sequence[Trace],
        timeout: ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        """A connection to an address the current policy allows; raises DestinationRefused."""
        policy = current()
        host = req.url.raw_host or ""
        if _is_ip(host):  # aiohttp does not resolve address literals: check before connecting
            why = policy.refusal(host)
            if why is not None:
                raise _refused(why)
        conn = await super().connect(req, list(traces), timeout)
        transport = conn.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if peer:
            why = policy.refusal(str(peer[0]))
            if why is not None:
                conn.close()
                raise _refused(f"{host} connected to a denied address: {why}")
        return conn


@functools.lru_cache(maxsize=1024)  # pure, and asked for every request a host gets
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True
