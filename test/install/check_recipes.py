#!/usr/bin/env python3
"""packaging.recipes (unit tier): what can be checked here of the Spack
recipe and the EasyBuild easyconfig, neither tool being in Debian.

  check_recipes.py SOURCE_DIR BUILD_DIR

- packaging/spack/package.py is loaded against a small stand-in for Spack's
  package API (spack.package: CMakePackage, version, variant, depends_on,
  ...); the class must be a CMakePackage with a version, and cmake_args()
  (for every combination of its boolean variants) may pass only -D names that
  the project's CMake defines, as BUILD_DIR/CMakeCache.txt lists them.
- packaging/easybuild/*.eb must parse as Python, name the CMakeNinja (or
  CMakeMake) easyblock, and its configopts may pass only known -D names.
Prints one line per problem and exits 1 if there is any.
"""
import ast
import itertools
import os
import re
import sys
import types


def cache_names(build):
    names = set()
    with open(os.path.join(build, "CMakeCache.txt")) as f:
        for line in f:
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_\-]*):[A-Z]+=", line)
            if m:
                names.add(m.group(1))
    return names


class Prefix(str):
    """Spack's Prefix: attribute access and join() give sub-folders."""

    def __getattr__(self, name):
        return Prefix(self + "/" + name)

    def join(self, name):
        return Prefix(self + "/" + name)


def stub_spack(calls):
    mod = types.ModuleType("spack.package")

    def recorder(kind):
        def record(*args, **kwargs):
            calls.append((kind, args, kwargs))

        return record

    for kind in ("version", "variant", "depends_on", "generator", "conflicts", "maintainers",
                 "license", "patch", "provides", "requires"):
        setattr(mod, kind, recorder(kind))

    class CMakePackage:
        def __init__(self, variants):
            self.variants = variants
            self.prefix = Prefix("/spack/opt/stasis")
            self.run_tests = False

        def define(self, name, value):
            if isinstance(value, bool):
                value = "ON" if value else "OFF"
            return f"-D{name}={value}"

        def define_from_variant(self, name, variant):
            if variant not in self.variants:
                raise KeyError(f"define_from_variant({name!r}, {variant!r}): no such variant")
            return self.define(name, self.variants[variant])

    mod.CMakePackage = CMakePackage
    spack = types.ModuleType("spack")
    spack.package = mod
    sys.modules["spack"] = spack
    sys.modules["spack.package"] = mod
    return mod


def check_defines(args, known, where, problems):
    for arg in args:
        m = re.match(r"^-D([A-Za-z_][A-Za-z0-9_]*)(:[A-Z]+)?=", arg)
        if not m:
            problems.append(f"{where}: {arg!r} is not a -DNAME=VALUE argument")
        elif m.group(1) not in known:
            problems.append(f"{where}: -D{m.group(1)} is not an option of the project's CMake")


def check_spack(src, known, problems):
    path = os.path.join(src, "packaging/spack/package.py")
    calls = []
    mod = stub_spack(calls)
    code = compile(open(path).read(), path, "exec")
    ns = {"__name__": "stasis_recipe"}
    exec(code, ns)
    cls = ns.get("Stasis")
    if not isinstance(cls, type) or not issubclass(cls, mod.CMakePackage):
        problems.append(f"{path}: no class Stasis(CMakePackage)")
        return
    if not any(kind == "version" for kind, _, _ in calls):
        problems.append(f"{path}: no version()")
    variants = {a[0]: kw.get("default") for kind, a, kw in calls if kind == "variant"}
    flags = [name for name, default in variants.items() if isinstance(default, bool)]
    for values in itertools.product([False, True], repeat=len(flags)):
        pkg = cls(dict(zip(flags, values)))
        check_defines(pkg.cmake_args(), known, f"{path} {dict(zip(flags, values))}", problems)
    deps = sorted(a[0] for kind, a, _ in calls if kind == "depends_on")
    print(f"spack: class Stasis, variants {sorted(variants)}, depends on {', '.join(deps)}")


def check_easybuild(src, known, problems):
    folder = os.path.join(src, "packaging/easybuild")
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".eb"):
            continue
        path = os.path.join(folder, name)
        tree = ast.parse(open(path).read(), path)
        values = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    isinstance(node.targets[0], ast.Name):
                try:
                    values[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
        for key in ("name", "version", "easyblock", "toolchain", "sanity_check_paths"):
            if key not in values:
                problems.append(f"{path}: no {key}")
        if values.get("easyblock") not in ("CMakeNinja", "CMakeMake"):
            problems.append(f"{path}: easyblock {values.get('easyblock')!r} is not a CMake one")
        check_defines(values.get("configopts", "").split(), known, path, problems)
        print(f"easybuild: {name} parses, easyblock {values.get('easyblock')}")


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, build = sys.argv[1], sys.argv[2]
    known = cache_names(build)
    # Options the project defines only under some configurations are still
    # its own; CMake's own variables (CMAKE_*) are always accepted.
    for root, _, files in os.walk(src):
        if "/build" in root or "/.git" in root:
            continue
        for f in files:
            if f == "CMakeLists.txt" or f.endswith(".cmake"):
                text = open(os.path.join(root, f), errors="replace").read()
                known |= set(re.findall(r"option\((\w+)", text))
                known |= set(re.findall(r"set\((\w+) [^)]*CACHE", text))
    problems = []
    # A made-up argument must be refused, or the check could not fail.
    probe = []
    check_defines(["-DSTASIS_NO_SUCH_OPTION=ON"], known, "selftest", probe)
    if not probe:
        problems.append("selftest: an unknown -D name was accepted")
    check_spack(src, known, problems)
    check_easybuild(src, known, problems)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
