#!/usr/bin/env python3
"""Rebuild skydm's reliability (real/bogus) model from simulated surveys.

Simulates demo-shaped surveys with the training seeds, runs them to DIA
sources, labels each by the simulator's truth, fits boosted trees, measures
them on surveys of other seeds (held out), and writes the model file (by
default the one shipped in ``src/skydm/reliability/model.json``).  Prints
one JSON line: the held-out ROC AUC, completeness and purity at the cut.

The shipped model was made with the defaults::

    python scripts/train_reliability.py

CI runs it on a small set (``--train-seeds 100-101 --test-seeds 200 --size
256 --out /tmp/model.json``) to prove the script works.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from skydm.errors import BadValueError, SkydmError
from skydm.reliability.model import PACKAGED_MODEL
from skydm.reliability.sample import Sample, SampleConfig, simulate_sample
from skydm.reliability.training import TrainConfig, evaluate, train_model


def seed_list(text: str) -> list[int]:
    """``"100-105,110"`` -> [100, ..., 105, 110]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise BadValueError("seeds", text, "integers and ranges such as 100-105,110") from None
    if not seeds:
        raise BadValueError("seeds", text, "at least one seed")
    return seeds


def _one(seed: int, config: SampleConfig, cache: Path | None) -> Sample:
    """One seed's labelled sources; with a cache, its images are kept there and
    read back on later runs (the features are always computed afresh)."""
    keep = None
    if cache is not None:
        keep = cache / f"visits{config.n_visits}-template{config.n_template}-size{config.size}"
    return simulate_sample(seed, config, keep_dir=keep)


def samples(seeds: list[int], config: SampleConfig, cache: Path | None, workers: int) -> Sample:
    """The labelled DIA sources of every seed, simulated in ``workers`` processes."""
    if workers <= 1:
        parts = [_one(s, config, cache) for s in seeds]
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_one, seeds, [config] * len(seeds), [cache] * len(seeds)))
    return Sample.concatenate(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-seeds", default="100-111", help="default 100-111")
    parser.add_argument("--test-seeds", default="200-205", help="held out; default 200-205")
    parser.add_argument("--size", type=int, default=512, help="image side (default 512)")
    parser.add_argument("--visits", type=int, default=10, help="visits per survey (default 10)")
    parser.add_argument("--template-visits", type=int, default=5, help="default 5")
    parser.add_argument("--out", type=Path, default=PACKAGED_MODEL, help="model file to write")
    parser.add_argument("--cache", type=Path, help="folder for the simulated samples (reused)")
    parser.add_argument("--workers", type=int, default=1, help="processes simulating seeds")
    parser.add_argument("--cut", type=float, default=0.5, help="reliability cut (default 0.5)")
    args = parser.parse_args(argv)
    try:
        train_seeds, test_seeds = seed_list(args.train_seeds), seed_list(args.test_seeds)
        if set(train_seeds) & set(test_seeds):
            raise BadValueError("--test-seeds", args.test_seeds, "seeds not used for training")
        if args.out.suffix != ".json":
            raise BadValueError("--out", str(args.out), "a .json file")
        if args.out.parent and not args.out.parent.is_dir():
            raise BadValueError("--out", str(args.out), "a file in an existing folder")
        if not 0 < args.cut < 1:
            raise BadValueError("--cut", args.cut, "a reliability between 0 and 1")
        config = SampleConfig(n_visits=args.visits, n_template=args.template_visits, size=args.size)
        if args.cache is not None:
            args.cache.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        train = samples(train_seeds, config, args.cache, args.workers)
        test = samples(test_seeds, config, args.cache, args.workers)
        t1 = time.perf_counter()
        info = {
            "train_seeds": args.train_seeds,
            "test_seeds": args.test_seeds,
            "sample": {
                "n_visits": args.visits,
                "n_template": args.template_visits,
                "size": args.size,
            },
        }
        model = train_model(train, TrainConfig(), info=info)
        held_out = evaluate(model, test, cut=args.cut)
        model.info["held_out"] = held_out.as_dict()
        model.write(args.out)
    except SkydmError as exc:
        print(f"train_reliability: {exc}", file=sys.stderr)
        return 2
    out = {
        "model": str(args.out),
        "version": model.version,
        "train_sources": len(train),
        "simulate_s": round(t1 - t0, 1),
        "fit_s": round(time.perf_counter() - t1, 1),
        **{f"held_out_{k}": v for k, v in held_out.as_dict().items()},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
