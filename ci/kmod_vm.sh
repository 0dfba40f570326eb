#!/usr/bin/env bash
# The kernel-module tier: builds kmod/stasis.ko against the installed Debian
# 6.1 headers, boots that kernel in qemu (TCG: KVM does not work on the CI
# machine) with a busybox initramfs holding the module and the static guest
# program (test/kmod/kmod_guest), loads the module, runs the guest tests and
# reads one "STASIS-TEST: PASS|FAIL <name>" line per test from the serial
# console. A kernel WARNING, BUG, Oops or panic in the guest fails the run.
#
#   ci/kmod_vm.sh --guest BUILD/test/kmod/kmod_guest --out DIR   boot, run all
#   ci/kmod_vm.sh --result NAME --out DIR     one guest test's verdict (CTest)
#
# The module is built twice from kmod/: with kbuild directly, and with
# `dkms build` (kmod/dkms.conf) into a private tree; the guest loads the
# first for the tests and the second for kmod_dkms.
#   ci/kmod_vm.sh --guest ... --out DIR --bench MIB [--mem 1536M]
#                                             capture time, both backends
#   ci/kmod_vm.sh --guest ... --out DIR --only "kmod_permission ..."
#                                             boot, run only those guest tests
#                                             (no DKMS build unless kmod_dkms)
#
# The kernel image (vmlinuz only, from the linux-image .deb) is cached in
# $STASIS_KMOD_CACHE, else /var/cache/stasis-kmod (root) or
# ~/.cache/stasis-kmod; root is not needed. Exit 77 (CTest: skipped)
# with "SKIPPED: <why>" when a prerequisite is missing.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
guest="" out="" result="" bench="" only="" mem=256M
while [[ $# -gt 0 ]]; do
  case $1 in
    --guest) guest=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --result) result=$2; shift 2 ;;
    --bench) bench=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "kmod_vm: unknown argument '$1' (see the header of ci/kmod_vm.sh)" >&2; exit 2 ;;
  esac
done
[[ -n $out ]] || { echo "kmod_vm: --out DIR is required" >&2; exit 2; }

skip() {
  echo "SKIPPED: $*"
  exit 77
}

# --- one guest test's verdict, from a finished boot -------------------------
if [[ -n $result ]]; then
  results=$out/results.txt
  [[ -f $results ]] || { echo "kmod_vm: no results in $out (did kmod_vm run?)" >&2; exit 1; }
  if grep -q '^SKIPPED' "$results"; then
    grep -m1 '^SKIPPED' "$results"
    exit 77
  fi
  if [[ $result == kmod_dkms && -f $out/dkms.skip ]]; then
    echo "SKIPPED: $(cat "$out/dkms.skip")"
    exit 77
  fi
  line=$(grep -E "^STASIS-TEST: (PASS|FAIL) $result( |:|\$)" "$results" | tail -n 1 || true)
  # Show the guest's own output for this test (details, errno table).
  sed -n "/^=== $result\$/,/^=== end $result\$/p" "$out/console.log" | tr -d '\r' || true
  [[ -n $line ]] || { echo "kmod_vm: guest test $result printed no verdict (see $out/console.log)"; exit 1; }
  echo "$line"
  [[ $line == "STASIS-TEST: PASS $result"* ]]
  exit $?
fi

mkdir -p "$out"
rm -f "$out/results.txt"
record_skip() {
  echo "SKIPPED: $*" >"$out/results.txt"
  skip "$@"
}

[[ -n $guest && -x $guest ]] || record_skip "guest program not built (--guest $guest)"
for tool in qemu-system-x86_64 cpio gzip make; do
  command -v "$tool" >/dev/null || record_skip "$tool is not installed (ci/setup.sh installs it)"
done
busybox=$(command -v busybox || true)
[[ -n $busybox ]] && file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
  busybox=/bin/busybox
[[ -x $busybox ]] || record_skip "busybox-static is not installed"

# Kernel version: from the installed headers, never from uname -r (the host
# may run another kernel, and loads no modules at all).
kver=""
for d in /usr/src/linux-headers-*-amd64; do
  [[ -e $d/Makefile ]] && kver=${d#/usr/src/linux-headers-}
done
[[ -n $kver ]] || record_skip "no /usr/src/linux-headers-*-amd64 (apt-get install linux-headers-amd64)"
kdir=/usr/src/linux-headers-$kver

# --- kernel image, cached -----------------------------------------------------
if [[ $(id -u) -eq 0 ]]; then
  cache=${STASIS_KMOD_CACHE:-/var/cache/stasis-kmod}
else
  cache=${STASIS_KMOD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stasis-kmod}
fi
mkdir -p "$cache"
vmlinuz=$cache/vmlinuz-$kver
if [[ ! -s $vmlinuz ]]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q "linux-image-$kver" >/dev/null 2>&1) ||
    { apt-get update -q >/dev/null 2>&1 && (cd "$tmp" && apt-get download -q "linux-image-$kver" >/dev/null); } ||
    { rm -rf "$tmp"; record_skip "cannot download linux-image-$kver"; }
  dpkg-deb --fsys-tarfile "$tmp"/linux-image-"$kver"_*.deb |
    tar -x -C "$tmp" "./boot/vmlinuz-$kver"
  mv "$tmp/boot/vmlinuz-$kver" "$vmlinuz"
  rm -rf "$tmp"
fi

# --- the module, built out of the source tree --------------------------------
t0=$(date +%s.%N)
kbuild=$out/kmod-build
rm -rf "$kbuild"
mkdir -p "$kbuild"
cp -r "$here/kmod/Kbuild" "$here/kmod/stasis_main.c" "$here/kmod/include" "$kbuild/"
if ! make -C "$kdir" M="$kbuild" modules >"$out/kmod-build.log" 2>&1; then
  cat "$out/kmod-build.log"
  echo "FAILED: stasis.ko does not build against $kver" >"$out/results.txt"
  echo "kmod_vm: stasis.ko does not build against $kver (log above)" >&2
  exit 1
fi
if grep -E 'warning:' "$out/kmod-build.log"; then
  echo "kmod_vm: the module build printed warnings (above)" >&2
  echo "FAILED: module build warnings" >"$out/results.txt"
  exit 1
fi

# --- the same source through DKMS, as a site installs it (kmod/dkms.conf) ------
# Built into a private tree (nothing under /var/lib/dkms/stasis, nothing
# installed); the guest loads this module too (kmod_dkms). Without dkms the
# guest test says SKIPPED.
dkms_ko=""
rm -f "$out/dkms.skip"
if [[ -n $only && " $only " != *" kmod_dkms "* ]]; then
  echo "not asked for (--only)" >"$out/dkms.skip"
elif command -v dkms >/dev/null; then
  dver=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$here/kmod/dkms.conf")
  dk=$out/dkms
  rm -rf "$dk"
  mkdir -p "$dk/src/stasis-$dver" "$dk/tree"
  cp -r "$here/kmod/Kbuild" "$here/kmod/Makefile" "$here/kmod/dkms.conf" "$here/kmod/stasis_main.c" \
    "$here/kmod/include" "$dk/src/stasis-$dver/"
  if ! dkms build -m stasis -v "$dver" -k "$kver" --dkmstree "$dk/tree" --sourcetree "$dk/src" \
      >"$out/dkms.log" 2>&1; then
    cat "$out/dkms.log"
    echo "kmod_vm: dkms build of stasis/$dver for $kver failed (log above)" >&2
    echo "FAILED: dkms build" >"$out/results.txt"
    exit 1
  fi
  dkms_ko=$(find "$dk/tree/stasis/$dver/$kver" -name 'stasis.ko*' | head -n 1)
  [[ -n $dkms_ko ]] || { echo "kmod_vm: dkms build left no stasis.ko in $dk/tree" >&2; exit 1; }
  vermagic=$(modinfo -F vermagic "$dkms_ko")
  [[ $vermagic == "$kver "* ]] ||
    { echo "kmod_vm: the DKMS module's vermagic '$vermagic' is not for $kver" >&2; exit 1; }
else
  echo "dkms is not installed (ci/setup.sh installs it)" >"$out/dkms.skip"
fi

# --- initramfs ------------------------------------------------------------------
root=$out/initramfs
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,lib/modules}
cp "$busybox" "$root/bin/busybox"
for applet in sh mount insmod rmmod lsmod cat grep echo poweroff sleep seq dmesg mkdir ls \
    sync id tr wc head tail; do
  ln -s busybox "$root/bin/$applet"
done
cp "$kbuild/stasis.ko" "$root/lib/modules/"
[[ -n $dkms_ko ]] && cp "$dkms_ko" "$root/lib/modules/stasis-dkms.ko"
strip --strip-debug -o "$root/bin/kmod_guest" "$guest"
if [[ -n $bench ]]; then
  tests="bench"
else
  tests="kmod_hostile kmod_permission kmod_equivalent kmod_capture_restore kmod_traced kmod_load_unload"
  [[ -n $dkms_ko ]] && tests="$tests kmod_dkms"
  [[ -n $only ]] && tests=$only
fi
cat >"$root/init" <<EOF
#!/bin/sh
# stasis kmod guest: runs the tests, prints verdicts, powers off.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo 1 > /proc/sys/kernel/panic_on_oops
run() { # name, command...
  name=\$1; shift
  echo "=== \$name"
  "\$@"
  rc=\$?
  echo "=== end \$name"
  return \$rc
}
if ! insmod /lib/modules/stasis.ko; then
  echo "STASIS-TEST: FAIL insmod: stasis.ko does not load"
  poweroff -f
fi
for t in $tests; do
  case \$t in
    kmod_hostile) run \$t /bin/kmod_guest hostile ;;
    kmod_permission) run \$t /bin/kmod_guest permission ;;
    kmod_equivalent) run \$t /bin/kmod_guest equivalent ;;
    kmod_capture_restore) run \$t /bin/kmod_guest restore ;;
    kmod_traced) run \$t /bin/kmod_guest traced ;;
    bench) run bench /bin/kmod_guest bench $bench ;;
    kmod_dkms)
      # The module as DKMS built it (after kmod_load_unload: nothing loaded).
      echo "=== kmod_dkms"
      ok=1
      insmod /lib/modules/stasis-dkms.ko || { echo "insmod stasis-dkms.ko failed"; ok=0; }
      [ -c /dev/stasis ] || { echo "no /dev/stasis"; ok=0; }
      /bin/kmod_guest capture-once || { echo "capture through the DKMS module failed"; ok=0; }
      rmmod stasis || { echo "rmmod failed"; ok=0; }
      echo "=== end kmod_dkms"
      if [ \$ok = 1 ]; then echo "STASIS-TEST: PASS kmod_dkms"; else echo "STASIS-TEST: FAIL kmod_dkms"; fi
      ;;
    kmod_load_unload)
      echo "=== kmod_load_unload"
      ok=1
      rmmod stasis || ok=0
      before=\$(grep -E '^(Slab|MemFree):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')
      for i in \$(seq 1 100); do
        insmod /lib/modules/stasis.ko || { echo "insmod \$i failed"; ok=0; break; }
        [ -c /dev/stasis ] || { echo "no /dev/stasis after insmod \$i"; ok=0; }
        if [ \$((i % 25)) -eq 0 ]; then
          /bin/kmod_guest capture-once || { echo "capture after insmod \$i failed"; ok=0; }
        fi
        rmmod stasis || { echo "rmmod \$i failed"; ok=0; break; }
      done
      after=\$(grep -E '^(Slab|MemFree):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')
      echo "meminfo before: \$before"
      echo "meminfo after:  \$after"
      grep -q '^stasis ' /proc/modules && { echo "stasis still loaded"; ok=0; }
      [ -e /dev/stasis ] && { echo "/dev/stasis still present"; ok=0; }
      if dmesg | grep -E 'WARNING|BUG|Oops|leak' >/dev/null; then
        dmesg | grep -E 'WARNING|BUG|Oops|leak'; ok=0
      fi
      echo "=== end kmod_load_unload"
      if [ \$ok = 1 ]; then echo "STASIS-TEST: PASS kmod_load_unload"; else echo "STASIS-TEST: FAIL kmod_load_unload"; fi
      ;;
  esac
done
echo "STASIS-GUEST-DONE"
sync
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initramfs.gz"
t1=$(date +%s.%N)

# --- boot ---------------------------------------------------------------------------
console=$out/console.log
set +e
timeout "${STASIS_KMOD_TIMEOUT:-300}" qemu-system-x86_64 -accel tcg -cpu max -m "$mem" -smp 1 -nographic -no-reboot \
  -kernel "$vmlinuz" -initrd "$out/initramfs.gz" \
  -append "console=ttyS0 panic=-1 panic_on_warn=1 oops=panic quiet loglevel=4 rdinit=/init" \
  </dev/null >"$console" 2>&1
qrc=$?
set -e
t2=$(date +%s.%N)
tr -d '\r' <"$console" | grep -E '^(STASIS-TEST|bench:)' | tee "$out/results.txt"
printf 'kmod_vm: kernel %s, build+initramfs %.1f s, boot+tests %.1f s (qemu exit %d)\n' \
  "$kver" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$qrc"

fail=0
if grep -E 'WARNING:|BUG:|Oops|Kernel panic|general protection fault|Call Trace' "$console" >/dev/null; then
  echo "kmod_vm: the guest kernel reported a problem:" >&2
  grep -E -B2 -A20 'WARNING:|BUG:|Oops|Kernel panic|general protection fault|Call Trace' "$console" | head -n 60 >&2
  echo "FAIL kernel: warning, BUG or Oops in the guest" >>"$out/results.txt"
  fail=1
fi
if ! grep -q 'STASIS-GUEST-DONE' "$console"; then
  echo "kmod_vm: the guest did not finish its tests (timeout or crash); last lines:" >&2
  tail -n 30 "$console" >&2
  fail=1
fi
if [[ -z $bench ]]; then
  for t in $tests; do
    grep -qE "^STASIS-TEST: (PASS|FAIL) $t( |:|\$)" "$out/results.txt" ||
      { echo "kmod_vm: no verdict from guest test $t" >&2; fail=1; }
  done
fi
exit "$fail"
