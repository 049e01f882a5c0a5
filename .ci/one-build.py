#!/usr/bin/env python3
"""Fails when two cargo commands of this workspace would compile a dependency differently.

Every command a user or CI runs (make test, make demo, make lint, cargo build --workspace [--bins],
make bench's build, a single-crate test) must reuse one compiled RocksDB and one build of every
other dependency. Cargo unifies features per command, so a new dependency or dev-dependency can
quietly make one command resolve differently, which recompiles RocksDB's C++ for ~30 minutes.
This asks cargo for each command's unit graph (no compilation) and compares:
  * the units RocksDB's build script depends on: must be identical in every command;
  * every non-workspace dependency of each binary: must be identical wherever it is built.
Fix a difference by adding the reported features to hack/Cargo.toml.
"""
import collections
import json
import os
import subprocess
import sys

COMMANDS = {
    "make test": ["test", "--workspace"],
    "make lint": ["check", "--workspace", "--all-targets"],
    "build": ["build", "--workspace"],
    "build --bins": ["build", "--workspace", "--bins"],
    "make demo": ["build", "-p", "mimi-rm-tests", "--bin", "mimi-rm-demo"],
    "make bench": ["bench", "--workspace", "--profile", "dev", "--bench", "ds_core"],
    "test -p mimi-ds-rm": ["test", "-p", "mimi-ds-rm"],
    "build -p mimi-rm-load": ["build", "-p", "mimi-rm-load"],
}
BINARIES = [
    "ds-rm", "mimi-rm", "mimi-rm-demo", "mimi-rm-load", "hub-under-test", "load-under-test",
]


def unit_graph(args):
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    out = subprocess.run(
        ["cargo", *args, "--unit-graph", "-Z", "unstable-options"],
        env=env, capture_output=True, text=True, check=False,
    )
    if not out.stdout.strip():
        sys.exit(f"cargo {' '.join(args)} --unit-graph failed:\n{out.stderr}")
    return json.loads(out.stdout)["units"]


def describe(unit):
    profile = {k: v for k, v in unit["profile"].items() if k != "name"}
    return (unit["pkg_id"].split("#")[-1], unit["target"]["name"], unit["mode"],
            ",".join(sorted(unit["features"])), json.dumps(profile, sort_keys=True))


def closure(units, roots, external_only=False):
    seen, stack = set(), list(roots)
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(d["index"] for d in units[i]["dependencies"])
    return {describe(units[i]) for i in seen
            if not (external_only and units[i]["pkg_id"].startswith("path+"))}


def main():
    rocks = {}
    bins = collections.defaultdict(dict)
    for name, args in COMMANDS.items():
        units = unit_graph(args)
        roots = [i for i, u in enumerate(units)
                 if u["pkg_id"].split("#")[-1].startswith("librocksdb-sys@")
                 and u["mode"] == "run-custom-build"]
        if roots:
            rocks[name] = closure(units, roots)
        for b in BINARIES:
            r = [i for i, u in enumerate(units) if u["target"]["name"] == b
                 and u["mode"] == "build" and "bin" in u["target"]["kind"]]
            if r:
                bins[b][name] = closure(units, r, external_only=True)
    failed = False
    groups = [("RocksDB's build", rocks)] + [(f"binary {b}", v) for b, v in bins.items()]
    for what, per_cmd in groups:
        (first, ref), *rest = per_cmd.items()
        for name, units in rest:
            if units != ref:
                failed = True
                print(f"DIFFERENT {what}: `{first}` vs `{name}`")
                for u in sorted(ref ^ units):
                    side = first if u in ref else name
                    debug = json.loads(u[4]).get("debuginfo")
                    print(f"   only in {side}: {u[0]} {u[1]} {u[2]} "
                          f"features=[{u[3]}] debuginfo={debug}")
    n = len(rocks)
    if failed:
        sys.exit("one-build check failed: add the features above to hack/Cargo.toml")
    print(f"one-build check: RocksDB's build identical in {n} commands; "
          f"{len(bins)} binaries' dependencies identical wherever built")


if __name__ == "__main__":
    main()
