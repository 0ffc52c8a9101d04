"""calibrate's link measurement against a link made by the test: a real ggml-rpc-server in its own
network namespace, tbf-limited to a known rate, behind a proxy that adds a known latency. The
figures calibrate writes into cluster.yaml must be the link's, not loopback's."""

from __future__ import annotations

import pytest

from conftest import REQUIRE_HEAVY
from support import netns
from support.native_cluster import NativeCluster, WorkerSpec

pytestmark = pytest.mark.native


@pytest.fixture
def namespaces_ok() -> None:
    why = netns.available()
    if why:
        if REQUIRE_HEAVY:
            pytest.fail(f"{why}: scripts/test.sh installs iproute2 and runs as root")
        pytest.skip(why)


@pytest.mark.parametrize("rate_mbit, one_way_ms", [(40, 2.0), (200, 0.0)])
def test_measured_link_matches_the_shaped_link(native_bin, tmp_path, namespaces_ok, rate_mbit, one_way_ms):
    from hydra_compose.runtime.rpc_link import measure_link

    with NativeCluster(native_bin, tmp_path) as cluster:
        worker = cluster.add(WorkerSpec(threads=1, one_way_ms=one_way_ms, rate_mbit=rate_mbit))
        host, port = worker.dial.rsplit(":", 1)
        link = measure_link(host, int(port))
    rtt_ms, up_mbit, down_mbit = link.rtt_s * 1000, link.up_bytes_s * 8 / 1e6, link.down_bytes_s * 8 / 1e6
    print(f"tbf {rate_mbit} Mbit/s, +{2 * one_way_ms} ms: measured rtt {rtt_ms:.2f} ms, "
          f"up {up_mbit:.1f} down {down_mbit:.1f} Mbit/s")
    assert 2 * one_way_ms <= rtt_ms <= 2 * one_way_ms + 1.5
    # tbf lets a burst (~10 ms of the rate) through at line speed, so a little above the rate is fine
    for measured in (up_mbit, down_mbit):
        assert 0.75 * rate_mbit <= measured <= 1.15 * rate_mbit, (measured, rate_mbit)
    assert link.devices == 1
