#!/usr/bin/env python3
"""Prints the issue-8 tables of BENCHMARKS.md from criterion's and mimi-rm-load's JSON output.

    python3 bench/summarize.py [target/criterion] [bench/results]

Medians are criterion's median point estimates; load figures come from the reports that
bench/load.sh wrote. Nothing is typed in by hand.
"""
import glob
import json
import os
import sys

CRIT = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
LOAD = sys.argv[2] if len(sys.argv) > 2 else "bench/results"
OPS = ["application_message", "add_1", "remove_1", "update", "external_commit_info", "welcome_info"]
SIZES = [10, 100, 1000, 10000]


def median_ns(*parts):
    path = os.path.join(CRIT, *map(str, parts), "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except OSError:
        return None


def fmt(ns):
    if ns is None:
        return "–"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.0f} µs"


def ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


print("### DS core per operation (median), RM vs baseline\n")
print("| operation | members | RM | baseline | RM / baseline | RM / state AEAD open |")
print("|---|---|---|---|---|---|")
for op in OPS:
    for n in SIZES:
        rm = median_ns("ds_core_rm", op, n)
        base = median_ns("ds_core_baseline", op, n)
        floor = median_ns("floor_rm", "state_aead_open", n)
        if rm is None and base is None:
            continue
        print(f"| {op} | {n} | {fmt(rm)} | {fmt(base)} | {ratio(rm, base)} | {ratio(rm, floor)} |")

print("\n### Primitive floor (same run)\n")
print("| primitive | members | median |")
print("|---|---|---|")
for n in SIZES:
    for prim in ["state_aead_seal", "state_aead_open"]:
        v = median_ns("floor_rm", prim, n)
        if v is not None:
            print(f"| {prim} (RM state blob) | {n} | {fmt(v)} |")
for prim in ["hpke_open", "ed25519_verify", "rocksdb_synced_batch_1k",
             "rocksdb_synced_batch_1k_8_writers", "rocksdb_synced_batch_1k_32_writers"]:
    v = median_ns("floor", prim)
    if v is not None:
        print(f"| {prim} | – | {fmt(v)} |")

print("\n### Application message cost against group size\n")
print("| mode | 10 | 100 | 1,000 | 10,000 | cost(1,000) / cost(10) | linear fit a + b·N |")
print("|---|---|---|---|---|---|---|")
for mode in ["rm", "baseline"]:
    pts = [(n, median_ns(f"ds_core_{mode}", "application_message", n)) for n in SIZES]
    pts = [(n, v) for n, v in pts if v is not None]
    cells = {n: fmt(v) for n, v in pts}
    fit = "–"
    if len(pts) >= 2:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        b = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x in xs)
        a = my - b * mx
        fit = f"a = {fmt(a)}, b = {b / 1e3:.2f} µs per member"
    c10 = dict(pts).get(10)
    c1000 = dict(pts).get(1000)
    print(f"| {mode} | {cells.get(10, '–')} | {cells.get(100, '–')} | {cells.get(1000, '–')} | "
          f"{cells.get(10000, '–')} | {ratio(c1000, c10)} | {fit} |")

reports = sorted(glob.glob(os.path.join(LOAD, "load-*.json")))
if reports:
    print("\n### Load generator (open model)\n")
    print("| mode | groups × members | mix | target/s | achieved/s | send p50 | p99 | p99.9 | max "
          "| errors | hub CPU µs/op | hub cores | generator cores |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for path in reports:
        with open(path) as f:
            r = json.load(f)
        s = r["ops"].get("send", {})
        mix = r["mix"] + (", prebuilt" if r.get("prebuilt_in_s") is not None else "")
        rows.append((r["mode"], mix, r["target_rate"], r, s))
    for mode, mix, rate, r, s in sorted(rows, key=lambda x: (x[1], x[0], x[2])):
        def num(v, digits=0):
            return "–" if v is None else f"{v:.{digits}f}"
        errors = sum(o.get("errors", 0) for o in r["ops"].values())
        print(f"| {mode} | {r['groups']} × {r['group_size']} | {mix} | {rate:.0f} | "
              f"{r['achieved_ops_per_s']:.0f} | {num(s.get('p50_ms'), 1)} ms | "
              f"{num(s.get('p99_ms'), 1)} ms | {num(s.get('p999_ms'), 1)} ms | "
              f"{num(s.get('max_ms'), 1)} ms | {errors} | {num(r.get('hub_cpu_us_per_op'))} | "
              f"{num(r.get('hub_cpu_per_s'), 2)} | {num(r.get('generator_cpu_per_s'), 2)} |")
