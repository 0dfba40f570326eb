#!/usr/bin/env bash
# Checks that every C and C++ file git tracks is formatted as the project's
# .clang-format says (issue 19, item 5). Prints one line per file that
# clang-format would change and how to fix it; exits 1 if there is any.
#
#   ci/check_format.sh [--selftest] [SOURCE_DIR]
#
# --selftest first proves, on a badly formatted file made up for it, that the
# check can fail. Files git does not track (build folders) are never
# checked, nor is kmod/: kernel code keeps the kernel's own style (tabs,
# checked by the kernel's scripts/checkpatch.pl), not ours. The unit-tier
# CTest test `format` runs
# this with --selftest; `clang-format -i FILE` (or
# `git diff -U0 | clang-format-diff-14 -p1 -i` for changed lines) fixes a file.
set -euo pipefail

selftest=0
if [[ ${1:-} == --selftest ]]; then
  selftest=1
  shift
fi
src=${1:-$(dirname "$0")/..}
cd "$src"

fmt=
for candidate in clang-format-14 clang-format; do
  if command -v "$candidate" >/dev/null; then
    fmt=$candidate
    break
  fi
done
if [[ -z $fmt ]]; then
  echo "SKIPPED: clang-format is not installed (ci/setup.sh installs it)"
  exit 0
fi

if ((selftest)); then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cp .clang-format "$tmp/"
  printf 'int  main( ) {return 0 ;}\n' >"$tmp/bad.cc"
  if (cd "$tmp" && "$fmt" --dry-run --Werror bad.cc) >/dev/null 2>&1; then
    echo "format selftest: $fmt accepted a badly formatted file; the check cannot fail" >&2
    exit 1
  fi
fi

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "SKIPPED: $PWD is not a git checkout (the check walks git's list of files)"
  exit 0
fi

bad=0
while IFS= read -r -d '' file; do
  if ! "$fmt" --dry-run --Werror "$file" >/dev/null 2>&1; then
    echo "$file: not formatted as .clang-format says; run: $fmt -i $file"
    bad=1
  fi
done < <(git ls-files -z -- '*.c' '*.cc' '*.h' '*.cpp' '*.hpp' ':!kmod/')
if ((bad)); then
  exit 1
fi
echo "format: every tracked C/C++ file matches .clang-format ($fmt)"
