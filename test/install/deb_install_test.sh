#!/usr/bin/env bash
# install.deb (test/install/CMakeLists.txt): the Debian package installs,
# works and purges cleanly. Builds the .deb from an existing build folder
# with cpack (into a private folder), installs it with apt-get, checks the
# installed binaries, library, header, pkg-config file, man pages, systemd
# unit and configuration, runs the installed stasisd in the foreground with
# a private socket and state folder and asks it `stasis status` and
# `stasis ping`, checkpoints a process with the installed tools, then
# purges the package and checks that its files are gone.
#
# usage: deb_install_test.sh CPACK BUILD_DIR VERSION
# Needs root, apt-get and dpkg; prints "SKIPPED: <why>" and exits 77
# otherwise, or when a stasis installation already exists on this machine
# (the test would overwrite and purge it). A failing run keeps its folder
# (cpack, apt and stasisd logs) and prints its path.
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: $0 CPACK BUILD_DIR VERSION" >&2
  exit 2
fi
cpack=$1
build=$2
version=$3

skip() {
  echo "SKIPPED: $*"
  exit 77
}
fail() {
  echo "FAIL install.deb: $*" >&2
  exit 1
}
say() { echo "install.deb: $*"; }

[[ $(id -u) -eq 0 ]] || skip "needs root (installs the .deb into this system)"
for tool in apt-get dpkg dpkg-deb dpkg-query; do
  command -v "$tool" >/dev/null || skip "no $tool (not a Debian system)"
done
[[ -f $build/CPackConfig.cmake ]] ||
  fail "no $build/CPackConfig.cmake (is cmake/Packaging.cmake included?)"

# Never touch an installation this test did not make.
status=$(dpkg-query -W -f='${db:Status-Status}' stasis 2>/dev/null || true)
if [[ -n $status && $status != not-installed ]]; then
  skip "package stasis is already here (state: $status); this test would replace and purge it"
fi
for f in /usr/bin/cr_checkpoint /usr/bin/cr_restart /usr/sbin/stasisd /etc/stasis/stasis.yaml; do
  [[ ! -e $f ]] || skip "$f exists (installed without the package); this test would overwrite and purge it"
done

# The environment of the caller must not steer the installed tools.
unset STASIS_SOCKET STASIS_LIBCR STASIS_OMIT PKG_CONFIG_PATH LD_PRELOAD

multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || true)
[[ -n $multiarch ]] || multiarch=$(gcc -print-multiarch 2>/dev/null || true)
[[ -n $multiarch ]] || multiarch=x86_64-linux-gnu
libdir=/usr/lib/$multiarch

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o DPkg::Lock::Timeout=120 -o Dpkg::Options::=--force-confdef
  -o Dpkg::Options::=--force-confold)

tmp=$(mktemp -d /tmp/stasis-deb-test.XXXXXX)
# apt-get reads the .deb as user _apt: the folder must be readable.
chmod 0755 "$tmp"
installed=0
made_policy=0
daemon_pid=
target_pid=
policy=/usr/sbin/policy-rc.d

cleanup() {
  local rc=$?
  set +e
  [[ -n $target_pid ]] && kill -KILL "$target_pid" 2>/dev/null
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -KILL "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null
  fi
  if [[ $installed -eq 1 ]]; then
    say "purging the package after a failure"
    apt-get "${apt_opts[@]}" purge stasis </dev/null >>"$tmp/apt.log" 2>&1 ||
      dpkg --purge stasis >>"$tmp/apt.log" 2>&1
  fi
  [[ $made_policy -eq 1 ]] && rm -f "$policy"
  if [[ $rc -eq 0 || $rc -eq 77 ]]; then
    rm -rf "$tmp"
  else
    echo "install.deb: failed; logs kept in $tmp" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT

# Package scripts must not start the system's stasisd.service (on a machine
# that runs systemd): this test starts its own stasisd.
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  made_policy=1
fi

# --- Build the package, privately.
say "cpack -G DEB from $build"
if ! "$cpack" -G DEB -B "$tmp/pkg" --config "$build/CPackConfig.cmake" >"$tmp/cpack.log" 2>&1; then
  cat "$tmp/cpack.log" >&2
  fail "cpack -G DEB failed"
fi
shopt -s nullglob
debs=("$tmp"/pkg/stasis_*.deb)
shopt -u nullglob
[[ ${#debs[@]} -eq 1 ]] || fail "expected one stasis_*.deb in $tmp/pkg, found ${#debs[@]}"
deb=${debs[0]}
chmod 0644 "$deb"
say "built $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB)"
# Nothing outside /usr, the unit folder and /etc/stasis.
stray=$(dpkg-deb -c "$deb" | awk '{print $6}' |
  grep -vE '^\./($|usr/|lib/$|lib/systemd/($|system/($|stasisd\.service$))|etc/$|etc/stasis/($|stasis\.yaml$))' || true)
[[ -z $stray ]] || fail "the package holds unexpected paths:"$'\n'"$stray"

info=$(dpkg-deb -I "$deb")
for field in "Package: stasis" "Version: $version" "Section: admin" \
  "Maintainer: stasis developers <stasis@localhost>"; do
  grep -qF " $field" <<<"$info" || fail "control file lacks '$field':"$'\n'"$info"
done
grep -q '^ Depends:.*libc6' <<<"$info" || fail "no shared-library dependencies (shlibdeps):"$'\n'"$info"
dpkg-deb -I "$deb" conffiles 2>/dev/null | grep -qx '/etc/stasis/stasis.yaml' ||
  fail "the package does not mark /etc/stasis/stasis.yaml as a conffile"

# --- Install it as a user would.
say "apt-get install ./$(basename "$deb")"
installed=1
if ! (cd "$tmp/pkg" && apt-get "${apt_opts[@]}" install --no-install-recommends \
  "./$(basename "$deb")" </dev/null >"$tmp/apt.log" 2>&1); then
  cat "$tmp/apt.log" >&2
  fail "apt-get install of the package failed"
fi
status=$(dpkg-query -W -f='${db:Status-Status}' stasis 2>/dev/null || true)
[[ $status == installed ]] || fail "package state after install: '$status'"

# --- What it installed.
for f in /usr/bin/cr_run /usr/bin/cr_checkpoint /usr/bin/cr_restart /usr/bin/stasis \
  /usr/sbin/stasisd; do
  [[ -f $f && -x $f ]] || fail "$f is missing or not executable"
  if ldd "$f" | grep -q 'not found'; then
    fail "$f: missing libraries: $(ldd "$f" | grep 'not found' | tr -s ' \t\n' ' ')"
  fi
done
for tool in cr_run cr_checkpoint cr_restart stasis stasisd; do
  [[ $tool == stasisd ]] && bin=/usr/sbin/$tool || bin=/usr/bin/$tool
  "$bin" --help >/dev/null 2>&1 || fail "$bin --help does not exit 0"
done
[[ -e $libdir/libcr.so.0 ]] || fail "$libdir/libcr.so.0 is missing"
[[ -f /usr/include/libcr.h ]] || fail "/usr/include/libcr.h is missing"
[[ -f $libdir/pkgconfig/libcr.pc ]] || fail "$libdir/pkgconfig/libcr.pc is missing"
if command -v pkg-config >/dev/null; then
  got=$(pkg-config --modversion libcr) || fail "pkg-config --modversion libcr fails"
  [[ $got == "$version" ]] || fail "pkg-config --modversion libcr says '$got', expected '$version'"
  got=$(pkg-config --variable=libdir libcr)
  [[ $got == "$libdir" ]] || fail "libcr.pc has libdir '$got', expected '$libdir'"
else
  say "no pkg-config here: checked that libcr.pc exists only"
fi
# cr_run must find the installed libcr through the path compiled into it.
# shellcheck disable=SC2016  # expanded by the sh that cr_run starts
got=$(/usr/bin/cr_run sh -c 'printf %s "$LD_PRELOAD"') || fail "cr_run sh fails"
[[ $got == "$libdir/libcr.so.0"* ]] || fail "cr_run preloads '$got', expected $libdir/libcr.so.0"

man_pages=("1 cr_run" "1 cr_checkpoint" "1 cr_restart" "1 stasis" "5 stasis.yaml" "8 stasisd")
if grep -qs '^path-exclude=/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
  # A minimal image that drops man pages at install: check the package.
  listing=$(dpkg-deb -c "$deb")
  for page in "${man_pages[@]}"; do
    read -r sec name <<<"$page"
    grep -qE "/usr/share/man/man$sec/$name\\.$sec(\\.gz)?\$" <<<"$listing" ||
      fail "the package has no man page $name($sec)"
  done
  say "dpkg excludes /usr/share/man here: checked the man pages in the package"
elif command -v man >/dev/null && man -w man >/dev/null 2>&1; then
  for page in "${man_pages[@]}"; do
    read -r sec name <<<"$page"
    man -w "$sec" "$name" >/dev/null 2>&1 || fail "man -w $sec $name finds no page"
  done
else
  for page in "${man_pages[@]}"; do
    read -r sec name <<<"$page"
    [[ -f /usr/share/man/man$sec/$name.$sec.gz || -f /usr/share/man/man$sec/$name.$sec ]] ||
      fail "man page /usr/share/man/man$sec/$name.$sec(.gz) is missing"
  done
fi

unit=/lib/systemd/system/stasisd.service
[[ -f $unit ]] || fail "$unit is missing"
if command -v systemd-analyze >/dev/null; then
  if ! out=$(systemd-analyze verify "$unit" 2>&1); then
    fail "systemd-analyze verify $unit:"$'\n'"$out"
  fi
fi
[[ -f /etc/stasis/stasis.yaml ]] || fail "/etc/stasis/stasis.yaml is missing"
dpkg-query -W -f='${Conffiles}\n' stasis | grep -q ' /etc/stasis/stasis.yaml ' ||
  fail "dpkg does not list /etc/stasis/stasis.yaml as a conffile"
out=$(/usr/sbin/stasisd --check-config -c /etc/stasis/stasis.yaml 2>&1) ||
  fail "stasisd --check-config -c /etc/stasis/stasis.yaml fails: $out"
[[ $out == *"/etc/stasis/stasis.yaml: ok"* ]] ||
  fail "stasisd --check-config printed '$out', expected '/etc/stasis/stasis.yaml: ok'"

# --- The installed stasisd, with a private socket and folders.
run=$tmp/run
mkdir -p "$run" "$tmp/checkpoints"
sock=$run/stasisd.sock
cat >"$tmp/stasis.yaml" <<EOF
# install.deb: a private stasisd for the test.
socket: $sock
state_dir: $run/state
checkpoint_root: $tmp/checkpoints
log: stderr
log_level: debug
EOF
say "starting /usr/sbin/stasisd -c $tmp/stasis.yaml"
/usr/sbin/stasisd -c "$tmp/stasis.yaml" </dev/null >"$tmp/stasisd.log" 2>&1 &
daemon_pid=$!
for ((i = 0; i < 200; i++)); do
  [[ -S $sock ]] && break
  kill -0 "$daemon_pid" 2>/dev/null ||
    fail "stasisd exited before listening:"$'\n'"$(cat "$tmp/stasisd.log")"
  sleep 0.1
done
[[ -S $sock ]] || fail "stasisd did not create $sock within 20 s:"$'\n'"$(cat "$tmp/stasisd.log")"

out=$(STASIS_SOCKET=$sock /usr/bin/stasis status 2>&1) ||
  fail "STASIS_SOCKET=$sock stasis status fails: $out"$'\n'"$(cat "$tmp/stasisd.log")"
say "stasis status: ${out:-(no requests)}"
out=$(STASIS_SOCKET=$sock /usr/bin/stasis ping 2>&1) ||
  fail "STASIS_SOCKET=$sock stasis ping fails: $out"$'\n'"$(cat "$tmp/stasisd.log")"

# The installed engine works, in-process and through the installed stasisd.
# A target with no descriptor leading to this test (ctest's pipes).
# shellcheck disable=SC2217
sleep 600 </dev/null >/dev/null 2>&1 &
target_pid=$!
/usr/bin/cr_checkpoint --no-daemon -f "$tmp/inproc.ctx" "$target_pid" ||
  fail "cr_checkpoint --no-daemon of a sleep fails"
/usr/bin/stasis verify "$tmp/inproc.ctx" >/dev/null || fail "stasis verify of the in-process context fails"
STASIS_SOCKET=$sock /usr/bin/cr_checkpoint -f "$tmp/checkpoints/daemon.ctx" "$target_pid" ||
  fail "cr_checkpoint through stasisd fails:"$'\n'"$(cat "$tmp/stasisd.log")"
/usr/bin/stasis verify "$tmp/checkpoints/daemon.ctx" >/dev/null ||
  fail "stasis verify of the context written through stasisd fails"
kill -0 "$target_pid" 2>/dev/null || fail "the checkpointed process did not keep running"
kill -KILL "$target_pid"
wait "$target_pid" 2>/dev/null || true
target_pid=

# SIGTERM: stasisd stops accepting, finishes and exits (0, or 128+15).
kill -TERM "$daemon_pid"
for ((i = 0; i < 300; i++)); do
  kill -0 "$daemon_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$daemon_pid" 2>/dev/null && fail "stasisd still runs 30 s after SIGTERM"
rc=0
wait "$daemon_pid" || rc=$?
daemon_pid=
[[ $rc -eq 0 || $rc -eq 143 ]] ||
  fail "stasisd exited with $rc after SIGTERM:"$'\n'"$(cat "$tmp/stasisd.log")"

# --- Purge, and nothing may be left.
say "apt-get purge stasis"
if ! apt-get "${apt_opts[@]}" purge stasis </dev/null >>"$tmp/apt.log" 2>&1; then
  cat "$tmp/apt.log" >&2
  fail "apt-get purge stasis failed"
fi
installed=0
status=$(dpkg-query -W -f='${db:Status-Status}' stasis 2>/dev/null || true)
[[ -z $status || $status == not-installed ]] || fail "package state after purge: '$status'"
for f in /usr/bin/cr_run /usr/bin/cr_checkpoint /usr/bin/cr_restart /usr/bin/stasis \
  /usr/sbin/stasisd "$libdir/libcr.so.0" /usr/include/libcr.h "$libdir/pkgconfig/libcr.pc" \
  "$unit" /etc/stasis/stasis.yaml /etc/stasis \
  /etc/systemd/system/multi-user.target.wants/stasisd.service \
  /etc/systemd/system/stasisd.service; do
  [[ ! -e $f && ! -L $f ]] || fail "$f is still there after purge"
done
for page in "${man_pages[@]}"; do
  read -r sec name <<<"$page"
  for f in "/usr/share/man/man$sec/$name.$sec" "/usr/share/man/man$sec/$name.$sec.gz"; do
    [[ ! -e $f ]] || fail "$f is still there after purge"
  done
done

echo "PASS install.deb"
