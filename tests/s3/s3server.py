"""A real S3-compatible server: SeaweedFS ``weed mini`` on 127.0.0.1 (see RECIPES.md §1).

:func:`run_seaweed` starts one with three buckets: ``lancell`` (general), ``lancell-arrays`` (only the
request-accounting test writes there, so its per-bucket counters are clean) and ``lancell-public``, which
an ``anonymous`` identity may read and list (public-bucket reads with ``skip_signature``). Used by the
fixtures in ``conftest.py`` and by ``benchmarks/scale.py``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.request import urlopen

import obstore
import obstore.store as obs_store

if TYPE_CHECKING:
    import pytest

WEED = Path(sysconfig.get_path("scripts")) / "weed"
BUCKET = "lancell"
ARRAYS_BUCKET = "lancell-arrays"
PUBLIC_BUCKET = "lancell-public"
ACCESS_KEY = "lancell-test-key"
SECRET_KEY = "lancell-test-secret-do-not-persist"
# weed sizes its volumes by the disk (up to 1 GiB) and makes free space // size of them: pinned small, a
# nearly full disk still holds volumes (one CI run found none with 1.7 GiB free and every PUT timed out).
VOLUME_MB = 64
# weed uses ports P..P+4 (master, volume, filer, s3, admin), P+5 for metrics and P+10000.. for gRPC.
_PORT_OFFSETS = (0, 1, 2, 3, 4, 5, 10_000, 10_001, 10_002, 10_003, 10_004)
_METRIC = re.compile(r'SeaweedFS_s3_request_total\{bucket="([^"]*)",code="(\d+)",type="(\w+)"\} (\d+)')


@dataclass(frozen=True)
class Seaweed:
    """A running ``weed mini``: where its S3 endpoint and metrics are, and the test credentials."""

    base_port: int
    directory: Path
    pid: int | None = None  # the weed process (a test may SIGSTOP it to freeze the server)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.base_port + 3}"

    @property
    def master(self) -> str:
        return f"127.0.0.1:{self.base_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.base_port + 5}/metrics"

    def store_kwargs(self, *, credentials: bool = True) -> dict[str, Any]:
        """``obstore.store.from_url`` keyword arguments (one set serves the store and LanceDB)."""
        config: dict[str, Any] = {"endpoint": self.endpoint, "region": "us-east-1"}
        if credentials:
            config |= {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}
        else:
            config["skip_signature"] = True
        return {"config": config, "client_options": {"allow_http": True}}

    def store(self, bucket: str = BUCKET, **kwargs: Any) -> obs_store.S3Store:
        """An obstore store on ``bucket`` with the admin credentials."""
        return obs_store.from_url(f"s3://{bucket}", **self.store_kwargs(), **kwargs)

    def request_counts(self, bucket: str) -> Counter[str]:
        """Requests answered so far for ``bucket``, by ``"<TYPE> <code>"`` (e.g. ``"GET 206"``)."""
        text = urlopen(self.metrics_url, timeout=10).read().decode()
        counts: Counter[str] = Counter()
        for name, code, kind, value in _METRIC.findall(text):
            if name == bucket:
                counts[f"{kind} {code}"] += int(value)
        return counts

    def shell(self, command: str) -> str:
        """Run one ``weed shell`` command against this server; return its output."""
        done = subprocess.run(
            [str(WEED), "shell", f"-master={self.master}"],
            input=command + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout


def deployment_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """The S3 settings and credentials of the test server at ``endpoint`` in the environment only, as in a
    deployment."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)


def _ports_free(base: int) -> bool:
    for offset in _PORT_OFFSETS:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", base + offset))
            except OSError:
                return False
    return True


def _free_base_port() -> int:
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(200):
        base = rng.randrange(20_000, 29_000, 10)
        if _ports_free(base):
            return base
    raise RuntimeError("no free port range for seaweedfs in 20000-29000")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, 5 s grace, then SIGKILL (it can hang for 30 s after LanceDB use)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def _remove_sockets(base: int, *folders: Path) -> None:
    for folder in folders:
        for offset in _PORT_OFFSETS:
            for leftover in folder.glob(f"seaweedfs-*-{base + offset}.sock"):
                leftover.unlink(missing_ok=True)


def _wait_ready(server: Seaweed, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for the first PUT that lands in a volume (an empty object lives in the filer alone)."""
    probe = server.store(retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=timeout)})
    deadline = time.monotonic() + timeout
    while True:
        try:
            obstore.put(probe, ".ready", b"ready")
            return
        except Exception as exc:  # any error before the first successful PUT means "not up yet"
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"seaweedfs did not start ({exc})") from exc
            time.sleep(0.1)


@contextlib.contextmanager
def run_seaweed(directory: Path) -> Iterator[Seaweed]:
    """Start ``weed mini`` under ``directory`` (retrying on a port clash); stop it and clean up on exit."""
    for attempt in range(3):
        base = _free_base_port()
        server = Seaweed(base, directory / f"weed-{base}")
        server.directory.mkdir(parents=True)
        env = os.environ | {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "TMPDIR": str(server.directory),  # its unix sockets land here, not in /tmp
        }
        command = [
            str(WEED),
            "mini",
            f"-dir={server.directory / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={VOLUME_MB}",
            f"-bucket={BUCKET},{ARRAYS_BUCKET},{PUBLIC_BUCKET}",
            f"-master.port={base}",
            f"-volume.port={base + 1}",
            f"-filer.port={base + 2}",
            f"-s3.port={base + 3}",
            f"-admin.port={base + 4}",
            f"-metricsPort={base + 5}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        log = (server.directory / "weed.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_ready(server, process, timeout=30)
            server.shell(f"s3.configure -user=anonymous -actions=Read,List -buckets={PUBLIC_BUCKET} -apply")
        except (RuntimeError, subprocess.SubprocessError) as exc:
            _stop(process)
            log.close()
            _remove_sockets(base, server.directory, Path(tempfile.gettempdir()))
            if attempt == 2:
                tail = (server.directory / "weed.log").read_text(errors="replace")[-2000:]
                free = f"{shutil.disk_usage(server.directory).free / 2**30:.1f} GiB free under {directory}"
                raise RuntimeError(f"{exc}; {free}; weed log:\n{tail}") from exc
            continue
        try:
            yield replace(server, pid=process.pid)
        finally:
            _stop(process)
            log.close()
            _remove_sockets(base, server.directory, Path(tempfile.gettempdir()))
        return
