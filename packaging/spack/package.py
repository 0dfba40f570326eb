# Spack recipe for stasis. Copy this folder into a Spack repository as
# packages/stasis/ (or `spack repo add` a repository holding it), then
# `spack install stasis`. Slurm and PMIx are nearly always the site's own
# (declare them as externals in packages.yaml), because the SPANK plugin must
# match the slurmd that loads it and the PMIx library the one Slurm uses.
#
# What is checked in this repository (test/install, unit test
# `packaging.spack`): this file parses, and every -D it passes to CMake is
# an option the project's CMake defines, run against a stub of Spack's
# package API (Spack itself is not packaged by Debian).
from spack.package import *


class Stasis(CMakePackage):
    """Transparent checkpoint/restart for Linux clusters run by Slurm: the
    successor of BLCR (cr_run, cr_checkpoint, cr_restart, libcr), with a
    node daemon (stasisd), a SPANK plugin (sbatch --checkpoint, scontrol
    checkpoint, srun --restart-from) and an epoch store on shared storage."""

    # The project has no public address yet: point these at the repository
    # your site mirrors (e.g. with a `spack repo` of your own).
    homepage = "https://example.invalid/stasis"
    git = "https://example.invalid/stasis.git"

    version("main", branch="main")

    variant("werror", default=False, description="Treat compiler warnings as errors")
    variant("sanitize", default=False, description="Build with ASan and UBSan (debugging)")

    generator("ninja")

    depends_on("cmake@3.25:", type="build")
    depends_on("ninja", type="build")
    depends_on("pkgconfig", type="build")
    # The unit tests build with the rest (test/CMakeLists.txt).
    depends_on("googletest", type="build")
    depends_on("yaml-cpp")
    depends_on("zstd")
    depends_on("lz4")
    # The SPANK plugin (slurm/spank.h) and stasis-step / libstasis_pmix.so
    # (pmix.pc); both are optional in the CMake build, which skips what it
    # cannot find, but the product is meant for Slurm clusters.
    depends_on("slurm")
    depends_on("pmix")

    conflicts("platform=darwin", msg="stasis checkpoints Linux processes (ptrace, /proc)")

    def cmake_args(self):
        return [
            self.define_from_variant("STASIS_WERROR", "werror"),
            self.define_from_variant("STASIS_SANITIZE", "sanitize"),
            # Spack's prefixes are versioned and relocatable; the install
            # finds its own files relative to itself (README, "Install").
            self.define("STASIS_SYSTEMD_UNITDIR", self.prefix.lib.systemd.system),
        ]

    def setup_run_environment(self, env):
        # `scontrol checkpoint` through the wrapper (srun-wrappers/scontrol).
        env.prepend_path("PATH", self.prefix.libexec.stasis.join("srun-wrappers"))
