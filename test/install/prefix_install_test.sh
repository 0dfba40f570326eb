#!/usr/bin/env bash
# install.prefix (test/install/CMakeLists.txt): a prefix install is complete
# and relocatable, as HPC sites install software (versioned prefixes loaded
# with environment modules). From an existing build folder:
#   1. `cmake --install B --prefix P` (P under a private folder): every file
#      the install manifest lists is under P, the expected files are there,
#      the systemd unit names P's stasisd and configuration;
#   2. with an empty environment (no LD_LIBRARY_PATH, no STASIS_*): P's
#      stasisd finds P's configuration; a BLCR program built with P's libcr.h
#      and `pkg-config libcr` runs under P's cr_run, P's cr_checkpoint
#      captures it (--kill) and P's cr_restart brings it back: it continues
#      its count with its memory checked and its libcr callback told it
#      restarted;
#   3. the same after `mv P P2`;
#   4. `module load stasis` from P2's modulefile with Lmod: PATH, MANPATH,
#      PKG_CONFIG_PATH point into P2, the same C/R works with plain command
#      names, and `module unload` takes it all away again;
#   5. `DESTDIR=S cmake --install B --prefix /opt/stasis/V`: everything lands
#      under S/opt/stasis/V and the manifest lists only such paths.
#
# usage: prefix_install_test.sh CMAKE BUILD_DIR VERSION SOURCE_DIR
# Needs root (cr_restart restores the original pid only as root, which the
# program's own check does not need; it is for cr_checkpoint of any process)
# and a C compiler; prints "SKIPPED: <why>" and exits 77 when something it
# needs is missing (ci/setup.sh installs all of it). A failing run keeps its
# folder and prints its path.
set -euo pipefail

if [[ $# -ne 4 ]]; then
  echo "usage: $0 CMAKE BUILD_DIR VERSION SOURCE_DIR" >&2
  exit 2
fi
cmake=$1
build=$2
version=$3
src=$4

skip() {
  echo "SKIPPED: $*"
  exit 77
}
fail() {
  echo "FAIL install.prefix: $*" >&2
  exit 1
}
say() { echo "install.prefix: $*"; }

[[ $(id -u) -eq 0 ]] || skip "needs root (cr_checkpoint of a process without stasisd)"
command -v cc >/dev/null || skip "no C compiler (cc)"
command -v pkg-config >/dev/null || skip "no pkg-config"
lmod_init=/usr/share/lmod/lmod/init/bash
[[ -r $lmod_init ]] || skip "Lmod is not installed ($lmod_init; ci/setup.sh installs lmod)"

tmp=$(mktemp -d /tmp/stasis-prefix-test.XXXXXX)
chmod 0755 "$tmp"
pids=()
cleanup() {
  local rc=$?
  set +e
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  if [[ $rc -eq 0 || $rc -eq 77 ]]; then
    rm -rf "$tmp"
  else
    echo "install.prefix: failed; its folder is kept: $tmp" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT

# --- 1. Install into a versioned prefix.
prefix=$tmp/opt/stasis/$version
say "cmake --install $build --prefix $prefix"
"$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log" >&2; fail "cmake --install --prefix failed"; }
cp "$build/install_manifest.txt" "$tmp/manifest.txt"
outside=$(grep -v "^$prefix/" "$tmp/manifest.txt" || true)
[[ -z $outside ]] || fail "files installed outside the prefix $prefix:"$'\n'"$outside"
libdir=$(dirname "$(grep '/libcr\.so\.0$' "$tmp/manifest.txt" | head -n 1)")
[[ -n $libdir && $libdir != . ]] || fail "the manifest lists no libcr.so.0"
rel_libdir=${libdir#"$prefix"/}
for f in bin/cr_run bin/cr_checkpoint bin/cr_restart bin/stasis sbin/stasisd \
  "$rel_libdir/libcr.so.0" "$rel_libdir/pkgconfig/libcr.pc" include/libcr.h \
  share/man/man1/cr_run.1.gz share/man/man8/stasisd.8.gz lib/systemd/system/stasisd.service \
  etc/stasis/stasis.yaml "share/modulefiles/stasis/$version"; do
  [[ -e $prefix/$f ]] || fail "$f is missing under the prefix $prefix"
done
grep -qx "ExecStart=$prefix/sbin/stasisd --config $prefix/etc/stasis/stasis.yaml" \
  "$prefix/lib/systemd/system/stasisd.service" ||
  fail "the unit does not name this prefix's stasisd and configuration:"$'\n'"$(grep ExecStart "$prefix/lib/systemd/system/stasisd.service")"
say "$(wc -l <"$tmp/manifest.txt") files, all under the prefix"

# A run with an empty environment: only PATH for cc and the shell's tools.
clean() { env -i PATH=/usr/bin:/bin HOME="$tmp" "$@"; }

# Builds the counter against the prefix P with pkg-config, runs it under
# cr_run, checkpoints it with --kill once it counted to 15, restarts it and
# checks that it went on from there to the end. $1: label; $2: prefix, or
# "" to use plain command names (a loaded module); further args: the
# environment wrapper.
cr_cycle() {
  local label=$1 p=$2
  shift 2
  local wrap=("$@") bin="" pc_env=()
  [[ -n $p ]] && bin=$p/bin/
  [[ -n $p ]] && pc_env=(PKG_CONFIG_PATH="$p/$rel_libdir/pkgconfig")
  local dir=$tmp/$label
  mkdir -p "$dir"
  local flags
  flags=$("${wrap[@]}" env "${pc_env[@]}" pkg-config --cflags --libs libcr) ||
    fail "$label: pkg-config --cflags --libs libcr failed"
  # shellcheck disable=SC2086  # the flags are words
  "${wrap[@]}" cc -O1 -o "$dir/counter" "$src/test/install/libcr_counter.c" $flags \
    2>"$dir/cc.log" || { cat "$dir/cc.log" >&2; fail "$label: building against libcr failed"; }
  local out=$dir/out
  "${wrap[@]}" "${bin}cr_run" "$dir/counter" "$out" 60 >"$dir/run.log" 2>&1 &
  local runner=$!
  pids+=("$runner")
  local n=0 pid=""
  for _ in $(seq 1 500); do
    n=$(grep -c '^count ' "$out" 2>/dev/null || true)
    [[ $n -ge 15 ]] && break
    kill -0 "$runner" 2>/dev/null || fail "$label: the counter ended early: $(cat "$dir/run.log" "$out")"
    sleep 0.02
  done
  [[ $n -ge 15 ]] || fail "$label: the counter did not reach 15 under cr_run"
  pid=$(awk '$1 == "pid" {print $2; exit}' "$out")
  [[ -n $pid ]] || fail "$label: the counter did not say its pid"
  pids+=("$pid")
  "${wrap[@]}" "${bin}cr_checkpoint" --no-daemon --kill -f "$dir/ctx" "$pid" \
    >"$dir/ckpt.log" 2>&1 || { cat "$dir/ckpt.log" >&2; fail "$label: cr_checkpoint failed"; }
  wait "$runner" 2>/dev/null || true
  local before
  before=$(grep -c '^count ' "$out")
  "${wrap[@]}" "${bin}cr_restart" --no-daemon "$dir/ctx" >"$dir/restart.log" 2>&1 ||
    { cat "$dir/restart.log" "$out" >&2; fail "$label: cr_restart (or the restarted counter) failed"; }
  grep -qx 'done' "$out" || fail "$label: the restarted counter did not finish: $(tail -n 3 "$out")"
  grep -qx restarted "$out" || fail "$label: libcr's callback was not told of the restart"
  grep -q 'bad memory' "$out" && fail "$label: the restarted counter found its memory changed"
  # Every count exactly once, in order: the restart went on where it stopped.
  local counts
  counts=$(grep '^count ' "$out" | awk '{print $2}' | tr '\n' ' ')
  [[ $counts == "$(seq -s ' ' 1 60) " ]] || fail "$label: counts are not 1..60 once each: $counts"
  say "$label: checkpointed at count $before, restarted, counted on to 60"
}

check_prefix() {
  local label=$1 p=$2
  local conf
  conf=$(clean "$p/sbin/stasisd" --check-config 2>&1) || fail "$label: stasisd --check-config: $conf"
  [[ $conf == "$p/etc/stasis/stasis.yaml: ok" ]] ||
    fail "$label: stasisd does not read its own prefix's configuration: $conf"
  local runpath
  runpath=$(readelf -d "$p/bin/cr_restart" | grep -E 'RUNPATH|RPATH' || true)
  # shellcheck disable=SC2016  # the literal $ORIGIN
  [[ $runpath == *'$ORIGIN'* ]] || fail "$label: cr_restart has no relative run path: $runpath"
  cr_cycle "$label" "$p" clean
}

# --- 2. The prefix as installed, empty environment.
check_prefix installed "$prefix"

# --- 3. The prefix moved elsewhere.
moved=$tmp/moved/apps/stasis/$version
mkdir -p "$(dirname "$moved")"
mv "$prefix" "$moved"
check_prefix moved "$moved"

# --- 4. `module load stasis` (Lmod) from the moved prefix's modulefile.
cat >"$tmp/module.sh" <<MOD
set -euo pipefail
source $lmod_init
module use $moved/share/modulefiles
module load stasis
[[ \$(command -v cr_run) == $moved/bin/cr_run ]] || { echo "cr_run is \$(command -v cr_run)"; exit 1; }
[[ \$(pkg-config --modversion libcr) == $version ]] || { echo "pkg-config libcr: \$(pkg-config --modversion libcr)"; exit 1; }
[[ \$(man -w cr_checkpoint) == $moved/share/man/* ]] || { echo "man -w: \$(man -w cr_checkpoint)"; exit 1; }
[[ \$STASIS_PREFIX == $moved ]] || { echo "STASIS_PREFIX=\$STASIS_PREFIX"; exit 1; }
"\$@"
module unload stasis
if command -v cr_run >/dev/null; then echo "cr_run still found after unload"; exit 1; fi
MOD
module_run() { clean bash "$tmp/module.sh" "$@"; }
module_run true >"$tmp/module.log" 2>&1 ||
  { cat "$tmp/module.log" >&2; fail "module load stasis did not set up the environment"; }
cr_cycle module "" module_run
say "module load/unload with Lmod from $moved"

# --- 5. A staged install (DESTDIR).
stage=$tmp/stage
say "DESTDIR=$stage cmake --install $build --prefix /opt/stasis/$version"
DESTDIR=$stage "$cmake" --install "$build" --prefix "/opt/stasis/$version" \
  >"$tmp/stage.log" 2>&1 || { cat "$tmp/stage.log" >&2; fail "the staged install failed"; }
# The manifest names the installed paths (without DESTDIR).
outside=$(grep -v "^/opt/stasis/$version/" "$build/install_manifest.txt" || true)
[[ -z $outside ]] || fail "the staged manifest lists paths outside the prefix:"$'\n'"$outside"
stray=$(cd "$stage" && { find . -mindepth 1 | grep -vE "^\./opt($|/stasis($|/$version($|/)))" || true; })
[[ -z $stray ]] || fail "the staged install wrote outside the prefix:"$'\n'"$stray"
say "staged: $(wc -l <"$build/install_manifest.txt") files, all under /opt/stasis/$version in $stage"
say "ok"
