#!/usr/bin/env bash
# Long generations against your cluster's master (cluster.yaml next to you):
# 5 runs of 2048 forced tokens, then 4 parallel streams; results in bench-out/.
set -euo pipefail
hydra-compose bench --runs 5 --max-tokens 2048 --out bench-out/single "$@"
hydra-compose bench --runs 3 --max-tokens 1024 --concurrency 4 --out bench-out/parallel4 "$@"
