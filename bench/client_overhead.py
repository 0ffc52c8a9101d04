"""Client overhead of `hydra-compose bench`: its decode tok/s vs llama-server's own
`predicted_per_second`, on a running cluster (the CPU default unless --url is given).

Usage: python bench/client_overhead.py [--url URL --model M] [--max-tokens N ...]
   (start the cluster first: docker compose -f compose/local/docker-compose.yml up -d --wait)
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> None:
    r = subprocess.run(["hydra-compose", "bench", "--json", "--runs", "3", *sys.argv[1:]], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr.strip())
    data = json.loads(r.stdout)
    print(f"{data['model']} @ {data['url']}")
    print(f"{'run':>3} {'tokens':>6} {'client tok/s':>12} {'server tok/s':>12} {'client/server':>13}")
    worst = 0.0
    for i, run in enumerate(data["runs"], 1):
        ratio = run["tg_tokens_per_s"] / run["server_tg_tokens_per_s"]
        worst = max(worst, abs(ratio - 1))
        print(f"{i:3} {run['completion_tokens']:6} {run['tg_tokens_per_s']:12.2f} "
              f"{run['server_tg_tokens_per_s']:12.2f} {ratio:13.4f}")
    print(f"largest deviation: {100 * worst:.2f} % (target <= 3 %)")


if __name__ == "__main__":
    main()
