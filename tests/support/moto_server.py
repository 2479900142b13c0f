"""moto's server, started on a free local port with signature checking on.

``INITIAL_NO_AUTH_ACTION_COUNT`` lets the first few calls through unsigned-checked (creating
an IAM user, its policy and access key); every call after that must be signed with a key
moto knows, and a wrong secret gets AWS's own ``SignatureDoesNotMatch``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from tests.support.gateway_proc import free_port

# The setup calls: create_user, put_user_policy, create_access_key.
SETUP_CALLS = 3


@dataclass
class MotoServer:
    """A running moto server and an IAM user's key that may do everything."""

    url: str
    access_key_id: str
    secret_access_key: str
    proc: subprocess.Popen[bytes]
    region: str = "us-east-1"

    def client(self, service: str, **kw: Any) -> Any:
        """A boto3 client signed with the user's key (for setting up and checking)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=kw.pop("access_key_id", self.access_key_id),
            aws_secret_access_key=kw.pop("secret_access_key", self.secret_access_key),
            **kw,
        )

    def connection(self, **extra: str) -> dict[str, str]:
        """An AWS integration's connection block pointing at this server (keys via ${ENV})."""
        return {
            "region": self.region,
            "endpoint_url": self.url,
            "access_key_id": "${MOTO_KEY_ID}",
            "secret_access_key": "${MOTO_SECRET}",
            **extra,
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_moto() -> MotoServer:
    """Start moto's server and make the IAM user; raise if it does not come up."""
    import boto3

    port = free_port()
    env = {
        **os.environ,
        "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS),
        "MOTO_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIASETUPSETUPSETUP0",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="gateway")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="gateway", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="gateway")["AccessKey"]
    return MotoServer(url, key["AccessKeyId"], key["SecretAccessKey"], proc)
