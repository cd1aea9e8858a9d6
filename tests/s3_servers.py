"""Real S3 servers for tests: moto's server mode (fast, in process) and a one-node Ceph RGW.

- `moto_server` (session): `moto.server.ThreadedMotoServer` on 127.0.0.1, any credentials.
- `ceph_rgw` (session): `scripts/ceph-rgw.sh start` in a temp dir (monitor, memstore OSD, radosgw on
  free ports), stopped at the end of the session. Where it can't start, tests that need it are
  skipped with the reason, except in CI (`CI=true`), where they fail: the Ceph tier must run there.
- `s3_server`: parametrised over both, so one test body runs against moto and against Ceph.
- `s3_env`: points boto3 (and so `S3Storage`) at a server through the environment, as a user would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CEPH_SCRIPT = REPO / "scripts" / "ceph-rgw.sh"
CEPH_TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "openssl")
REGION = "us-east-1"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    name: str
    endpoint: str
    access_key: str
    secret_key: str
    https_endpoint: str | None = None  # Ceph: topics whose push endpoint holds a password must be created over TLS

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self, service: str = "s3", *, endpoint: str | None = None, verify: bool = True):
        import boto3
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                        response_checksum_validation="when_required", retries={"mode": "standard"})
        return boto3.client(service, endpoint_url=endpoint or self.endpoint, region_name=REGION,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=config, verify=verify)

    def new_bucket(self, stem: str = "vs") -> str:
        name = f"{stem}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server("moto", f"http://127.0.0.1:{port}", "moto-access-key", "moto-secret-key")
    finally:
        server.stop()


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"Ceph RGW tier cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"Ceph RGW not available: {reason}")


@pytest.fixture(scope="session")
def ceph_rgw() -> Iterator[S3Server]:
    missing = [tool for tool in CEPH_TOOLS if shutil.which(tool) is None]
    if missing:
        _unavailable(f"missing {', '.join(missing)} (scripts/setup.sh installs ceph-mon, ceph-osd, radosgw)")
    workdir = Path(tempfile.mkdtemp(prefix="videostudio-ceph-"))
    cluster = workdir / "cluster"
    ports = {"CEPH_MON_PORT": free_port(), "CEPH_RGW_PORT": free_port(), "CEPH_RGW_SSL_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
    try:
        started = subprocess.run(["bash", str(CEPH_SCRIPT), "start", str(cluster)], capture_output=True, text=True,
                                 env=env, timeout=150)
    except subprocess.TimeoutExpired:
        subprocess.run(["bash", str(CEPH_SCRIPT), "stop", str(cluster)], capture_output=True, env=env, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
        _unavailable("scripts/ceph-rgw.sh start took over 150 s")
    if started.returncode != 0:
        subprocess.run(["bash", str(CEPH_SCRIPT), "stop", str(cluster)], capture_output=True, env=env, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
        _unavailable(f"scripts/ceph-rgw.sh start exited {started.returncode}:\n{started.stdout}\n{started.stderr[-3000:]}")
    values = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
    try:
        yield S3Server("ceph", values["endpoint"], values["access_key"], values["secret_key"],
                       https_endpoint=values.get("https_endpoint"))
    finally:
        subprocess.run(["bash", str(CEPH_SCRIPT), "stop", str(cluster)], capture_output=True, env=env, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["moto", pytest.param("ceph", marks=pytest.mark.ceph)])
def s3_server(request) -> S3Server:
    return request.getfixturevalue("ceph_rgw" if request.param == "ceph" else "moto_server")


@pytest.fixture
def s3_env(monkeypatch):
    """Point boto3 at `server` through the environment: `s3_env(server)`."""

    def apply(server: S3Server) -> S3Server:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS", "VIDEOSTUDIO_S3_ENDPOINT",
                     "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        return server

    return apply
