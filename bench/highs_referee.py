#!/usr/bin/env python3
"""HiGHS referee for the Skyloom solver benchmark.

Reads the flattened models that the Rust benchmark wrote (``<instance>.model.json``: the
same eligibility, caps, values and capacities the Skyloom engine solves), builds the
integer program independently with ``highspy`` and solves it lexicographically, one goal at
a time, like Skyloom:

  1. per priority tier, highest first: minimise unplaced replicas + spread shortfalls;
  2. minimise the objective value (weighted cost minus performance/preference terms minus
     the stay bonus), USD per hour;
  3. minimise moves; 4. minimise failover reserve (only when the instance has them).

Each stage keeps the previous optima as constraints. Writes ``<instance>.highs.json`` next
to the model and, with --table, prints the side-by-side table with Skyloom's and the
greedy baseline's results from ``<instance>.result.json``.

Usage: highs_referee.py DIR [--time-limit SECONDS] [--table] [INSTANCE ...]
"""

import argparse
import json
import math
import pathlib
import sys
import time

import highspy
import numpy as np

INF = highspy.kHighsInf
NANO = 1e9


class Program:
    """Columns and rows of the integer program, in highspy form."""

    def __init__(self, h):
        self.h = h
        self.n = 0

    def col(self, upper, integer):
        self.h.addCol(0.0, 0.0, float(upper), 0, np.array([], dtype=np.int32), np.array([], dtype=np.float64))
        if integer:
            self.h.changeColIntegrality(self.n, highspy.HighsVarType.kInteger)
        self.n += 1
        return self.n - 1

    def row(self, terms, lower, upper):
        idx = np.array([t[0] for t in terms], dtype=np.int32)
        val = np.array([t[1] for t in terms], dtype=np.float64)
        self.h.addRow(float(lower), float(upper), len(terms), idx, val)


def build(model, h):
    p = Program(h)
    clouds = model["clouds"]
    n = len(clouds)
    rc = len(model["resources"])
    svc_vars = []
    for s in model["services"]:
        v = {"x": [None] * n, "r": [None] * n, "kept": [None] * n, "stop": [None] * n, "y": [None] * n}
        for i in range(n):
            cap = s["cap"][i]
            if cap > 0:
                v["x"][i] = p.col(cap, True)
                if s["surviveTarget"] > 0 and s["reserveAllowed"][i]:
                    v["r"][i] = p.col(cap, True)
                    p.row([(v["x"][i], 1.0), (v["r"][i], 1.0)], -INF, cap)
                if s["minClouds"] >= 2:
                    v["y"][i] = p.col(1, True)
                    p.row([(v["y"][i], 1.0), (v["x"][i], -1.0)], -INF, 0.0)
            keep_max = min(s["current"][i], cap)
            if keep_max > 0 and s["stayBonus"][i] > 0:
                v["kept"][i] = p.col(keep_max, False)
                p.row([(v["kept"][i], 1.0), (v["x"][i], -1.0)], -INF, 0.0)
            if s["current"][i] > 0:
                v["stop"][i] = p.col(s["current"][i], False)
                terms = [(v["stop"][i], 1.0)] + ([(v["x"][i], 1.0)] if v["x"][i] is not None else [])
                p.row(terms, s["current"][i], INF)
        xs = [(c, 1.0) for c in v["x"] if c is not None]
        if xs:
            p.row(xs, -INF, s["desired"])
        v["m"] = None
        if s["minClouds"] >= 1:
            v["m"] = p.col(s["minClouds"], False)
            base = [(c, 1.0) for c in v["y"] if c is not None] if s["minClouds"] >= 2 else xs
            p.row(base + [(v["m"], 1.0)], s["minClouds"], INF)
        v["s"] = None
        if s["surviveTarget"] > 0:
            v["s"] = p.col(s["surviveTarget"], False)
            for d in range(model["domains"]):
                terms = []
                for i in range(n):
                    if clouds[i]["domain"] != d:
                        terms += [(c, 1.0) for c in (v["x"][i], v["r"][i]) if c is not None]
                p.row(terms + [(v["s"], 1.0)], s["surviveTarget"], INF)
        svc_vars.append(v)
    for i in range(n):
        for k in range(rc):
            terms, most = [], 0
            for s, v in zip(model["services"], svc_vars):
                q = s["demand"][k]
                if q == 0:
                    continue
                most += q * s["cap"][i]
                for c in (v["x"][i], v["r"][i]):
                    if c is not None:
                        terms.append((c, float(q)))
            cap = clouds[i]["capacity"][k]
            if not terms or most <= cap:
                continue
            scale = max(t[1] for t in terms)
            p.row([(c, q / scale) for c, q in terms], -INF, cap / scale)
    return p, svc_vars


def stages(model, svc_vars):
    out = []
    for tier in range(len(model["tiers"])):
        obj = []
        for s, v in zip(model["services"], svc_vars):
            if s["tier"] != tier:
                continue
            obj += [(c, -1.0) for c in v["x"] if c is not None]
            obj += [(c, 1.0) for c in (v["m"], v["s"]) if c is not None]
        if obj:
            out.append(("tier%d" % tier, obj, True))
    value, moves, reserve = [], [], []
    for s, v in zip(model["services"], svc_vars):
        for i in range(len(model["clouds"])):
            if v["x"][i] is not None:
                value.append((v["x"][i], s["value"][i] / NANO))
            if v["kept"][i] is not None:
                value.append((v["kept"][i], -s["stayBonus"][i] / NANO))
            if v["stop"][i] is not None:
                moves.append((v["stop"][i], 1.0))
            if v["r"][i] is not None:
                reserve.append((v["r"][i], 1.0))
    out.append(("value", value, False))
    if moves:
        out.append(("moves", moves, True))
    if reserve:
        out.append(("reserve", reserve, True))
    return out


def solve(model, time_limit):
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("threads", 1)
    started = time.perf_counter()
    p, svc_vars = build(model, h)
    results = {}
    optimal = True
    for name, obj, integral in stages(model, svc_vars):
        remaining = time_limit - (time.perf_counter() - started)
        if remaining <= 0:
            optimal = False
            break
        h.setOptionValue("time_limit", remaining)
        cost = np.zeros(p.n)
        for c, w in obj:
            cost[c] += w
        h.changeColsCost(p.n, np.arange(p.n, dtype=np.int32), cost)
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        if status != highspy.HighsModelStatus.kOptimal:
            optimal = False
        if info.primal_solution_status != 2:  # no feasible solution
            break
        value = info.objective_function_value
        results[name] = value
        results["bound_" + name] = info.mip_dual_bound
        slack = 0.5 if integral else 1e-7 * max(1.0, abs(value))
        p.row(obj, -INF, value + slack)
        if status != highspy.HighsModelStatus.kOptimal:
            break
    seconds = time.perf_counter() - started
    col = list(h.getSolution().col_value)
    placed = unplaced = 0
    cost = 0.0
    unplaced_by_service = {}
    for s, v in zip(model["services"], svc_vars):
        got = sum(round(col[c]) for c in v["x"] if c is not None)
        placed += got
        unplaced += s["desired"] - got
        if s["desired"] > got:
            unplaced_by_service[s["key"]] = s["desired"] - got
        cost += sum(round(col[c]) * s["cost"][i] / NANO for i, c in enumerate(v["x"]) if c is not None)
    return {
        "seconds": seconds,
        "optimal": optimal,
        "placed": placed,
        "unplaced": unplaced,
        "costPerHour": cost,
        "value": results.get("value"),
        "valueBound": results.get("bound_value"),
        "stages": results,
        "unplacedByService": unplaced_by_service,
    }


def penalties_of_highs(model, highs):
    """Per-tier penalty (unplaced + spread shortfalls) of the HiGHS answer."""
    out = []
    for tier in range(len(model["tiers"])):
        desired = sum(s["desired"] for s in model["services"] if s["tier"] == tier)
        stage = highs["stages"].get("tier%d" % tier)
        out.append(None if stage is None else round(desired + stage))
    return out


def fmt_penalties(values):
    return "/".join("?" if v is None else str(v) for v in values)


def table(directory, names):
    """Prints the side-by-side table (Markdown)."""
    print(
        "| instance | Skyloom s | Skyloom penalty | Skyloom $/h | greedy penalty | greedy $/h "
        "| HiGHS s | HiGHS penalty | HiGHS $/h | HiGHS bound $/h | Skyloom vs HiGHS $/h | saved vs greedy $/h |"
    )
    print("|---" * 12 + "|")
    for name in names:
        res = json.loads((directory / f"{name}.result.json").read_text())
        model = json.loads((directory / f"{name}.model.json").read_text())
        highs_file = directory / f"{name}.highs.json"
        hi = json.loads(highs_file.read_text()) if highs_file.exists() else None
        sk, gr = res["skyloom"], res["greedy"]
        sk_pen = [p["unplaced"] + p["missingClouds"] + p["survivalShortfall"] for p in sk["byPriority"]]
        gr_pen = gr.get("byPriority") or []
        cells = [
            name,
            f"{sk['seconds']:.3f}",
            fmt_penalties(sk_pen),
            f"{sk['costPerHour']:.2f}",
            fmt_penalties(gr_pen) if gr_pen else f"{gr['unplaced']}+{gr['spreadShortfall']}",
            f"{gr['costPerHour']:.2f}",
        ]
        if hi:
            hi_pen = penalties_of_highs(model, hi)
            bound = hi.get("valueBound")
            has_value = hi.get("value") is not None
            cells += [
                f"{hi['seconds']:.1f}" + ("" if hi["optimal"] else " (limit)"),
                fmt_penalties(hi_pen),
                f"{hi['costPerHour']:.2f}" if has_value else "-",
                "-" if bound is None else f"{bound:.2f}",
            ]
            if has_value:
                gap = (sk["value"] - hi["value"]) / abs(hi["value"]) * 100
                diff = sum(sk_pen) - sum(p or 0 for p in hi_pen)
                note = "" if diff == 0 else f" ({diff:+d} penalty)"
                cells.append(f"{gap:+.2f} %{note}")
            else:
                cells.append("-")
        else:
            cells += ["-", "-", "-", "-", "-"]
        cells.append(f"{gr['costPerHour'] - sk['costPerHour']:+.2f}")
        print("| " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=pathlib.Path)
    parser.add_argument("instances", nargs="*")
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--skip-solve", action="store_true")
    args = parser.parse_intermixed_args()
    names = args.instances or sorted(
        (p.name[: -len(".model.json")] for p in args.directory.glob("*.model.json")),
        key=lambda s: (tuple(int(x) for x in s.rstrip("t").split("x")), s.endswith("t")),
    )
    if not args.skip_solve:
        for name in names:
            model = json.loads((args.directory / f"{name}.model.json").read_text())
            result = solve(model, args.time_limit)
            (args.directory / f"{name}.highs.json").write_text(json.dumps(result, indent=2))
            print(f"HiGHS {name}: {result['seconds']:.2f}s optimal={result['optimal']} "
                  f"unplaced={result['unplaced']} $/h={result['costPerHour']:.4f}", file=sys.stderr)
    if args.table:
        table(args.directory, names)


if __name__ == "__main__":
    main()
