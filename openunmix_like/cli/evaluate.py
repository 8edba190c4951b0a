"""``umx-evaluate``: BSSEval v4 scores of a separator or an oracle on MUSDB18 or a track folder."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .. import __version__
from ..errors import OpenUnmixLikeError
from ..evaluate import (MUSDB_TARGETS, ORACLES, Track, aggregate, boxplot, closed_fraction, estimates_fn_for,
                        folder_tracks, full_markdown, markdown_table, musdb_tracks, oracle, score_track, write_csv)
from ..fileio import write_bytes_atomic, write_json_atomic
from .separate import add_separator_args, load_separator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umx-evaluate", description="Score a separator (or oracle) with BSSEval v4.")
    g = p.add_argument_group("data")
    g.add_argument("--root", required=True, help="MUSDB18 folder, or a folder of track folders (--layout folder)")
    g.add_argument("--layout", choices=["musdb", "folder"], default="musdb",
                   help="musdb: through the musdb package; folder: <root>/<track>/{mixture?,<source>...}.wav")
    g.add_argument("--subset", default="test", help="musdb subset (default test)")
    g.add_argument("--split", default=None, choices=["train", "valid"], help="musdb split of the train subset")
    g.add_argument("--is-wav", action="store_true", help="MUSDB18-HQ wav layout")
    g.add_argument("--mixture-from-sources", action="store_true",
                   help="musdb: separate the sum of the four sources instead of the stored mixture")
    g.add_argument("--tracks", nargs="+", default=None, help="only these track names")
    add_separator_args(p, precision="fp32")  # scores that do not depend on the machine that computed them
    g = p.add_argument_group("oracles")
    g.add_argument("--oracle", choices=ORACLES, default=None, help="score an oracle instead of a model")
    g.add_argument("--with-oracles", nargs="*", choices=ORACLES, default=[],
                   help="also score these oracles on the same tracks and print them beside the model "
                        "(with irm2 and mix: the share of the mixture-to-IRM2 distance the model closes)")
    g.add_argument("--nfft", type=int, default=4096, help="oracle STFT length (default 4096)")
    g.add_argument("--nhop", type=int, default=1024, help="oracle STFT hop (default 1024)")
    g = p.add_argument_group("output")
    g.add_argument("--evaldir", default="evaluation",
                   help="scores: <evaldir>/<method>/<track>.json (tracks already there are not scored again), "
                        "results.md, results.csv, sdr-boxplot.png (default ./evaluation)")
    g.add_argument("--outdir", default=None, help="keep the estimates: <outdir>/<method>/<track>/<target>.wav")
    g.add_argument("--cores", type=int, default=1, help="tracks scored in parallel (default 1)")
    g.add_argument("--quiet", action="store_true",
                   help="no per-track lines or download progress bars (the results table is still printed)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def method_name(args: argparse.Namespace) -> str:
    if args.oracle:
        return args.oracle.upper()
    return Path(args.model).name if args.model else "default"


def oracle_targets(args: argparse.Namespace, track: Track) -> List[str]:
    if args.targets:
        return [t for t in args.targets if t in track.references]
    musdb = [t for t in MUSDB_TARGETS if t in track.references]
    return musdb or sorted(t for t in track.references if t != "accompaniment")


def load_records(folder: Path) -> Dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def keep_estimates(outdir: Optional[str], method: str, track: Track, estimates) -> None:
    if not outdir:
        return
    import soundfile as sf

    from ..fileio import atomic_path

    folder = Path(outdir) / method / track.name
    folder.mkdir(parents=True, exist_ok=True)
    for target, audio in estimates.items():
        with atomic_path(folder / f"{target}.wav", suffix=".wav") as tmp:
            sf.write(str(tmp), audio.numpy().T, track.rate, subtype="FLOAT")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return evaluate(args)
    except OpenUnmixLikeError as exc:
        print(f"umx-evaluate: error: {exc}", file=sys.stderr)
        return 1


def evaluate(args: argparse.Namespace) -> int:
    main_method = method_name(args)
    methods = {main_method: None}
    if not args.oracle:
        separator = load_separator(args)
        methods[main_method] = estimates_fn_for(separator, args.segment or None, args.overlap)
    else:
        methods[main_method] = _oracle_fn(args, args.oracle)
    for name in args.with_oracles:
        methods.setdefault(name.upper(), _oracle_fn(args, name))
    evaldir = Path(args.evaldir)
    done = {m: load_records(evaldir / m) for m in methods}

    def scored(name: str) -> bool:  # by every method already: not even decoded
        return all(name in done[m] for m in methods)

    if args.layout == "musdb":
        tracks = musdb_tracks(args.root, args.subset, args.is_wav, args.split, args.tracks,
                              mixture_from_sources=args.mixture_from_sources, skip=scored)
    else:
        tracks = folder_tracks(args.root, args.tracks, skip=scored)
    # spawn, not fork: a forked child of a process that has run torch's OpenMP threads can hang.
    pool = ProcessPoolExecutor(args.cores, mp_context=multiprocessing.get_context("spawn")) if args.cores > 1 else None
    pending: List[tuple] = []
    try:
        for track in tracks:
            for method, fn in methods.items():
                if track.name in done[method]:
                    continue
                estimates = {t: e for t, e in fn(track).items() if t in track.references}
                if not estimates:
                    raise OpenUnmixLikeError(f"{track.name}: none of the estimated targets has a reference")
                keep_estimates(args.outdir, method, track, estimates)
                refs = {t: track.references[t].numpy().T for t in estimates}
                ests = {t: e.numpy().T for t, e in estimates.items()}
                job = (track.name, refs, ests, track.rate)
                result = pool.submit(score_track, *job) if pool else score_track(*job)
                pending.append((method, track.name, result))
                if not args.quiet:
                    print(f"{method}: {track.name}", file=sys.stderr)
                _collect(pending, done, evaldir, wait=pool is None)
        _collect(pending, done, evaldir, wait=True)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    report(args, main_method, done, evaldir)
    return 0


def _oracle_fn(args, name):
    return lambda track: oracle(name, track, oracle_targets(args, track), args.nfft, args.nhop)


def _collect(pending: list, done: dict, evaldir: Path, wait: bool) -> None:
    """Write finished scores (each track's JSON as soon as it is ready)."""
    for item in list(pending):
        method, name, result = item
        if isinstance(result, Future):
            if not wait and not result.done():
                continue
            result = result.result()
        (evaldir / method).mkdir(parents=True, exist_ok=True)
        write_json_atomic(evaldir / method / f"{name.replace('/', '_')}.json", result)
        done[method][name] = result
        pending.remove(item)


def report(args, main_method: str, done: Dict[str, Dict[str, dict]], evaldir: Path) -> None:
    tables = {m: aggregate(records) for m, records in done.items() if records}
    if not tables:
        raise OpenUnmixLikeError("no track was scored")
    parts = [full_markdown(main_method, tables[main_method])]
    if len(tables) > 1:
        parts.append("SDR, median over tracks:\n\n" + markdown_table(tables))
    if {"IRM2", "MIX"} <= set(tables) and main_method not in ("IRM2", "MIX"):
        fraction = closed_fraction(tables[main_method], tables["MIX"], tables["IRM2"])
        parts.append("Share of the SDR distance from the mixture to IRM2 that "
                     f"{main_method} closes: " + ", ".join(f"{t} {100 * f:.0f} %" for t, f in fraction.items()))
    text = "\n\n".join(parts) + "\n"
    print(text)
    write_bytes_atomic(evaldir / "results.md", text.encode())
    write_csv(evaldir / "results.csv", tables)
    boxplot(evaldir / "sdr-boxplot.png", {m: done[m] for m in tables})


if __name__ == "__main__":
    sys.exit(main())
