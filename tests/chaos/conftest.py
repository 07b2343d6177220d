"""One cluster (valkey, gateway, workers) per chaos module; each scenario posts for a bot of its
own, so its counts are its own. `BOTPULSE_TEST_CLICKHOUSE_URL=http://…` runs the workers as
separate processes against that server; unset, one worker process on embedded chDB."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from harness import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    url = os.environ.get("BOTPULSE_TEST_CLICKHOUSE_URL")
    cluster = Cluster(tmp_path_factory.mktemp("chaos"), url)
    try:
        yield cluster
    finally:
        cluster.close()
