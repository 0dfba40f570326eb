#!/usr/bin/env bash
# Configures (once) and builds stasis into build/ with Ninja, RelWithDebInfo.
# Incremental: a second run only rebuilds what changed. Extra arguments are
# passed to the configure step (e.g. -DSTASIS_SANITIZE=ON).
set -euo pipefail

cd "$(dirname "$0")/.."
build_dir=${STASIS_BUILD_DIR:-build}

if [[ -f $build_dir/CMakeCache.txt ]] &&
   ! grep -qx 'CMAKE_GENERATOR:INTERNAL=Ninja' "$build_dir/CMakeCache.txt"; then
  echo "build: $build_dir/ was configured with another generator; remove it and rerun" >&2
  exit 1
fi

# CI's builds treat warnings as errors (STASIS_WERROR; off for users and
# packagers): also in a folder configured before the option existed.
if [[ ! -f $build_dir/build.ninja || $# -gt 0 ]] ||
   ! grep -qx 'STASIS_WERROR:BOOL=ON' "$build_dir/CMakeCache.txt"; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTASIS_WERROR=ON "$@"
fi
# Ninja re-runs CMake by itself when a CMakeLists.txt changed.
cmake --build "$build_dir"
