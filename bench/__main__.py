"""Benchmarks: ``python -m bench [--quick] [--cases eval,train,...] [--weights auto] [--out FILE]``.

Prints one JSON line per measurement (and appends them to ``--out`` when given).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from itertools import product
from pathlib import Path

import torch

from bench import cases, limit
from bench.cases import Setting
from spikingbert.cli.edge import HelpFormatter
from spikingbert.runtime import keep_freed_memory

ALL_CASES = ("eval", "train", "limit", "crossover", "memory", "schedule", "data")


def firing_weights(args) -> list[tuple[str, str]]:
    """(size, weights) of the eval and train cases: the demo's trained student where it exists
    (``--weights auto``), weights shaped to fire like it (``recipe``, per ``--sizes``) or random."""
    sizes = args.sizes.split(",")
    if args.weights == "auto":
        if Path(args.demo_student, "config.json").is_file():
            return [("demo", str(args.demo_student))]
        return [(size, "recipe") for size in sizes]
    return [(size, args.weights) for size in sizes]


def plan(args) -> list[tuple[str, object]]:
    """The (case, setting) pairs to run."""
    sizes = args.sizes.split(",")
    weights = firing_weights(args)
    jobs: list[tuple[str, object]] = []
    if args.quick:
        for size, w in weights:
            jobs += [("eval", Setting(size, 8, 64, 16, args.device, w)),
                     ("eval", Setting(size, 1, 64, 125, args.device, w)),
                     ("train", Setting(size, 8, 64, 16, args.device, w)),
                     ("limit", Setting(size, 8, 64, 16, args.device, w))]
        jobs += [("crossover", Setting(size, 8, 64, 16, args.device)) for size in sizes]
        jobs += [("schedule", Setting("small", 1, 64, 125, args.device)),
                 ("memory", ("small", 8, 64, (8, 32, 128), (8, 16, 32))), ("data", None)]
    else:
        for (size, w), b, s, t in product(weights, (1, 8, 32), (64, 128), (16, 64, 125)):
            jobs.append(("eval", Setting(size, b, s, t, args.device, w)))
        for (size, w), b in product(weights, (1, 8, 32)):
            jobs.append(("train", Setting(size, b, 64, 16, args.device, w)))
        for (size, w), (b, t) in product(weights, ((8, 16), (1, 125))):
            jobs.append(("limit", Setting(size, b, 64, t, args.device, w)))
        for size in sizes:
            jobs += [("crossover", Setting(size, 8, 64, 16, args.device)),
                     ("crossover", Setting(size, 1, 64, 125, args.device)),
                     ("schedule", Setting(size, 1, 64, 125, args.device)),
                     ("memory", (size, 8, 64, (8, 32, 128), (8, 16, 32)))]
        jobs.append(("data", None))
    wanted = set(args.cases.split(","))
    return [(c, s) for c, s in jobs if c in wanted]


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m bench", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few representative settings (about 3 min on 2 cores)")
    parser.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated subset of {ALL_CASES}")
    parser.add_argument("--sizes", default="small,base", help="comma-separated model sizes: small, base")
    parser.add_argument("--weights", default="auto", choices=("auto", "recipe", "dense_recipe", "random"),
                        help="student weights of the eval/train cases: auto = the demo's trained student "
                             "(--demo_student) if it exists, else recipe = weights shaped to fire like it; "
                             "dense_recipe = shaped to fire densely (rates 0.5-0.6)")
    parser.add_argument("--demo_student", default="runs/demo/pred", help="the demo's trained student directory")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to measure on")
    parser.add_argument("--out", help="also append the JSON lines to this file (default: standard output only)")
    return parser


def main(argv=None) -> int:
    args = bench_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("spikingbert.modules.event_engine").setLevel(logging.INFO)           # which engine runs
    keep_freed_memory()                          # as the training/eval scripts do (spikingbert.runtime)
    if args.threads:
        torch.set_num_threads(args.threads)
    sink = open(args.out, "a") if args.out else None  # noqa: SIM115 (closed after the last case)
    for case, setting in plan(args):
        if case == "memory":
            rows = cases.case_memory(*setting, device=args.device)
        elif case == "crossover":
            rows = cases.case_crossover(setting, args.repeats)
        elif case == "limit":
            rows = limit.case_limit(setting, args.repeats)
        elif case == "data":
            from bench import data_bench
            rows = data_bench.run(quick=args.quick)
        else:
            rows = [getattr(cases, f"case_{case}")(setting, args.repeats)]
        for row in rows:
            line = json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
            print(line, flush=True)
            if sink:
                sink.write(line + "\n")
                sink.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
