"""The ``gateway`` command: serve, keys, send, check, preview, deliveries, status.

Every option of a command is a flag and a ``GATEWAY_*`` variable (flag wins); every command finds
the store the same way (``--store`` / ``--data-dir``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.auth.keys import MasterKeyError
from gateway.config import Settings, SettingsError, env_name, load_settings

DEMO_RECORD = {"epost": "john.doe@example.com", "namn": "John Doe", "some_tags": ["TAG1", "TAG2"]}

# Options every command that touches the store takes.
STORE_OPTIONS = ("data_dir", "mappings", "store", "sqlite_synchronous")
# Never offered as a flag: a secret on the command line shows in `ps` and shell history.
ENV_ONLY = {"master_key", "admin_token"}


def _add_settings_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for name in names:
        field = Settings.model_fields[name]
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{field.description} [{env_name(name)}; default: {field.default}]",
        )


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: getattr(args, k) for k in Settings.model_fields if hasattr(args, k)}
    return load_settings(overrides)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# -- serve ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM or SIGINT; pending commits finish before it exits. With
    --workers N, N processes share the port under this one, which restarts any that dies."""
    from aiohttp import web

    from gateway import workers
    from gateway.app import create_app

    settings = _settings(args)
    worker = workers.current()
    if worker is None and settings.workers > 1:
        return _serve_workers(args, settings)
    if worker is not None:
        workers.setup_process(worker)
        settings = workers.worker_settings(settings, worker.number)
    elif args.bootstrap_key:
        asyncio.run(_bootstrap_key(settings, args.bootstrap_key))
    app = create_app(settings)
    if worker is not None:
        workers.attach(app, worker)
    loop = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # uvloop is optional: plain asyncio works, only slower
        pass
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=(
            workers.ready_notifier(worker)
            if worker is not None
            else lambda *a: print(*a, file=sys.stderr)
        ),
        loop=loop,
        shutdown_timeout=10.0,
        # A worker shares the port with the others, and handles stop signals itself.
        reuse_port=True if worker is not None else None,
        handle_signals=worker is None,
    )
    return 0


def _serve_workers(args: argparse.Namespace, settings: Settings) -> int:
    """The parent of ``serve --workers N``: checks, the once-only preparation, then the
    supervisor until every worker has exited."""
    from gateway import workers
    from gateway.store.base import StoreError

    try:
        workers.check(settings)
        asyncio.run(workers.prepare(settings))
    except workers.WorkersError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, ValueError) as exc:
        print(f"error: the store ({settings.store_url}): {exc}", file=sys.stderr)
        return 1
    if args.bootstrap_key:
        asyncio.run(_bootstrap_key(settings, args.bootstrap_key))
    # The workers get the flags given here (never a secret: those are variables only, which
    # they inherit); not --workers (they are workers) nor --bootstrap-key (done above).
    flags = [
        f"--{name.replace('_', '-')}={value}"
        for name in Settings.model_fields
        if name != "workers" and (value := getattr(args, name, None)) is not None
    ]
    return workers.Supervisor(settings, flags).run()


async def _bootstrap_key(settings: Settings, group: str) -> None:
    """On a store with no keys yet, make one for ``group`` and show how to use it."""
    async with _store_session(settings) as (store, box):
        from gateway.auth.keys import create_key

        if await store.list_access_keys():
            return
        key = await create_key(store, box, [group], name="bootstrap")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/v1/records"
    body = json.dumps({"group_key": group, "data": DEMO_RECORD}, ensure_ascii=False)
    curl = (
        f"curl --aws-sigv4 {shlex.quote(f'aws:amz:{settings.region}:{settings.service}')} "
        f"--user {shlex.quote(f'{key.access_key_id}:{key.secret_access_key}')} \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(body)} \\\n  {url}"
    )
    print(
        f"\nNo access keys yet: created one for group '{group}'. The secret is shown only now.\n"
        f"  access key id:     {key.access_key_id}\n"
        f"  secret access key: {key.secret_access_key}\n\n"
        f"Send the demo record:\n\n{curl}\n",
        file=sys.stderr,
        flush=True,
    )


# -- keys ----------------------------------------------------------------------------------


class _store_session:
    """``async with _store_session(settings) as (store, box)``: the store, opened and closed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __aenter__(self) -> tuple[Any, Any]:
        from gateway.auth.keys import SecretBox, load_master_key
        from gateway.store import open_store

        s = self.settings
        self.store = open_store(s.store_url, synchronous=s.sqlite_synchronous)
        await self.store.open()
        master = s.master_key.get_secret_value() if s.master_key else None
        return self.store, SecretBox(load_master_key(s.data_dir, master))

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create an access key; print its id and secret once."""
    from gateway.auth.keys import create_key

    settings = _settings(args)
    missing = [g for g in args.group if not (settings.mappings / f"{g}.yaml").exists()]
    for g in missing:
        print(
            f"warning: no mapping file {settings.mappings / (g + '.yaml')}: records for group "
            f"'{g}' are refused until it exists",
            file=sys.stderr,
        )

    async def run() -> Any:
        async with _store_session(settings) as (store, box):
            return await create_key(
                store, box, args.group, args.name, args.rate_limit, args.rate_burst
            )

    key = asyncio.run(run())
    if args.json:
        _print_json(
            {
                "access_key_id": key.access_key_id,
                "secret_access_key": key.secret_access_key,
                "groups": key.groups,
                "name": key.name,
            }
        )
    else:
        print(f"access key id:     {key.access_key_id}")
        print(f"secret access key: {key.secret_access_key}")
        print(f"groups:            {', '.join(key.groups)}")
        if key.name:
            print(f"name:              {key.name}")
        print("The secret is shown only now; store it safely.")
    return 0


def _ts(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List access keys, never their secrets."""
    settings = _settings(args)

    async def run() -> list[Any]:
        async with _store_session(settings) as (store, _):
            return await store.list_access_keys()

    rows = [
        {
            "access_key_id": k.access_key_id,
            "name": k.name,
            "groups": k.groups,
            "created_at": _ts(k.created_at),
            "revoked_at": _ts(k.revoked_at),
            "rate_limit": k.rate_limit,
            "rate_burst": k.rate_burst,
        }
        for k in asyncio.run(run())
    ]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no access keys; create one with: gateway keys create --group GROUP")
        return 0
    print(f"{'ACCESS KEY ID':<22}{'STATE':<10}{'CREATED':<22}{'NAME':<20}GROUPS")
    for r in rows:
        state = "revoked" if r["revoked_at"] else "active"
        print(
            f"{r['access_key_id']:<22}{state:<10}{r['created_at']:<22}{(r['name'] or '-'):<20}"
            f"{','.join(r['groups'])}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key; a running server refuses it within GATEWAY_KEY_CACHE_TTL seconds."""
    import time

    settings = _settings(args)

    async def run() -> bool:
        async with _store_session(settings) as (store, _):
            return await store.revoke_access_key(args.access_key_id, time.time())

    if not asyncio.run(run()):
        print(f"error: no access key {args.access_key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.access_key_id}")
    return 0


# -- send ----------------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace) -> int:
    """Sign a record with botocore's SigV4 and print the gateway's answer."""
    import os

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        print(f"error: --data is not valid JSON: {exc}", file=sys.stderr)
        return 2
    access = args.access_key or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        print(
            "error: no credentials: give --access-key and --secret-key, or set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            file=sys.stderr,
        )
        return 2
    settings = _settings(args)
    url = args.url.rstrip("/")
    if not url.endswith("/v1/records"):
        url += "/v1/records"
    body = json.dumps({"group_key": args.group, "data": data}).encode()
    headers = {"Content-Type": "application/json"}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    req = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(Credentials(access, secret), settings.service, settings.region).add_auth(req)
    prepared = req.prepare()
    http_req = urllib.request.Request(
        prepared.url, data=body, headers=dict(prepared.headers.items()), method="POST"
    )
    try:
        with urllib.request.urlopen(http_req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    try:
        answer: Any = json.loads(raw)
    except ValueError:
        answer = raw.decode("utf-8", "replace")
    if args.json:
        _print_json({"status": status, "body": answer})
    else:
        print(f"HTTP {status}")
        _print_json(answer)
    return 0 if 200 <= status < 300 else 1


# -- check ---------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Validate every mapping file; list every problem; exit 1 if there is any."""
    from pathlib import Path

    from gateway.mapping.loader import MappingRegistry

    directory = Path(args.dir) if args.dir else _settings(args).mappings
    registry = MappingRegistry(directory)
    result = registry.reload()
    problems = registry.all_problems()
    if registry.error:
        problems_json = [
            {"file": str(directory), "line": None, "path": "(directory)", "message": registry.error}
        ]
    else:
        problems_json = [p.to_dict() for p in problems]
    integrations = sum(len(m.integrations) for g in registry.groups() if (m := registry.get(g)))
    if args.json:
        _print_json(
            {
                "ok": not problems_json,
                "groups": len(registry),
                "integrations": integrations,
                "problems": problems_json,
            }
        )
    else:
        for p in problems_json:
            where = f"{p['file']}:{p['line']}" if p["line"] else p["file"]
            print(f"{where}: {p['path']}: {p['message']}")
        files = len(result.loaded) + len(result.failed)
        if problems_json:
            print(
                f"{len(problems_json)} problem(s) in {len(result.failed) or 1} of {files} file(s)"
            )
        else:
            print(f"ok: {len(registry)} group(s), {integrations} integration(s) in {directory}")
    return 1 if problems_json else 0


# -- preview -------------------------------------------------------------------------------


def cmd_preview(args: argparse.Namespace) -> int:
    """Run a record through a group's mapping and print, for each integration, whether its
    condition matched, the mapped fields or the mapping error, and the request that would be
    sent (secrets shown as ***). Nothing is sent or stored. Exit 1 when the group has no valid
    mapping, the data would be refused, or an integration cannot map or build the record."""
    from gateway.mapping.loader import MappingRegistry
    from gateway.mapping.preview import limits_of, preview_group

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        print(f"error: --data is not valid JSON: {exc}", file=sys.stderr)
        return 2
    settings = _settings(args)
    registry = MappingRegistry(settings.mappings)
    registry.reload()
    if registry.error:
        print(f"error: {registry.error}", file=sys.stderr)
        return 1
    doc = preview_group(registry, args.group, data, limits=limits_of(settings))
    if doc is None:
        problems = registry.problems_of(args.group)
        if problems:
            print(f"error: the mapping file of group {args.group!r} has errors:", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
        else:
            print(
                f"error: no mapping for group {args.group!r} in {settings.mappings}",
                file=sys.stderr,
            )
        return 1
    failed = bool(doc["data_errors"]) or any("error" in i for i in doc["integrations"])
    if args.json:
        _print_json(doc)
        return 1 if failed else 0
    print(f"group {doc['group_key']} (mapping version {doc['version']}); nothing is sent")
    for e in doc["data_errors"]:
        print(f"  data error: {e['field']}: {e['message']}")
    for i in doc["integrations"]:
        state = "disabled" if not i["enabled"] else "matched" if i["matched"] else "not matched"
        print(f"\n{i['name']} ({i['type']}, {i['action']}): {state}")
        if "error" in i:
            e = i["error"]
            where = ", ".join(
                f"{k} {e[k]}" for k in ("field", "source", "value") if e.get(k) is not None
            )
            print(f"  error: {e['message']}" + (f" ({where})" if where else ""))
        if "fields" in i:
            print("  fields:" if i["fields"] else "  fields: (none mapped)")
            for k, v in i["fields"].items():
                print(f"    {k} = {json.dumps(v, ensure_ascii=False)}")
        for r in [i["request"]] if "request" in i else i.get("requests", []):
            print("  request:")
            print(f"    {r['method']} {r['url']}")
            for hk, hv in r["headers"].items():
                print(f"    {hk}: {hv}")
            body = (
                r["body"]
                if isinstance(r["body"], str)
                else json.dumps(r["body"], ensure_ascii=False)
            )
            print("    " + body.rstrip("\n").replace("\n", "\n    "))
    return 1 if failed else 0


# -- integrations --------------------------------------------------------------------------


def cmd_integrations(args: argparse.Namespace) -> int:
    """Print the catalog of integration types (all, or one)."""
    from gateway.integrations import catalog
    from gateway.integrations.base import all_types, get_type

    types = all_types()
    if args.type:
        one = get_type(args.type)
        if one is None:
            names = ", ".join(t.name for t in types)
            print(f"error: no integration type {args.type!r}; known: {names}", file=sys.stderr)
            return 1
        types = [one]
    if args.json:
        _print_json([catalog.type_json(t) for t in types])
    elif args.markdown:
        sys.stdout.write(catalog.markdown(types))
    else:
        print("\n\n".join(catalog.text(t) for t in types))
    return 0


# -- deliveries, status: clients of a running gateway's admin API ---------------------------


class _CliFailure(Exception):
    """A command failed: print ``message`` lines to stderr and exit with ``code``."""

    def __init__(self, code: int, *lines: str) -> None:
        super().__init__(lines[0] if lines else "")
        self.code = code
        self.lines = lines


class _AdminClient:
    """Calls the admin API of a running gateway (``--url``, ``--admin-token``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import os

        url = args.url or os.environ.get("GATEWAY_URL")
        if not url:
            s = load_settings({})
            host = "127.0.0.1" if s.host in ("0.0.0.0", "") else s.host
            host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
            url = f"http://{host}:{s.port}"
        if not url.startswith(("http://", "https://")):
            raise _CliFailure(
                2,
                f"error: the gateway's URL must be http(s)://HOST:PORT, not {url!r} "
                "(--url or GATEWAY_URL)",
            )
        self.url = url.rstrip("/")
        token = args.admin_token or os.environ.get("GATEWAY_ADMIN_TOKEN")
        if not token:
            raise _CliFailure(
                2,
                "error: no admin token: set GATEWAY_ADMIN_TOKEN to the token the gateway runs "
                "with (or give --admin-token)",
            )
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of a 2xx; an error envelope or an unreachable gateway raises
        :class:`_CliFailure` (exit 1 and 2)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _CliFailure(
                2,
                f"error: cannot reach the gateway at {self.url}: {reason}",
                "  (is it running? give its address with --url or GATEWAY_URL)",
            ) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if 200 <= status < 300 and answer is not None:
            return answer
        err = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(err, dict):
            text = raw.decode("utf-8", "replace").strip()[:200]
            raise _CliFailure(
                1, f"error: HTTP {status} from {self.url}{path}, not the gateway's answer: {text}"
            )
        lines = [f"error: {err.get('code')} (HTTP {status}): {err.get('message')}"]
        for e in err.get("errors") or []:
            lines.append(f"  {e.get('field')}: {e.get('message')}")
        raise _CliFailure(1, *lines)


def _admin_command(
    run: Callable[[argparse.Namespace, _AdminClient], int],
) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        try:
            return run(args, _AdminClient(args))
        except _CliFailure as failure:
            for line in failure.lines:
                print(line, file=sys.stderr)
            return failure.code

    command.__doc__ = run.__doc__
    return command


def _query_string(params: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    given = {k: v for k, v in params.items() if v is not None}
    return "?" + urlencode(given) if given else ""


def _age(seconds: float | None) -> str:
    """A duration for people: 45s, 3m05s, 2h01m, 3d04h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _cut(text: str | None, width: int) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    """Print columns as wide as their widest cell; the last column is not padded."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def _deliveries_list(args: argparse.Namespace, api: _AdminClient) -> int:
    """List deliveries, oldest first, following the pages until --limit or the end."""
    if args.limit < 0:
        raise _CliFailure(2, "error: --limit must be 0 (no limit) or more")
    if not 1 <= args.page_size <= 1000:
        raise _CliFailure(2, "error: --page-size must be from 1 to 1000")
    items: list[dict[str, Any]] = []
    cursor = args.cursor
    while True:
        size = args.page_size if not args.limit else min(args.page_size, args.limit - len(items))
        page = api.call(
            "GET",
            "/admin/v1/deliveries"
            + _query_string(
                {
                    "state": args.state,
                    "group": args.group,
                    "integration": args.integration,
                    "created_after": args.created_after,
                    "created_before": args.created_before,
                    "cursor": cursor,
                    "limit": size,
                }
            ),
        )
        items += page["deliveries"]
        if page["next_cursor"] is not None and (
            page["next_cursor"] == cursor or not page["deliveries"]
        ):
            raise _CliFailure(1, f"error: {api.url} gave a cursor that does not move on")
        cursor = page["next_cursor"]
        if cursor is None or (args.limit and len(items) >= args.limit):
            break
    if args.json:
        _print_json({"deliveries": items, "next_cursor": cursor})
        return 0
    if not items:
        print("no deliveries match")
        return 0
    _table(
        ["ID", "STATE", "GROUP", "INTEGRATION", "ATTEMPTS", "CREATED", "LAST ERROR"],
        [
            [
                d["id"],
                d["state"],
                d["group_key"],
                d["integration"],
                str(d["attempts"]),
                d["created_at"] or "-",
                _cut(d["last_error"], 70),
            ]
            for d in items
        ],
    )
    print(f"\n{len(items)} deliver{'y' if len(items) == 1 else 'ies'}")
    if cursor is not None:
        print(f"more match: go on with --cursor {cursor}")
    return 0


def _deliveries_replay(args: argparse.Namespace, api: _AdminClient) -> int:
    """Put dead (or, with --state delivered, delivered) deliveries back to pending: they are
    sent again at once, through the mapping live now. By --id, or by a filter."""
    filters = {
        "state": args.state,
        "group": args.group,
        "integration": args.integration,
        "created_after": args.created_after,
        "created_before": args.created_before,
    }
    given = {k: v for k, v in filters.items() if v is not None}
    if args.id and given:
        raise _CliFailure(
            2, "error: give --id, or filter options (--state, --group, ...), not both"
        )
    if not args.id and not given:
        raise _CliFailure(
            2,
            "error: say what to replay: --id ID (repeatable), or a filter such as "
            "--state dead (every dead delivery), --group G, --integration I",
        )
    body: dict[str, Any] = {"ids": args.id} if args.id else {"filter": given}
    if args.limit is not None:
        body["limit"] = args.limit
    answer = api.call("POST", "/admin/v1/deliveries/replay", body)
    if args.json:
        _print_json(answer)
        return 0
    n = answer["replayed"]
    if not n:
        print("nothing replayed: no dead or delivered delivery matched")
        return 0
    print(f"replayed {n} deliver{'y' if n == 1 else 'ies'} (pending again, due now):")
    for did in answer["ids"]:
        print(f"  {did}")
    if not args.id and n == (args.limit or 10000):
        print("the limit was reached: run the command again for the rest")
    return 0


def _status(args: argparse.Namespace, api: _AdminClient) -> int:
    """Every lane (group, integration) at a glance: breaker, pause, backlog, oldest pending
    delivery, dead deliveries, last error."""
    answer = api.call("GET", "/admin/v1/lanes")
    if args.json:
        _print_json(answer)
        return 0
    lanes = answer["lanes"]
    if not lanes:
        print("no lanes: no group's mapping has an integration, and nothing is pending or dead")
        return 0
    rows = []
    for lane in lanes:
        name = lane["integration"]
        if not lane["in_mapping"]:
            name += " (not in mapping)"
        elif lane["enabled"] is False:
            name += " (disabled)"
        breaker = lane["breaker"]
        if lane.get("breaker_retry_in"):
            breaker += f" ({_age(lane['breaker_retry_in'])})"
        backlog = lane["backlog"]
        rows.append(
            [
                lane["group_key"],
                name,
                breaker,
                "yes" if lane["paused"] else "no",
                str(backlog["pending"]),
                _age(backlog["oldest_pending_age"]),
                str(backlog["dead"]),
                _cut(lane["last_error"], 60),
            ]
        )
    _table(
        ["GROUP", "INTEGRATION", "BREAKER", "PAUSED", "BACKLOG", "OLDEST", "DEAD", "LAST ERROR"],
        rows,
    )
    if not answer.get("delivery_engine", True):
        print(
            "\nnote: this gateway process does not run the delivery engine (GATEWAY_DELIVERY "
            "is off): breaker, queue and last error come from the processes that do, not shown"
        )
    return 0


cmd_deliveries_list = _admin_command(_deliveries_list)
cmd_deliveries_replay = _admin_command(_deliveries_replay)
cmd_status = _admin_command(_status)


def _add_admin_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help="the running gateway's base URL [GATEWAY_URL; default: http://GATEWAY_HOST:"
        "GATEWAY_PORT, i.e. http://127.0.0.1:8080]",
    )
    parser.add_argument(
        "--admin-token",
        default=None,
        help="the gateway's admin token [GATEWAY_ADMIN_TOKEN; prefer the variable: a flag "
        "shows in `ps` and shell history]",
    )


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``gateway`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Data-forwarding gateway: SigV4-signed flat records in, integrations out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway", description=cmd_serve.__doc__)
    _add_settings_flags(serve, [n for n in Settings.model_fields if n not in ENV_ONLY])
    serve.add_argument(
        "--bootstrap-key",
        metavar="GROUP",
        default=None,
        help="if the store has no access keys yet, create one for GROUP and print it with a "
        "ready-to-paste curl command (the quick start uses 'demo')",
    )
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage producers' access keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = ksub.add_parser("create", help="create a key (the secret is printed once)")
    create.add_argument(
        "--group", action="append", required=True, help="a group the key may send to (repeatable)"
    )
    create.add_argument("--name", help="a label for the key")
    create.add_argument(
        "--rate-limit", type=float, help="requests per second (default: the server's)"
    )
    create.add_argument("--rate-burst", type=int, help="token bucket size (default: the server's)")
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(func=cmd_keys_create)
    lst = ksub.add_parser("list", help="list keys (never their secrets)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=cmd_keys_list)
    revoke = ksub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("access_key_id", metavar="ACCESS_KEY_ID")
    revoke.set_defaults(func=cmd_keys_revoke)
    for p in (create, lst, revoke):
        _add_settings_flags(p, STORE_OPTIONS)

    send = sub.add_parser("send", help="send one signed record and print the answer")
    send.add_argument(
        "--url", required=True, help="the gateway's base URL, e.g. http://127.0.0.1:8080"
    )
    send.add_argument("--group", required=True, help="the record's group key")
    send.add_argument("--data", required=True, help="the record's data as a JSON object")
    send.add_argument("--access-key", help="access key id [AWS_ACCESS_KEY_ID]")
    send.add_argument("--secret-key", help="secret access key [AWS_SECRET_ACCESS_KEY]")
    send.add_argument("--idempotency-key", help="send an Idempotency-Key header")
    send.add_argument("--json", action="store_true", help="print JSON: {status, body}")
    _add_settings_flags(send, ["region", "service"])
    send.set_defaults(func=cmd_send)
    check = sub.add_parser(
        "check", help="validate every mapping file", description=cmd_check.__doc__
    )
    check.add_argument(
        "dir", nargs="?", metavar="DIR", help="mappings directory [GATEWAY_MAPPINGS]"
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(func=cmd_check)
    _add_settings_flags(check, ["mappings"])

    prev = sub.add_parser(
        "preview",
        help="dry-run a record through a group's mapping",
        description=cmd_preview.__doc__,
    )
    prev.add_argument("--group", required=True, help="the group key")
    prev.add_argument("--data", required=True, help="the record's data as a JSON object")
    prev.add_argument("--json", action="store_true", help="print JSON")
    _add_settings_flags(prev, ["mappings"])
    prev.set_defaults(func=cmd_preview)

    integ = sub.add_parser(
        "integrations",
        help="print the catalog of integration types",
        description=cmd_integrations.__doc__,
    )
    integ.add_argument("type", nargs="?", metavar="TYPE", help="only this type")
    fmt = integ.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument(
        "--markdown", action="store_true", help="print Markdown (docs/integrations.md)"
    )
    integ.set_defaults(func=cmd_integrations)

    dl = sub.add_parser(
        "deliveries", help="list and replay deliveries (through a running gateway's admin API)"
    )
    dsub = dl.add_subparsers(dest="deliveries_command", required=True, metavar="ACTION")
    dlist = dsub.add_parser(
        "list", help="list deliveries, oldest first", description=_deliveries_list.__doc__
    )
    dlist.add_argument(
        "--state", choices=["pending", "delivered", "dead"], help="only deliveries in this state"
    )
    dlist.add_argument("--limit", type=int, default=1000, help="at most N (0: all; default 1000)")
    dlist.add_argument("--cursor", help="go on from a cursor an earlier listing printed")
    dlist.add_argument("--page-size", type=int, default=500, help=argparse.SUPPRESS)
    dlist.set_defaults(func=cmd_deliveries_list)
    replay = dsub.add_parser(
        "replay",
        help="send dead (or delivered) deliveries again",
        description=_deliveries_replay.__doc__,
    )
    replay.add_argument("--id", action="append", metavar="ID", help="a delivery id (repeatable)")
    replay.add_argument(
        "--state",
        choices=["dead", "delivered"],
        help="replay every delivery in this state that the other filters match",
    )
    replay.add_argument("--limit", type=int, help="at most N by a filter (default and most: 10000)")
    replay.set_defaults(func=cmd_deliveries_replay)
    for p in (dlist, replay):
        p.add_argument("--group", help="only this group")
        p.add_argument("--integration", help="only this integration (name in the mapping)")
        p.add_argument("--created-after", metavar="TIME", help="ISO 8601, e.g. 2025-05-01T12:00Z")
        p.add_argument("--created-before", metavar="TIME", help="ISO 8601")
        p.add_argument("--json", action="store_true", help="print JSON")
        _add_admin_flags(p)

    status = sub.add_parser(
        "status", help="every lane at a glance (a running gateway)", description=_status.__doc__
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    _add_admin_flags(status)
    status.set_defaults(func=cmd_status)
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
