"""Access keys: generation, encryption of secrets at rest, and the cached key ring.

Key ids and secrets look like AWS's (20 and 40 characters) so every SigV4 signer accepts them.
Secrets are stored encrypted with AES-256-GCM under a key derived from the master key
(``GATEWAY_MASTER_KEY``, or a key file made with mode 0600 in the data directory on first use);
the access key id is the associated data, so a ciphertext cannot be moved to another key.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.store.base import AccessKey, Store

KEY_ID_PREFIX = "AKGW"
_KEY_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_CIPHER_VERSION = b"\x01"
MASTER_KEY_FILE = "master.key"


class MasterKeyError(Exception):
    """The master key is missing, malformed, or not the one the secrets were encrypted with."""


def new_access_key_id() -> str:
    """A 20-character id: ``AKGW`` and 16 base32 characters."""
    return KEY_ID_PREFIX + "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(16))


def new_secret_access_key() -> str:
    """A 40-character secret from 240 random bits, in AWS's alphabet."""
    return base64.b64encode(secrets.token_bytes(30)).decode()


class SecretBox:
    """Encrypts and decrypts access-key secrets with the master key."""

    def __init__(self, master_key: str) -> None:
        if len(master_key) < 16:
            raise MasterKeyError("the master key must be at least 16 characters long")
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"gateway/access-keys", info=b"v1"
        ).derive(master_key.encode())
        self._aead = AESGCM(derived)

    def encrypt(self, access_key_id: str, secret: str) -> bytes:
        """Ciphertext of ``secret``, bound to ``access_key_id``."""
        nonce = os.urandom(12)
        return (
            _CIPHER_VERSION
            + nonce
            + self._aead.encrypt(nonce, secret.encode(), access_key_id.encode())
        )

    def decrypt(self, access_key_id: str, blob: bytes) -> str:
        """The secret; raises :class:`MasterKeyError` when the master key does not fit."""
        if blob[:1] != _CIPHER_VERSION or len(blob) < 13:
            raise MasterKeyError(f"stored secret of {access_key_id} has an unknown format")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], access_key_id.encode()).decode()
        except InvalidTag:
            raise MasterKeyError(
                f"cannot decrypt the secret of {access_key_id}: the master key is not the one "
                "it was created with (check GATEWAY_MASTER_KEY or the master.key file)"
            ) from None


def load_master_key(data_dir: Path, configured: str | None) -> str:
    """The configured master key, else the data directory's key file, created on first use."""
    if configured:
        return configured
    path = data_dir / MASTER_KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    value = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    return value


@dataclass(frozen=True, slots=True)
class ActiveKey:
    """An access key as the request path needs it: decrypted secret and allowed groups."""

    access_key_id: str
    secret: str
    groups: frozenset[str]
    revoked: bool
    rate_limit: float | None
    rate_burst: int | None
    # SigV4 signing keys derived from this secret, by (date, region, service): the verifier
    # fills it (SigV4Verifier.verify), and it goes with this object when the entry does.
    signing_keys: dict[tuple[str, str, str], bytes] = field(
        default_factory=dict, repr=False, compare=False
    )


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A newly created key; the only time the secret is shown."""

    access_key_id: str
    secret_access_key: str
    groups: list[str]
    name: str | None


async def create_key(
    store: Store,
    box: SecretBox,
    groups: list[str],
    name: str | None = None,
    rate_limit: float | None = None,
    rate_burst: int | None = None,
) -> CreatedKey:
    """Make a key for ``groups``, store it encrypted, and return it with its secret."""
    if not groups:
        raise ValueError("a key needs at least one group")
    key_id, secret = new_access_key_id(), new_secret_access_key()
    await store.create_access_key(
        AccessKey(
            access_key_id=key_id,
            secret_ciphertext=box.encrypt(key_id, secret),
            groups=sorted(set(groups)),
            name=name,
            created_at=time.time(),
            rate_limit=rate_limit,
            rate_burst=rate_burst,
        )
    )
    return CreatedKey(key_id, secret, sorted(set(groups)), name)


class KeyRing:
    """Access keys looked up in the store and cached.

    An entry younger than ``ttl`` is used as is. An older one is still used while a single
    background refresh reads the store again, so the hot path never waits for the store and a
    crowd of requests arriving as an entry expires causes one read, not one each. Only a key
    never seen (or not seen for ``2 * ttl``) is awaited, again one read per key however many
    requests want it. A revocation made by another process (``gateway keys revoke``) therefore
    takes effect within about ``ttl`` seconds. Unknown ids are cached too, so a flood of bad
    ids does not become a flood of store reads.
    """

    def __init__(
        self, store: Store, box: SecretBox, ttl: float = 2.0, max_entries: int = 100_000
    ) -> None:
        self._store = store
        self._box = box
        self._ttl = ttl
        self._max = max_entries
        self._cache: dict[str, tuple[float, ActiveKey | None]] = {}  # id -> (fetched, key)
        self._inflight: dict[str, asyncio.Future[ActiveKey | None]] = {}

    async def check_master_key(self) -> None:
        """Raise :class:`MasterKeyError` unless the master key decrypts a stored secret.

        Run at start-up: a wrong master key must stop the server with a clear message rather
        than fail every request later.
        """
        keys = await self._store.list_access_keys()
        if keys:
            self._box.decrypt(keys[0].access_key_id, keys[0].secret_ciphertext)

    async def get(self, access_key_id: str) -> ActiveKey | None:
        """The key (possibly revoked), or None when there is no such key."""
        hit = self.cached(access_key_id)
        if hit is not None:
            return hit[0]
        return await self._refresh(access_key_id)

    def cached(self, access_key_id: str) -> tuple[ActiveKey | None] | None:
        """The cached answer of :meth:`get` as a 1-tuple, without suspending (starting the
        background refresh of an ageing entry as :meth:`get` does); None when :meth:`get`
        must wait for the store. The hot path calls this first and awaits only on a miss."""
        hit = self._cache.get(access_key_id)
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age < self._ttl:
                return (hit[1],)
            if age < 2 * self._ttl:
                self._refresh(access_key_id)
                return (hit[1],)
        return None

    def _refresh(self, access_key_id: str) -> asyncio.Future[ActiveKey | None]:
        """The in-flight read of ``access_key_id``, started if none is running."""
        fut = self._inflight.get(access_key_id)
        if fut is None:
            fut = asyncio.ensure_future(self._load(access_key_id))
            self._inflight[access_key_id] = fut
            fut.add_done_callback(lambda _: self._inflight.pop(access_key_id, None))
            # A background refresh nobody awaits must not log "exception never retrieved".
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        return fut

    async def _load(self, access_key_id: str) -> ActiveKey | None:
        fetched = time.monotonic()
        stored = await self._store.get_access_key(access_key_id)
        key = None
        if stored is not None:
            key = ActiveKey(
                access_key_id=stored.access_key_id,
                secret=self._box.decrypt(stored.access_key_id, stored.secret_ciphertext),
                groups=frozenset(stored.groups),
                # A rotated key stays valid until the time its rotation set.
                revoked=stored.revoked_at is not None and stored.revoked_at <= time.time(),
                rate_limit=stored.rate_limit,
                rate_burst=stored.rate_burst,
            )
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[access_key_id] = (fetched, key)
        return key
