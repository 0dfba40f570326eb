#!/usr/bin/env python3
"""Checks that every #include "..." under engine/, spank/ and pmix/ goes in
the allowed direction between layers (issue 19, item 4):

    base <- format <- store, core <- daemon <- epoch <- cli <- spank

A layer may include its own headers and those of the layers to its left;
store and core are side by side and include neither each other. Besides:
engine/agent (libcr, C) is separate and includes only itself; core, the
daemon, the commands, spank and pmix may include the agent's ABI headers
(its .h files, never libcr.c); core may include the kernel module's uapi
header (kmod/include/uapi/). pmix/ includes only itself and the agent ABI.

The build holds the same direction another way: each engine library
publishes only its own include folder (engine/CMakeLists.txt), so a header
of a layer a target does not link is not found; this check also covers
headers, spank/ and pmix/, and says which rule an include breaks.

The engine's libraries read no environment variable (no getenv outside
comments under ENV_FREE): what a tool or stasisd takes from the environment
reaches them as options (core/engine.h CheckpointOptions, RestoreOptions).

Usage: ci/check_layering.py [--selftest] [SOURCE_DIR]
  SOURCE_DIR  the tree to check (default: this repository)
  --selftest  first prove on a made-up tree that the check can fail
Prints one "file:line: ..." per violation and exits 1 if there is any.
The unit-tier CTest test `layering` runs it with --selftest.
"""
import os
import re
import sys
import tempfile

ROOTS = ("engine", "spank", "pmix")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
SOURCE_EXT = (".h", ".hh", ".hpp", ".c", ".cc", ".cpp")

# Layer of a path (relative to the source folder), by longest prefix.
LAYERS = {
    "engine/base/": "base",
    "engine/format/": "format",
    "engine/store/": "store",
    "engine/core/": "core",
    "engine/agent/": "agent",
    "engine/daemon/": "daemon",
    "engine/epoch/": "epoch",
    "engine/cli/": "cli",
    "spank/": "spank",
    "pmix/": "pmix",
    "kmod/include/uapi/": "uapi",
}

# What each layer may include besides itself. "agent-abi" is a header of
# engine/agent; "agent" (libcr's sources) is for engine/agent only.
BELOW = {
    "base": set(),
    "format": {"base"},
    "store": {"base", "format"},
    "core": {"base", "format", "agent-abi", "uapi"},
    "agent": set(),
    "daemon": {"base", "format", "store", "core", "agent-abi"},
    "epoch": {"base", "format", "store", "core", "daemon"},
    "cli": {"base", "format", "store", "core", "daemon", "epoch", "agent-abi"},
    "spank": {"base", "format", "store", "core", "daemon", "epoch", "cli", "agent-abi"},
    "pmix": {"agent-abi"},
}

# Edges that break the rule today and are being removed, each with why and
# who removes it: (including file, included file), both relative to the
# source folder. Delete an entry when its include goes away; an entry that
# matches nothing is reported, so the list cannot go stale silently.
ALLOWED_EXCEPTIONS = {}

# Folders whose code may not read the environment, and how a read looks.
ENV_FREE = ("engine/base/", "engine/format/", "engine/store/", "engine/core/", "engine/epoch/")
GETENV = re.compile(r"\b(?:secure_)?getenv\s*\(")


def layer_of(rel):
    best = None
    for prefix, layer in LAYERS.items():
        if rel.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    if best is None:
        return None
    if best[1] == "agent" and rel.endswith(".h"):
        return "agent-abi"
    return best[1]


def resolve(src_dir, including, name):
    """The included file relative to src_dir, or None if not found: next to
    the including file, from the source folder (how the tree includes), or
    from the including component's include/ folder (libcr.h)."""
    here = os.path.dirname(including)
    candidates = [os.path.join(here, name), name]
    parts = including.split("/")
    for depth in (1, 2):
        if len(parts) > depth:
            candidates.append(os.path.join(*parts[:depth], "include", name))
    for c in candidates:
        c = os.path.normpath(c)
        if os.path.isfile(os.path.join(src_dir, c)):
            return c
    return None


def check(src_dir, exceptions=None):
    if exceptions is None:
        exceptions = ALLOWED_EXCEPTIONS
    problems = []
    used = set()
    for root in ROOTS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(src_dir, root)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if not fname.endswith(SOURCE_EXT):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, fname), src_dir)
                src_layer = layer_of(rel)
                if src_layer == "agent-abi":
                    src_layer = "agent"
                if src_layer is None:
                    continue
                with open(os.path.join(src_dir, rel), errors="replace") as f:
                    lines = f.readlines()
                for num, line in enumerate(lines, 1):
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    target = resolve(src_dir, rel, m.group(1))
                    where = "%s:%d" % (rel, num)
                    if target is None:
                        problems.append('%s: cannot find "%s" (the layering check must see '
                                        'every include)' % (where, m.group(1)))
                        continue
                    dst_layer = layer_of(target)
                    if dst_layer == src_layer or (src_layer == "agent" and dst_layer == "agent-abi"):
                        continue
                    if dst_layer in BELOW.get(src_layer, set()):
                        continue
                    if (rel, target) in exceptions:
                        used.add((rel, target))
                        continue
                    problems.append('%s: %s may not include %s ("%s"): allowed from %s: %s' % (
                        where, src_layer, dst_layer or "a file outside the layers", m.group(1),
                        src_layer, ", ".join(sorted(BELOW.get(src_layer, set()))) or "itself only"))
    for root in ENV_FREE:
        for dirpath, dirnames, filenames in os.walk(os.path.join(src_dir, root)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if not fname.endswith(SOURCE_EXT):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, fname), src_dir)
                with open(os.path.join(src_dir, rel), errors="replace") as f:
                    for num, line in enumerate(f, 1):
                        if GETENV.search(line.split("//", 1)[0]):
                            problems.append("%s:%d: reads the environment (getenv): %s code takes "
                                            "options instead (core/engine.h)" % (rel, num, root))
    for rel, target in sorted(set(exceptions) - used):
        problems.append("%s: allowlisted include of %s is gone: delete its entry in "
                        "ci/check_layering.py" % (rel, target))
    return problems


def selftest():
    """A tree with one allowed and one forbidden edge, and a stale exception:
    the check must pass the first and report the other two."""
    with tempfile.TemporaryDirectory() as d:
        files = {
            "engine/base/status.h": "",
            "engine/daemon/state_record.h": '#include "engine/base/status.h"\n',
            "engine/format/fuzz/x_fuzzer.cc": '#include "engine/base/status.h"\n'
                                              '#include "engine/daemon/state_record.h"\n',
            "engine/core/knob.cc": '// getenv() is not for core\n'
                                   'const char* e = std::getenv("X");\n',
        }
        for rel, text in files.items():
            os.makedirs(os.path.join(d, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(d, rel), "w") as f:
                f.write(text)
        got = check(d, {("engine/core/gone.h", "engine/store/env.h")})
    want = ["engine/format/fuzz/x_fuzzer.cc:2: format may not include daemon",
            "engine/core/gone.h: allowlisted include of engine/store/env.h is gone",
            "engine/core/knob.cc:2: reads the environment"]
    missing = [w for w in want if not any(g.startswith(w) for g in got)]
    if missing or len(got) != len(want):
        print("FAIL layering selftest: want %s, got %s" % (want, got))
        return False
    print("ok   layering selftest: a forbidden include, a stale exception and a getenv in "
          "core are reported")
    return True


def main(argv):
    args = argv[1:]
    if args[:1] == ["--selftest"]:
        args = args[1:]
        if not selftest():
            return 1
    src_dir = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    problems = check(os.path.abspath(src_dir))
    for p in problems:
        print(p)
    if problems:
        print("layering: %d problem(s): includes against the direction base <- format <- store, "
              "core <- daemon <- epoch <- cli <- spank, or getenv in the engine's libraries "
              "(see ci/check_layering.py)" % len(problems))
        return 1
    print("layering: every include under %s goes in the allowed direction (%d allowlisted)" %
          ("/".join(ROOTS), len(ALLOWED_EXCEPTIONS)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
