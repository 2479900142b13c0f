"""The image built from the Dockerfile, run as a user would run it; and health probes kept out of
the request log.

The container tests (marked ``container`` and ``e2e``) need Docker: they start ``dockerd`` when
no daemon answers, build the gateway on a stand-in for ``python:3.11-slim`` made from Debian
packages (tests/support/docker.py: Docker Hub is not reachable from CI; made once and cached),
run it with a read-only root filesystem on the host network, and bring compose.yaml up with a
stand-in for the postgres image. Without Docker they are skipped, failing instead under CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from gateway import logs
from gateway.app import create_app
from gateway.config import load_settings
from tests.support import docker as dk
from tests.support.gateway_proc import REPO, free_port
from tests.support.signing import sign

DEMO = {"epost": "john.doe@example.com", "namn": "John Doe", "some_tags": ["TAG1", "TAG2"]}
DEMO_MAPPED = {
    "email": "john.doe@example.com",
    "first_name": "John",
    "last_name": "Doe",
    "tags": ["tag1", "tag2"],
}
DEMO_FILE = "/data/var/demo-deliveries.ndjson"

# -- health probes in the request log (no Docker needed) ----------------------------------


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "demo.yaml").write_text("group_key: demo\nintegrations: []\n")
    settings = load_settings({"data_dir": tmp_path / "data", "mappings": mappings}, environ={})
    yield await aiohttp_client(create_app(settings))
    logs.set_level("info")  # create_app sets the process-wide level from the settings


def _request_lines(out: str) -> list[dict]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == "request"]


async def test_successful_probes_are_not_logged_at_info(client, capfd) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/openapi.json")).status == 200
    logs.flush()
    paths = [line["path"] for line in _request_lines(capfd.readouterr().out)]
    assert paths == ["/openapi.json"]


async def test_probes_are_logged_at_debug_level(client, capfd) -> None:
    logs.set_level("debug")
    assert (await client.get("/healthz")).status == 200
    logs.flush()
    lines = _request_lines(capfd.readouterr().out)
    assert [(line["path"], line["level"]) for line in lines] == [("/healthz", "debug")]


async def test_a_failing_readiness_probe_is_logged(client, tmp_path: Path, capfd) -> None:
    (tmp_path / "mappings" / "demo.yaml").unlink()
    (tmp_path / "mappings").rmdir()
    assert (await client.get("/readyz")).status == 503
    logs.flush()
    lines = _request_lines(capfd.readouterr().out)
    assert [(line["path"], line["status"], line["level"]) for line in lines] == [
        ("/readyz", 503, "info")
    ]


# -- the image ----------------------------------------------------------------------------

TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    dk.ensure_daemon(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    yield
    dk.stop_started_daemon()


@pytest.fixture(scope="module")
def base_image(daemon: None) -> str:
    started = time.monotonic()
    name = dk.standin_base_image()
    TIMINGS["base image (cached after the first run)"] = time.monotonic() - started
    return name


@pytest.fixture(scope="module")
def image(base_image: str) -> Iterator[str]:
    """The gateway image, built from the repository as a user would, on the stand-in base.

    Tagged per test session and removed afterwards; its layers stay cached for the next build
    only while another tag (the stable ``gateway-test:cache``) points at them."""
    tag = f"gateway-test:{os.getpid()}"
    TIMINGS["gateway image build"] = dk.build(
        tag, REPO, "--build-arg", f"BASE={base_image}", "--label", "gateway-test=1"
    )
    dk.docker("tag", tag, "gateway-test:cache")
    yield tag
    dk.docker("rmi", tag, check=False)
    # Earlier builds' images, untagged when gateway-test:cache moved on.
    dk.docker("image", "prune", "-f", "--filter", "label=gateway-test=1", check=False)


class Run:
    """Containers and volumes made by a test, removed when it ends."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.names: list[str] = []
        self.volumes: list[str] = []

    def volume(self) -> str:
        name = f"gateway-test-{os.getpid()}-{len(self.volumes)}"
        dk.docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def start(self, volume: str, port: int, *command: str) -> str:
        """``docker run`` the image as the docs say, read-only with /data as a volume and a
        tmpfs on /tmp, on the host network (the port is the gateway's own)."""
        name = f"gateway-test-{os.getpid()}-c{len(self.names)}"
        self.names.append(name)
        dk.docker(
            "run", "-d", "--name", name,
            "--read-only", "--tmpfs", "/tmp",
            "-v", f"{volume}:/data",
            "--network", "host",
            "-e", f"GATEWAY_PORT={port}",
            # The image's own probe, run every second instead of every 10 s to save time.
            "--health-interval", "1s",
            self.image, *command,
        )  # fmt: skip
        return name

    def close(self) -> None:
        for name in self.names:
            dk.docker("rm", "-f", "-v", name, check=False)
        for name in self.volumes:
            dk.docker("volume", "rm", "-f", name, check=False)


@pytest.fixture
def run(image: str) -> Iterator[Run]:
    r = Run(image)
    yield r
    r.close()


def _printed_curl(log: str) -> str:
    """The bootstrap key's ready-to-paste curl command, as printed."""
    found = re.search(r"^curl --aws-sigv4 .*?/v1/records$", log, re.MULTILINE | re.DOTALL)
    assert found, log
    return found.group(0)


def _printed_key(log: str) -> tuple[str, str]:
    key = re.search(r"access key id: +(\S+)", log)
    secret = re.search(r"secret access key: +(\S+)", log)
    assert key, log
    assert secret, log
    return key.group(1), secret.group(1)


def _file_lines(container: str, path: str, want: int, timeout: float = 30) -> list[dict]:
    """The NDJSON lines of ``path`` in the container, once there are at least ``want``."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["docker", "exec", container, "cat", path], capture_output=True, text=True
        )
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def _good_probes(container: str) -> int:
    """How many of the last HEALTHCHECK probes (Docker keeps five) succeeded."""
    health = dk.state(container)["Health"]
    assert isinstance(health, dict)
    return sum(p["ExitCode"] == 0 for p in health["Log"])


def _stop(container: str, grace: int = 30) -> tuple[int, float]:
    """``docker stop``: the exit code and the seconds it took."""
    started = time.monotonic()
    dk.docker("stop", "-t", str(grace), container, timeout=grace + 30)
    return int(dk.state(container)["ExitCode"]), time.monotonic() - started  # type: ignore[call-overload]


@pytest.mark.container
@pytest.mark.e2e
@pytest.mark.timeout(1800)  # the first run on a machine makes the stand-in base (minutes)
def test_the_image_runs_the_demo_read_only_as_non_root(run: Run) -> None:
    started = time.monotonic()
    volume = run.volume()
    port = free_port()
    first = run.start(volume, port, "serve", "--bootstrap-key", "demo")
    dk.wait_healthy(first)

    # Not root: the gateway (PID 1) runs as the image's user, uid 10001.
    status = dk.docker("exec", first, "cat", "/proc/1/status")
    uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)
    assert uids, status
    assert set(uids.group(1).split()) == {"10001"}, status
    # The root filesystem is read-only; /tmp (tmpfs) and /data (the volume) are writable.
    denied = subprocess.run(
        ["docker", "exec", first, "touch", "/opt/venv/probe"], capture_output=True, text=True
    )
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr
    dk.docker("exec", first, "touch", "/tmp/probe", "/data/probe")

    # The printed command, pasted as is, sends the demo record.
    curl = _printed_curl(dk.container_log(first))
    sent = subprocess.run(
        ["sh", "-c", curl + " --silent --show-error"], capture_output=True, text=True
    )
    assert sent.returncode == 0, sent.stderr
    answer = json.loads(sent.stdout)
    assert answer["status"] == "accepted", answer
    rid = answer["id"]
    # The demo integration writes the mapped record into the volume.
    assert _file_lines(first, DEMO_FILE, 1) == [DEMO_MAPPED]

    # Probes that reached the server (the first may come before it listens): none is logged.
    deadline = time.monotonic() + 20
    while (probes := _good_probes(first)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert probes >= 3
    code, seconds = _stop(first)
    assert code == 0
    assert seconds < 15, f"docker stop took {seconds:.1f} s"
    log = dk.container_log(first)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    paths = [line["path"] for line in lines if line["event"] == "request"]
    assert paths == ["/v1/records"], "probes were logged as requests:\n" + log
    assert "breaker_open" not in log, log
    assert '"level":"error"' not in log, log

    # A new container on the same volume (an upgrade): same keys, same records, no redelivery.
    second = run.start(volume, port)
    dk.wait_healthy(second)
    key, secret = _printed_key(log)
    url, headers = sign("GET", f"http://127.0.0.1:{port}/v1/records/{rid}", key=key, secret=secret)
    got = requests.get(url, headers=headers, timeout=10)
    assert got.status_code == 200, got.text
    assert got.json()["id"] == rid
    assert "No access keys yet" not in dk.container_log(second)
    time.sleep(2)  # a redelivery would have happened by now
    assert _file_lines(second, DEMO_FILE, 2, timeout=0) == [DEMO_MAPPED]
    code, _seconds = _stop(second)
    assert code == 0
    TIMINGS["image test, containers"] = time.monotonic() - started
    size = int(dk.docker("image", "inspect", "-f", "{{.Size}}", run.image))
    print(f"\nimage size: {size / 1e6:.0f} MB; timings (s): {TIMINGS}")


# -- compose.yaml -------------------------------------------------------------------------


def _mounts_mappings(volume: str | dict) -> bool:
    """Whether a service's volume entry (short or long syntax) mounts mappings/ read-only."""
    if isinstance(volume, str):
        return volume.endswith("/mappings:/etc/gateway/mappings:ro")
    return (
        str(volume.get("source", "")).endswith("/mappings")
        and volume.get("target") == "/etc/gateway/mappings"
        and volume.get("read_only") is True
    )


@pytest.mark.container
@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_compose_file_brings_up_two_gateways_on_postgres(image: str, base_image: str) -> None:
    started = time.monotonic()
    compose = dk.compose_command()
    # As a user runs it: valid, and what the docs say it is.
    checked = subprocess.run(
        [*compose, "-f", str(REPO / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "POSTGRES_"))},
    )
    assert checked.returncode == 0, checked.stderr
    config = yaml.safe_load(checked.stdout)
    gateways = [config["services"][name] for name in ("gateway-1", "gateway-2")]
    for service in gateways:
        assert service["environment"]["GATEWAY_STORE"].startswith("postgresql://")
        assert service["read_only"] is True
        assert any(_mounts_mappings(v) for v in service["volumes"]), service["volumes"]
    assert config["services"]["postgres"]["image"] == "postgres:16"

    postgres = dk.postgres_standin_image(base_image)
    ports = free_port(), free_port()
    project = f"gatewaytest{os.getpid()}"
    cmd = [*compose, "-p", project, "-f", str(REPO / "compose.yaml")]
    env = {
        **os.environ,
        "GATEWAY_IMAGE": image,
        "POSTGRES_IMAGE": postgres,
        "GATEWAY_1_PORT": str(ports[0]),
        "GATEWAY_2_PORT": str(ports[1]),
    }

    def run_compose(*args: str, timeout: float = 300) -> str:
        out = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
        )
        assert out.returncode == 0, f"compose {args}: {out.stdout}\n{out.stderr}"
        return out.stdout

    try:
        run_compose("up", "-d", "--no-build")
        ids = [run_compose("ps", "-q", name).strip() for name in ("gateway-1", "gateway-2")]
        for cid in ids:
            dk.wait_healthy(cid)
        key, secret = _printed_key(dk.container_log(ids[0]))
        sent = {}
        for i in range(10):
            port = ports[i % 2]
            email = f"user{i}@example.com"
            body = json.dumps({"group_key": "demo", "data": {"epost": email, "namn": "A B"}})
            url, headers = sign(
                "POST",
                f"http://127.0.0.1:{port}/v1/records",
                body.encode(),
                {"Content-Type": "application/json"},
                key=key,
                secret=secret,
            )
            r = requests.post(url, data=body.encode(), headers=headers, timeout=10)
            assert r.status_code == 202, (port, r.text)
            sent[email] = r.json()["id"]
        lines = _file_lines(ids[1], DEMO_FILE, len(sent))
        time.sleep(2)  # a second delivery of any record would have happened by now
        lines = _file_lines(ids[1], DEMO_FILE, len(sent) + 1, timeout=0)
        assert sorted(line["email"] for line in lines) == sorted(sent), lines
        run_compose("stop")
        for cid in ids:
            assert dk.state(cid)["ExitCode"] == 0, dk.container_log(cid)
    finally:
        subprocess.run(
            [*cmd, "down", "-v", "--remove-orphans"], capture_output=True, env=env, cwd=REPO
        )
    TIMINGS["compose test"] = time.monotonic() - started
    print(f"\ntimings (s): {TIMINGS}")
