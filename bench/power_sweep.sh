#!/usr/bin/env bash
# Sweep one GPU's power limit across its range and plot tok/s and tok/s per W.
# Usage: bench/power_sweep.sh HOST:INDEX [MIN MAX STEP]   e.g. bench/power_sweep.sh mi50-worker:0 120 225 15
# (HOST is a cluster.yaml host with an ssh: entry, or local). Needs root on that host.
set -euo pipefail
gpu=${1:?HOST:INDEX}; lo=${2:-150}; hi=${3:-300}; step=${4:-25}
limits=$(seq -s, "$lo" "$step" "$hi")
hydra-compose bench power-sweep --gpu "$gpu" --limits "$limits" --max-tokens 1024 --runs 2 \
  --out "bench-out/power-${gpu//:/-}"
