"""Docker for the container tests: a daemon that answers, and a stand-in for ``python:3.11-slim``.

CI reaches Debian's package archive and PyPI but not Docker Hub, so the base image is made
from Debian packages with debootstrap (bookworm has Python 3.11) and given the two things the
Dockerfile needs from ``python:3.11-slim``: ``python`` and ``pip`` on the PATH, and a venv module.
Making it takes a minute or more, so it is done once per recipe: the image's tag is a hash of
the recipe (and of this machine's CA bundle, copied in so pip in a build trusts what this machine
trusts), and its root filesystem tarball is also kept in a cache directory, which survives a
wiped Docker store.

Without Docker (or debootstrap to make the base) the tests are skipped with the reason; under CI
(``CI`` set) they fail instead, so a CI run can never pass without them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What `docker import` sets, so the image behaves like python:3.11-slim for the Dockerfile.
IMAGE_CONFIG = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    f"ENV PIP_CERT={CA_BUNDLE}",
    'CMD ["python3"]',
)
RECIPE_VERSION = "1"  # bump when the steps in _make_rootfs change
CACHE_DIR = Path(
    os.environ.get("GATEWAY_TEST_CACHE") or Path.home() / ".cache" / "gateway-tests"
).resolve()

_started_daemon: subprocess.Popen[bytes] | None = None


def unavailable(message: str) -> None:
    """Skip, or fail under CI, with ``message``."""
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run the container tests)", pytrace=False)
    pytest.skip(message)


def docker(*args: str, check: bool = True, timeout: float = 120, **kw: object) -> str:
    """Run ``docker ARGS`` and return its stdout; a failure raises with stderr in the message."""
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and out.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: exit {out.returncode}\n{out.stderr}")
    return str(out.stdout)


def _answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_daemon(log_path: Path) -> None:
    """Make sure a Docker daemon answers, starting ``dockerd`` (as root) if none does."""
    global _started_daemon
    if shutil.which("docker") is None:
        unavailable("no docker client (Debian: apt-get install docker.io)")
    if _answers():
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        unavailable("no Docker daemon answers, and dockerd cannot be started here (needs root)")
    log = log_path.open("ab")
    _started_daemon = subprocess.Popen(
        [dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while not _answers():
        if _started_daemon.poll() is not None or time.monotonic() > deadline:
            unavailable(f"dockerd did not start; its log: {log_path}")
        time.sleep(0.5)


def stop_started_daemon() -> None:
    """Stop the ``dockerd`` that :func:`ensure_daemon` started, if it did."""
    global _started_daemon
    if _started_daemon is not None and _started_daemon.poll() is None:
        _started_daemon.terminate()
        try:
            _started_daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _started_daemon.kill()
    _started_daemon = None


def image_exists(name: str) -> bool:
    """Whether the daemon has an image called ``name``."""
    inspect = ["docker", "image", "inspect", name]
    return subprocess.run(inspect, capture_output=True, timeout=30).returncode == 0


def _recipe_hash() -> str:
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, MIRROR, *PACKAGES, *IMAGE_CONFIG):
        h.update(part.encode() + b"\0")
    if CA_BUNDLE.is_file():
        h.update(CA_BUNDLE.read_bytes())
    return h.hexdigest()[:16]


def _make_rootfs(rootfs: Path) -> None:
    """debootstrap a minimal bookworm with Python 3.11 and pip, then adjust it for a Dockerfile
    written for python:3.11-slim."""
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(PACKAGES),
            SUITE,
            str(rootfs),
            MIRROR,
        ],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    # python:3.11-slim's pip installs anywhere; Debian's refuses outside a venv without this.
    for marker in (rootfs / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    python = rootfs / "usr/bin/python"
    if not python.exists():
        python.symlink_to("python3")
    if CA_BUNDLE.is_file():
        shutil.copyfile(CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
    for package in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        package.unlink()  # not needed in an image


def standin_base_image() -> str:
    """The stand-in base image's name, made (and cached) on first use."""
    name = f"gateway-test-base:{_recipe_hash()}"
    if image_exists(name):
        return name
    tarball = CACHE_DIR / f"base-{name.split(':')[1]}.tar"
    if not tarball.is_file():
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            unavailable("no stand-in base image, and debootstrap (as root) is needed to make it")
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=CACHE_DIR) as tmp:
            rootfs = Path(tmp) / "rootfs"
            _make_rootfs(rootfs)
            partial = tarball.with_suffix(".partial")
            subprocess.run(
                ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
                check=True,
                timeout=600,
            )
            partial.rename(tarball)
    changes = [arg for line in IMAGE_CONFIG for arg in ("--change", line)]
    docker("import", *changes, str(tarball), name, timeout=600)
    return name


def build(tag: str, context: Path, *args: str, timeout: float = 1200) -> float:
    """``docker build`` (the classic builder: Debian's Docker has no buildx); returns seconds."""
    started = time.monotonic()
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    docker("build", "-q", "-t", tag, *args, str(context), timeout=timeout, env=env)
    return time.monotonic() - started


def state(container: str) -> dict[str, object]:
    """The container's ``State`` as ``docker inspect`` shows it."""
    found = json.loads(docker("inspect", "-f", "{{json .State}}", container, timeout=30))
    assert isinstance(found, dict)
    return found


def health(container: str) -> str:
    """``starting``, ``healthy`` or ``unhealthy`` (HEALTHCHECK), or the container's status."""
    st = state(container)
    h = st.get("Health")
    return str(h["Status"]) if isinstance(h, dict) else str(st["Status"])


def wait_healthy(container: str, timeout: float = 90) -> None:
    """Wait until the HEALTHCHECK reports healthy; fail with the container's log if not."""
    deadline = time.monotonic() + timeout
    while (status := health(container)) != "healthy":
        if status in ("unhealthy", "exited", "dead") or time.monotonic() > deadline:
            raise AssertionError(
                f"container {container} is {status}; its log:\n{container_log(container)}"
            )
        time.sleep(0.5)


def container_log(container: str) -> str:
    """What the container wrote to stdout and stderr so far."""
    out = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr


POSTGRES_STANDIN = Path(__file__).with_name("postgres_standin")


def postgres_standin_image(base: str) -> str:
    """A stand-in for the ``postgres`` image (Debian's PostgreSQL 15 on the stand-in base, with
    the official image's POSTGRES_* variables), built once per base and recipe."""
    h = hashlib.sha256(base.encode())
    for path in sorted(POSTGRES_STANDIN.iterdir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    name = f"gateway-test-postgres:{h.hexdigest()[:16]}"
    if not image_exists(name):
        build(name, POSTGRES_STANDIN, "--build-arg", f"BASE={base}")
    return name


def compose_command() -> list[str]:
    """``docker compose`` (the plugin) or ``docker-compose`` (Debian's docker-compose package)."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        try:
            found = subprocess.run([*cmd, "version"], capture_output=True, timeout=30)
        except OSError:
            continue
        if found.returncode == 0:
            return cmd
    unavailable("neither `docker compose` nor `docker-compose` (Debian: docker-compose)")
    raise AssertionError("unreachable")
