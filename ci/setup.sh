#!/usr/bin/env bash
# Installs every Debian 12 package stasis needs to build and to run all test
# tiers (unit, integration, cluster, kmod, install). Idempotent and non-interactive:
# when everything is already installed it only runs one dpkg-query and exits.
# Run as root (or through sudo); it never reads stdin.
set -euo pipefail

# Build: compilers, CMake/Ninja, the libraries engine/ links against.
build_pkgs=(
  build-essential make cmake ninja-build pkg-config gcc g++ libc6-dev git
  clang clang-tools clang-tidy clang-format libclang-rt-14-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libyaml-cpp-dev libzstd-dev liblz4-dev libcap-dev libhwloc-dev zstd lz4
)
# Integration tests (test/zdtm, test/integration): interpreters the tests
# checkpoint, /proc tools, useradd/setpriv/runuser/mount, debuggers.
test_pkgs=(
  bash bc python3 perl procps util-linux passwd iproute2 strace gdb
  shellcheck bats sudo
  file
)
# Cluster tier: a real Slurm + munge + PMIx + Open MPI on this machine, and
# GlusterFS (server and FUSE client) for the store on a shared file system
# (ci/cluster.sh --gluster runs its own glusterd; the package's is never
# started, policy-rc.d below).
cluster_pkgs=(
  slurm-wlm slurmctld slurmd slurm-client libslurm-dev
  munge libmunge-dev libpmix-dev openmpi-bin libopenmpi-dev
  glusterfs-server glusterfs-client
)
# Kernel-module tier: build against Debian's 6.1 headers, boot it in qemu.
kmod_pkgs=(
  linux-headers-amd64 qemu-system-x86 busybox-static cpio kmod dkms openssl
)
# Install tier (test/install): the .deb route needs dpkg/apt (always there);
# the prefix route is loaded with Lmod, the environment modules most HPC
# sites run (it reads the Tcl modulefile stasis installs).
install_pkgs=(
  lmod
)
pkgs=("${build_pkgs[@]}" "${test_pkgs[@]}" "${cluster_pkgs[@]}" "${kmod_pkgs[@]}"
  "${install_pkgs[@]}")

# Prints the packages of "$@" that are not fully installed (one dpkg-query).
not_installed() {
  local -A ok=()
  local name status
  while read -r name status; do
    [[ $status == ii* ]] && ok[$name]=1
  done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "$@" 2>/dev/null || true)
  for name in "$@"; do
    [[ -n ${ok[$name]:-} ]] || echo "$name"
  done
}

mapfile -t missing < <(not_installed "${pkgs[@]}")

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#pkgs[@]} packages already installed"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "setup: missing packages: ${missing[*]}; run ci/setup.sh as root (sudo ci/setup.sh)" >&2
  exit 1
fi

echo "setup: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Never start services (slurmctld, munge, ...) from package scripts: tests start
# their own daemons with private folders. Keep an existing policy-rc.d.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt_opts=(-y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef
  -o Dpkg::Options::=--force-confold)
apt-get "${apt_opts[@]}" update </dev/null
apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}" </dev/null

mapfile -t still < <(not_installed "${missing[@]}")
if [[ ${#still[@]} -ne 0 ]]; then
  echo "setup: packages still not installed after apt-get: ${still[*]}" >&2
  exit 1
fi
echo "setup: done"
