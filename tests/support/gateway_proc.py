"""Running a real ``gateway serve`` process for end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GATEWAY = [sys.executable, "-m", "gateway"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    """A ``gateway serve`` subprocess on a free port with its own data and mappings dirs."""

    def __init__(self, root: Path, groups: tuple[str, ...] = ("demo", "other"), **env: str) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.mappings = root / "mappings"
        self.mappings.mkdir(parents=True, exist_ok=True)
        for group in groups:
            src = REPO / "mappings" / f"{group}.yaml"
            dst = self.mappings / f"{group}.yaml"
            if src.exists():
                shutil.copy(src, dst)
            else:
                dst.write_text(f"group_key: {group}\nintegrations: []\n")
        self.port = free_port()
        self.env = {
            **os.environ,
            "GATEWAY_DATA_DIR": str(self.data_dir),
            "GATEWAY_MAPPINGS": str(self.mappings),
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_MASTER_KEY": "",
            **env,
        }
        self.command = list(GATEWAY)  # what `start` runs, with "serve" appended
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / f"gateway-{self.port}.log"

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``gateway`` command against the same store."""
        return subprocess.run(
            [*GATEWAY, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            cwd=self.root,
        )

    def create_key(self, *groups: str, **opts: str) -> tuple[str, str]:
        """A new access key for ``groups``: (id, secret)."""
        args = ["keys", "create", "--json"]
        for g in groups:
            args += ["--group", g]
        for k, v in opts.items():
            args += [f"--{k.replace('_', '-')}", v]
        out = json.loads(self.cli(*args).stdout)
        return out["access_key_id"], out["secret_access_key"]

    def start(self, *extra: str, timeout: float = 20.0) -> GatewayProcess:
        """Start serving and wait until /healthz answers."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            [*self.command, "serve", *extra],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not become healthy:\n{self.output()}")

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` and wait; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL, no chance to clean up."""
        self.stop(signal.SIGKILL)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict]:
        """A plain (unsigned unless headers say so) request; returns status and JSON body."""
        req = urllib.request.Request(
            self.url + path, data=body, headers=headers or {}, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
