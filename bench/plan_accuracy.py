"""Planned vs actual memory per device, for every architecture and test shape.

Starts 2-3 CPU workers on loopback and llama-server with each plan's arguments
(the cases of tests/support/accuracy.py: a fixed context, and the context the
planner picks itself on small workers), then prints what llama-server reports
allocating (model + KV + recurrent state + compute, from its -lv 4 log) next to
the plan, and the worst deviation per architecture.
Usage: python bench/plan_accuracy.py [--json FILE]   (needs scripts/build-llama-native.sh)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.paths import NATIVE_BIN  # noqa: E402
from support.accuracy import CASES, model_path, run_case, tolerance  # noqa: E402

from support.synthetic import ARCH_SHAPES, TEST_SHAPES, write_gguf  # noqa: E402

MiB = 1024 * 1024


def main() -> None:
    bin_dir = NATIVE_BIN
    work = Path(tempfile.mkdtemp(prefix="plan-accuracy-"))
    for s in TEST_SHAPES + ARCH_SHAPES:
        write_gguf(work / f"{s.name}.gguf", s)
    print(f"{'case':44} {'device':26} {'ctx':>7} {'planned MiB':>11} {'actual MiB':>10} {'diff MiB':>8} "
          f"{'diff %':>6} {'ok':>3}")
    rows, worst = [], {}
    for case in CASES:
        path = model_path(case.model, work)
        if path is None:
            print(f"{case.id}: model not installed, skipped")
            continue
        plan, log = run_case(case, path, bin_dir, work / "run")
        for d in plan.devices:
            actual = log.devices[d.slot.id].total_bytes
            diff = actual - d.total_bytes
            ok = abs(diff) <= tolerance(d.total_bytes)
            worst[case.model] = max(worst.get(case.model, 0.0), abs(diff) / MiB)
            rows.append({"case": case.id, "device": d.slot.id, "ctx": plan.ctx, "planned": d.total_bytes,
                         "actual": actual, "ok": ok})
            print(f"{case.id:44} {d.slot.id:26} {plan.ctx:7} {d.total_bytes / MiB:11.2f} {actual / MiB:10.2f} "
                  f"{diff / MiB:8.2f} {100 * diff / actual:6.2f} {'yes' if ok else 'NO':>3}")
    print("\nworst |actual - planned| per model (target: max(2 %, 16 MiB) per device):")
    for name, mib in worst.items():
        print(f"  {name:14} {mib:6.2f} MiB")
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} devices within target")
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
