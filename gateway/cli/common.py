"""What every command family shares: settings flags, settings, JSON output, the store."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.config import Settings, env_name, load_settings

if TYPE_CHECKING:
    from gateway.auth.keys import SecretBox
    from gateway.store.base import Store

    #: What ``parser.add_subparsers()`` returns; each command module adds its parsers to it.
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

# Options every command that touches the store takes.
STORE_OPTIONS = ("data_dir", "mappings", "store", "sqlite_synchronous")
# Never offered as a flag: a secret on the command line shows in `ps` and shell history.
ENV_ONLY = {"master_key", "admin_token"}


def add_settings_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """A ``--flag`` for each named setting, its help naming its variable and default."""
    for name in names:
        field = Settings.model_fields[name]
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{field.description} [{env_name(name)}; default: {field.default}]",
        )


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings: the flags given over the ``GATEWAY_*`` variables over the defaults."""
    overrides = {k: getattr(args, k) for k in Settings.model_fields if hasattr(args, k)}
    return load_settings(overrides)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


class StoreSession:
    """``async with StoreSession(settings) as (store, box)``: the store, opened and closed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __aenter__(self) -> tuple[Store, SecretBox]:
        from gateway.auth.keys import SecretBox, load_master_key
        from gateway.store import open_store

        s = self.settings
        self.store = open_store(s.store_url, synchronous=s.sqlite_synchronous)
        await self.store.open()
        master = s.master_key.get_secret_value() if s.master_key else None
        return self.store, SecretBox(load_master_key(s.data_dir, master))

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()
