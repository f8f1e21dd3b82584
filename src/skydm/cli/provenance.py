"""``skydm provenance``: how a dataset was made, back to the raws."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skydm.pipeline.provenance import ProvenanceNode


def register(subparsers: Any) -> None:
    """Add the ``provenance`` command."""
    p = subparsers.add_parser(
        "provenance",
        help="show how a dataset was made: tasks, configs and inputs back to the raws",
        description=(
            "Print the provenance chain of DATASET: the run, task, config hash and skydm "
            "version that made it, and the same for each of its inputs, down to the raws. "
            "DATASET is TYPE[:KEY=VALUE,...], e.g. 'coadd:band=r,skycell=c0_2300' or "
            "'calexp:visit=3,detector=1'."
        ),
    )
    p.add_argument("dataset", help="TYPE[:KEY=VALUE,...] naming one dataset")
    p.add_argument("--repo", type=Path, required=True, help="the repository")
    p.add_argument("--config", action="store_true", help="also print each task's full config")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``skydm provenance``."""
    from skydm.pipeline.provenance import parse_dataset, provenance_chain
    from skydm.repo import Repository

    with Repository.open(args.repo, create=False) as repo:
        tree = provenance_chain(repo, parse_dataset(args.dataset, repo))
    _show(tree, 0, set(), args.config)
    return 0


def _show(node: ProvenanceNode, depth: int, shown: set[int], config: bool) -> None:
    """Print ``node`` and, the first time it appears, its inputs."""
    import json

    pad = "  " * depth
    what = f"{pad}{node.dataset_type} {node.data_id}"
    if node.stale:
        print(f"{what}  [replaced since: the version used is gone, sha256 {node.checksum[:12]}]")
        return
    rec = node.record
    if rec is None:
        source = node.ref.meta.get("source_name") if node.ref is not None else None
        print(f"{what}  [ingested{f' from {source}' if source else ''}]")
        return
    again = id(node) in shown
    shown.add(id(node))
    print(
        f"{what}  [task {rec['task']}, run {rec['run']}, config {rec['config_sha256'][:12]}, "
        f"skydm {rec['skydm_version']}{'; inputs as above' if again else ''}]"
    )
    if again:
        return
    if config:
        print(f"{pad}  config: {json.dumps(rec['config'], sort_keys=True)}")
    for child in node.inputs:
        _show(child, depth + 1, shown, config)
