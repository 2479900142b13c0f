"""The ``gateway`` command: serve, keys, send, check, preview, integrations, deliveries, status,
groups, tokens.

Every option of a command is a flag and a ``GATEWAY_*`` variable (flag wins); every command finds
the store the same way (``--store`` / ``--data-dir``). Each command family is a module here that
defines its sub-parsers next to its handlers:

- :mod:`~gateway.cli.serve`: ``serve``;
- :mod:`~gateway.cli.keys`: ``keys``, on the store;
- :mod:`~gateway.cli.send`: ``send``, a signed record like a producer's;
- :mod:`~gateway.cli.mappings`: ``check``, ``preview``, ``integrations``, offline;
- :mod:`~gateway.cli.deliveries`: ``deliveries``, ``status``, through a running gateway's admin
  API (:mod:`~gateway.cli.adminclient`);
- :mod:`~gateway.cli.groups`: ``groups``, ``tokens``, through the same API.
- :mod:`~gateway.cli.links`: ``links``, likewise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from gateway.auth.keys import MasterKeyError
from gateway.cli import deliveries, groups, keys, links, mappings, send, serve
from gateway.config import SettingsError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``gateway`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Data-forwarding gateway: SigV4-signed flat records in, integrations out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in (serve, keys, send, mappings, deliveries, groups, links):
        family.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` command."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except MasterKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
