"""The plan against llama.cpp itself: start real workers and llama-server with the
plan's arguments, read its -lv 4 log, and compare every device's bytes.

Every architecture runs twice: at a fixed context, and at the context the
planner picks itself on small workers (where KV, state and masks dominate)."""

from __future__ import annotations

import pytest

from conftest import REQUIRE_HEAVY
from support.accuracy import CASES, model_path, run_case, tolerance

MiB = 1024 * 1024
pytestmark = pytest.mark.native


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_matches_llama_server(case, native_bin, model_dir, tmp_path):
    path = model_path(case.model, model_dir)
    if path is None:
        if REQUIRE_HEAVY:
            pytest.fail(f"{case.model} is not installed: scripts/test.sh installs it")
        pytest.skip(f"{case.model} is not installed")
    plan, log = run_case(case, path, native_bin, tmp_path)
    assert bool(plan.experts_on_host) == case.offload
    if case.offload:  # the experts the plan keeps on the host are in the master's RAM, not on a device
        assert log.host.model_bytes >= plan.host.expert_bytes
    assert set(log.devices) == {d.slot.id for d in plan.devices}
    for d in plan.devices:
        actual = log.devices[d.slot.id]
        # weights, KV and recurrent state match to the byte (log rounding aside)
        assert actual.model_bytes == pytest.approx(d.weights_bytes, abs=0.01 * MiB)
        assert actual.kv_bytes == pytest.approx(d.kv_bytes, abs=0.01 * MiB)
        assert actual.rs_bytes == pytest.approx(d.state_bytes, abs=0.01 * MiB)
        assert abs(actual.total_bytes - d.total_bytes) <= tolerance(d.total_bytes), (
            d.slot.id, actual.total_bytes / MiB, d.total_bytes / MiB)
        assert d.total_bytes <= d.slot.budget_bytes
    assert len(log.layer_devices) == plan.model.n_layer + 1 and "CPU" not in log.layer_devices
