"""Catalogue-scale separation: ``umx-separate --engine ray`` over many machines, GPUs and object storage.

Importing this package does not import Ray (only :func:`.engine.run` does), so
the options can be added to ``umx-separate`` on a base install.
"""
from __future__ import annotations

import argparse
import json

from ..errors import OpenUnmixLikeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``umx-separate``'s engine options (used with ``--engine ray`` unless said otherwise)."""
    g = parser.add_argument_group("engine (see docs/catalogue.md)")
    g.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: threads in this process (--jobs); ray: decode, separate and write as Ray tasks "
                        "and actors, resumable, over a local or remote Ray cluster (pip install "
                        "'openunmix-like[ray]') (default local)")
    g.add_argument("--manifest", default=None, metavar="FILE",
                   help="also separate the paths or URLs listed in FILE: one a line, or a CSV/Parquet table "
                        "with a 'path' column (URLs need --engine ray)")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join (HOST:PORT of 'ray start --head', or 'auto'); default: "
                        "$RAY_ADDRESS where set (as Ray's own), else start a local Ray on this machine's CPUs "
                        "and GPUs")
    g.add_argument("--actors", type=int, default=None, metavar="N",
                   help="separation actors, each holding the model once (default: one per GPU with "
                        "--device cuda; on CPUs 7/8 of the cluster's CPUs / --actor-cpus, at least 1)")
    g.add_argument("--actor-cpus", type=float, default=1.0, metavar="C",
                   help="CPUs each separation actor holds, also its torch threads (default 1)")
    g.add_argument("--actor-gpus", type=float, default=1.0, metavar="G",
                   help="GPUs each separation actor holds with --device cuda; fractions share a GPU (default 1)")
    g.add_argument("--tracks-per-call", type=int, default=None, metavar="N",
                   help="tracks a separation actor takes at once; their segments of equal length share batches "
                        "(--batch-segments), which fills a GPU better on short tracks (default: 8 with "
                        "--device cuda, 1 on CPUs)")
    g.add_argument("--io-cpus", type=float, default=0.5, metavar="C",
                   help="CPUs each decode or write task holds (default 0.5)")
    g.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                   help="tracks decoded, separated or written at once, bounding memory "
                        "(default (2 x actors + 1) x --tracks-per-call + 1)")
    g.add_argument("--stream-over", type=float, default=1200.0, metavar="SECONDS",
                   help="tracks longer than this are decoded, separated and written piece by piece inside their "
                        "separation actor, in bounded memory, instead of passing whole between the stages "
                        "(default 1200)")
    g.add_argument("--storage-options", default=None, metavar="JSON",
                   help='fsspec options for URLs, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
                        "(default: the backend's own configuration and environment)")


def parse_storage_options(text):
    if text is None:
        return None
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise OpenUnmixLikeError(f"--storage-options: not valid JSON ({exc})") from None
    if not isinstance(options, dict):
        raise OpenUnmixLikeError('--storage-options: expected an object like {"endpoint_url": "http://..."}')
    return options
