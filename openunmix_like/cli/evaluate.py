"""``umx-evaluate``: BSSEval v4 scores of a separator or an oracle on MUSDB18, a track folder, Slakh2100, MoisesDB,
MedleyDB or DSD100."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib.util
import math
import multiprocessing
import sys
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Union

from .. import __version__
from ..choices import ORACLE_NAMES, STEM_GROUPINGS
from ..errors import OpenUnmixLikeError
from ..fileio import held_lock, made_folders_removed_if_empty, writable_folder, write_bytes_atomic, write_json_atomic
from ..processes import children_ignore_ctrl_c, ignore_ctrl_c
# The options and the scoring import no torch, so that --help and a bad option answer at once and the scoring
# processes stay small; the data sets, the oracles and the model (torch with them) are imported where they run.
from ..results import (MUSDB_TARGETS, aggregate, boxplot, closed_fraction, full_markdown, load_records, markdown_table,
                       score_track, write_csv)
from . import sigterm_as_interrupt
from .separate import add_separator_args, load_separator, precision_of

if TYPE_CHECKING:
    from torch import Tensor

    from ..evaluate import Track

# Options a model's scores depend on (the others, such as --device, only change the speed), and an oracle's.
MODEL_SETTINGS = ("targets", "residual", "niter", "softmask", "wiener_win_len", "segment", "overlap")
ORACLE_SETTINGS = ("targets", "nfft", "nhop")
LAYOUTS = ("musdb", "folder", "slakh", "moisesdb", "medleydb", "dsd100")
# References summed from files chosen by the data set's metadata (or, for dsd100, its fixed file names).
STEM_LAYOUTS = ("slakh", "moisesdb", "medleydb", "dsd100")
# The data options of some of those layouts: (flag, argument, the layouts that take it).
LAYOUT_OPTIONS = (("--stem-grouping", "stem_grouping", ("moisesdb", "medleydb")),
                  ("--all-tracks", "all_tracks", ("moisesdb", "medleydb")),
                  ("--valid-tracks", "valid_tracks", ("moisesdb", "medleydb", "dsd100")),
                  ("--include-bleed", "include_bleed", ("medleydb",)))
# --subset of a Slakh2100 root: the folder, by its name (valid too, as --split spells it) -> the split it is.
SLAKH_SUBSETS = {"train": "train", "validation": "valid", "valid": "valid", "test": "test"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umx-evaluate", description="Score a separator (or oracle) with BSSEval v4.")
    g = p.add_argument_group("data")
    g.add_argument("--root", required=True,
                   help="MUSDB18 folder, a folder of track folders (--layout folder), or a Slakh2100, MoisesDB, "
                        "MedleyDB or DSD100 root")
    g.add_argument("--layout", choices=LAYOUTS, default="musdb",
                   help="musdb: through the musdb package; folder: <root>/<track>/{mixture?,<source>...}.wav; "
                        "slakh: <root>/{train,validation,test}/TrackNNNNN/{metadata.yaml,stems/}; moisesdb: "
                        "<root>[/<provider>]/<track_id>/data.json; medleydb: <root>[/Audio]/<TrackName>/"
                        "{<TrackName>_METADATA.yaml,<TrackName>_STEMS/}; dsd100: <root>/Sources/{Dev,Test}/<track>/"
                        "{vocals,drums,bass,other}.wav (default musdb)")
    g.add_argument("--subset", default=None,
                   help="musdb subset (default test); slakh: the folder, train, validation or test")
    g.add_argument("--split", default=None, choices=["train", "valid", "test"],
                   help="musdb: split of the train subset; slakh: the folder (valid: validation/, the default); "
                        "moisesdb, medleydb: the training or validation (default) tracks of the split umx-train "
                        "makes; dsd100: Sources/Test (test, the default) or the training or validation tracks of "
                        "the split umx-train makes of Sources/Dev")
    g.add_argument("--is-wav", action="store_true", help="MUSDB18-HQ wav layout")
    g.add_argument("--mixture-from-sources", action="store_true",
                   help="musdb: separate the sum of the four sources instead of the stored mixture")
    g.add_argument("--stem-grouping", choices=STEM_GROUPINGS, default=None,
                   help="moisesdb, medleydb: targets vocals, bass, drums, other (four: other is every other stem) "
                        "or any top-level stem or instrument label (all), as umx-train groups them (default four)")
    g.add_argument("--valid-tracks", type=int, default=None, metavar="N",
                   help="moisesdb, medleydb, dsd100: the N validation tracks of the split, as given to umx-train "
                        "(default 10%% of the tracks)")
    g.add_argument("--all-tracks", action="store_true",
                   help="moisesdb, medleydb: every track, not only the validation ones")
    g.add_argument("--include-bleed", action="store_true",
                   help="medleydb: also score the tracks whose metadata says has_bleed: yes, as umx-train "
                        "--include-bleed trains on them")
    g.add_argument("--tracks", nargs="+", default=None, help="only these track names")
    add_separator_args(p, precision="fp32")  # scores that do not depend on the machine that computed them
    g = p.add_argument_group("oracles")
    g.add_argument("--oracle", choices=ORACLE_NAMES, default=None, help="score an oracle instead of a model")
    g.add_argument("--with-oracles", nargs="*", choices=ORACLE_NAMES, default=[],
                   help="also score these oracles on the same tracks and print them beside the model "
                        "(with irm2 and mix: the share of the mixture-to-IRM2 distance the model closes)")
    g.add_argument("--nfft", type=int, default=4096, help="oracle STFT length (default 4096)")
    g.add_argument("--nhop", type=int, default=1024, help="oracle STFT hop (default 1024)")
    g = p.add_argument_group("output")
    g.add_argument("--evaldir", default="evaluation",
                   help="scores: <evaldir>/<method>/<track>.json (tracks already there are not scored again), "
                        "results.md, results.csv, sdr-boxplot.png (default ./evaluation); a track scored there "
                        "with another model or other settings is scored again")
    g.add_argument("--outdir", default=None, help="keep the estimates: <outdir>/<method>/<track>/<target>.wav")
    g.add_argument("--cores", type=int, default=1, help="tracks scored in parallel (default 1)")
    g.add_argument("--quiet", action="store_true",
                   help="no per-track lines or download progress bars (the results table is still printed)")
    g.add_argument("--verbose", action="store_true", help="show the traceback of an unexpected error")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


@dataclasses.dataclass
class Method:
    """A method to score: how it estimates a track's targets, and what its records say made them."""

    estimate: Callable[[Track], Dict[str, Tensor]]
    identity: dict  # model_sha256 and settings, stored in each track's record and compared on a rerun
    targets: List[str] = dataclasses.field(default_factory=list)  # the targets tracks need references of


def method_name(args: argparse.Namespace) -> str:
    if args.oracle:
        return args.oracle.upper()
    return Path(args.model).name if args.model else "default"


def build_methods(args: argparse.Namespace) -> Dict[str, Method]:
    """The main method (model or ``--oracle``) and the ``--with-oracles``, by the folder names of their scores."""
    methods = {}
    targets = list(args.targets or [])
    if args.oracle:
        methods[method_name(args)] = oracle_method(args, args.oracle, targets)
    else:
        from ..catalogue.records import model_fingerprint
        from ..evaluate import estimates_fn_for

        separator = load_separator(args)
        targets = [t for t in separator.target_names if t != args.residual]
        settings = {name: getattr(args, name) for name in MODEL_SETTINGS}
        settings["niter"] = separator.niter  # the model's own where --niter was not given: what made the scores
        if separator.input_level is not None:  # only then: records of models without level matching stay valid
            settings["input_level"] = separator.input_level
        settings.update(precision=precision_of(args), mixture_from_sources=_mixture_from_sources(args),
                        **data_settings(args))
        identity = {"model": args.model, "model_sha256": model_fingerprint(separator), "settings": settings}
        methods[method_name(args)] = Method(estimates_fn_for(separator, args.segment or None, args.overlap), identity,
                                            targets)
    for name in args.with_oracles:
        methods.setdefault(name.upper(), oracle_method(args, name, targets))
    return methods


def oracle_method(args: argparse.Namespace, name: str, targets: Sequence[str] = ()) -> Method:
    """An oracle; ``targets`` are those the tracks hold references of (the model's, beside a model)."""
    keys = ("targets",) if name == "mix" else ORACLE_SETTINGS  # the mixture takes no STFT
    settings = {"oracle": name, **{key: getattr(args, key) for key in keys},
                # Masks over every source of the mixture, not the targets alone, and a composite target the
                # sum of its sources' estimates: records made before are scored again (their irm and mwf of a
                # subset of targets, and any oracle of accompaniment, differ from SiSEC 2018's).
                **({"shared_with": "all sources; composites summed"} if name != "mix" else {}),
                "mixture_from_sources": _mixture_from_sources(args), **data_settings(args)}
    if args.layout in STEM_LAYOUTS:  # what it estimates and shares the mixture among follow the references
        settings["references"] = [*targets, *([args.residual] if args.residual and targets else [])]
    from ..evaluate import oracle

    return Method(lambda track: oracle(name, track, oracle_targets(args, track, targets), args.nfft, args.nhop),
                  {"model_sha256": None, "settings": settings}, list(targets))


def data_settings(args: argparse.Namespace) -> dict:
    """What the references depend on beyond the track, by layout (for musdb only ``--is-wav``, when given, so that
    records made without it stay valid; nothing for folder)."""
    if args.layout == "musdb":
        return {"is_wav": True} if args.is_wav else {}  # MUSDB18-HQ: the same track names, other audio
    return {"stem_grouping": args.stem_grouping or "four"} if args.layout in ("moisesdb", "medleydb") else {}


def _mixture_from_sources(args: argparse.Namespace) -> bool:
    return bool(args.mixture_from_sources and args.layout == "musdb")  # a track folder has one input only


# What a track's record says made it; records of releases before these were stored have neither.
IDENTITY_KEYS = ("model_sha256", "settings")


def same_identity(record: dict, identity: dict) -> bool:
    """Whether a track's record was made by the same model and settings (a record without them was not)."""
    return all(key in record and record[key] == identity[key] for key in IDENTITY_KEYS)


def oracle_targets(args: argparse.Namespace, track: Track, targets: Sequence[str] = ()) -> List[str]:
    """What an oracle estimates: ``--targets``; on slakh and moisesdb ``targets`` (the model's beside a
    model) and the residual, or with neither every part of the track's mixture; else the MUSDB targets."""
    if args.layout in STEM_LAYOUTS:
        named = [*targets, *([args.residual] if args.residual and targets else [])]
        return [t for t in named if t in track.references] or list(track.sources)
    if args.targets:
        return [t for t in args.targets if t in track.references]
    musdb = [t for t in MUSDB_TARGETS if t in track.references]
    return musdb or sorted(t for t in track.references if t != "accompaniment")


def load_done(evaldir: Path, methods: Dict[str, Method]) -> Dict[str, Dict[str, dict]]:
    """Per method, the records in ``evaldir`` this run can keep: readable, and made by the same model and settings.

    The others are reported; their tracks are scored again (and their files replaced) when this run reaches them.
    """
    done = {}
    for name, method in methods.items():
        folder = evaldir / name
        records = load_records(folder, on_error=lambda path, exc: _warn(f"{path}: unreadable or not a track result; "
                                                                        "the track is scored again"))
        stale = sorted(t for t, r in records.items() if not same_identity(r, method.identity))
        unmarked = [t for t in stale if not all(key in records[t] for key in IDENTITY_KEYS)]
        for count, made in ((len(unmarked), "by an older umx-evaluate, which did not record the model and settings "
                                            "that made them,"),
                            (len(stale) - len(unmarked), "with another model or other settings")):
            if count:
                _warn(f"{folder}: {count} of its {len(records)} track results were made {made} and are not used; "
                      f"those of the tracks this run scores are replaced (with --tracks, the others stay). To keep "
                      f"them, give another --evaldir")
        done[name] = {t: r for t, r in records.items() if t not in stale}
    return done


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


def check_options(args: argparse.Namespace) -> None:
    """Refuse, before any work, option values no track could use, and output folders that cannot be written."""
    if args.nfft < 2 or args.nhop < 1 or args.nhop > args.nfft:
        raise OpenUnmixLikeError(f"--nfft {args.nfft} --nhop {args.nhop}: give an STFT length of 2 or more and a "
                                 "hop of 1 up to that length (default 4096 and 1024)")
    if args.cores < 1:
        raise OpenUnmixLikeError(f"--cores {args.cores}: give 1 or more")
    for name, value in (("--segment", args.segment), ("--overlap", args.overlap)):
        if not math.isfinite(value) or value < 0:
            raise OpenUnmixLikeError(f"{name} {value:g}: give a number of seconds, 0 or more")
    check_layout(args)
    for option, folder in (("--evaldir", args.evaldir), ("--outdir", args.outdir)):
        if folder is not None:
            writable_folder(option, folder)
    if importlib.util.find_spec("museval") is None:  # the windows and the records are museval's
        raise OpenUnmixLikeError("umx-evaluate scores with museval, which is not installed: "
                                 "pip install 'openunmix-like[evaluate]'")


def check_layout(args: argparse.Namespace) -> None:
    """Refuse data options that do not belong to ``--layout``, or contradict each other."""
    for flag, name, layouts in LAYOUT_OPTIONS:
        value = getattr(args, name)
        if value is not None and value is not False and args.layout not in layouts:
            also = f" (--layout {' and '.join(layouts[1:])} take{'s' if len(layouts) == 2 else ''} it too)"
            raise OpenUnmixLikeError(f"{flag} works with --layout {layouts[0]}; drop it{also if layouts[1:] else ''}")
    if args.layout == "musdb":
        subset = args.subset or "test"
        if args.split == "test":
            raise OpenUnmixLikeError("--split test: MUSDB18's test tracks are a subset; give --subset test")
        if args.split and subset != "train":
            raise OpenUnmixLikeError(f"--split {args.split}: splits exist only in the train subset; add --subset "
                                     f"train (--subset is {subset})")
    if args.layout not in STEM_LAYOUTS:
        return
    for flag, given in (("--is-wav", args.is_wav), ("--mixture-from-sources", args.mixture_from_sources)):
        if given:
            raise OpenUnmixLikeError(f"{flag} is for --layout musdb; the mixture of --layout {args.layout} is always "
                                     "the sum of its stems: drop it")
    if args.oracle and args.residual and not args.targets:
        raise OpenUnmixLikeError(f"--residual {args.residual}: with an oracle, name the targets it is the rest of "
                                 "(--targets)")
    if args.targets:  # as umx-train spells them: "Guitar" and "strings (continued)" name guitar, strings_continued
        from ..data import stem_key

        args.targets = [stem_key(t) for t in args.targets]
        if not all(args.targets):
            raise OpenUnmixLikeError(f"--layout {args.layout}: give targets with letters or digits")
    if args.layout == "slakh":
        slakh_split(args)
    elif args.layout == "dsd100":
        dsd100_split(args)
    else:
        hash_split_of(args)


def slakh_split(args: argparse.Namespace) -> str:
    """The Slakh2100 folder ``--subset`` and ``--split`` name, as its split: ``valid`` (the default), ``test``
    or ``train``. MUSDB's spelling works too: ``--subset train --split valid`` is ``validation/``."""
    if args.subset is not None and args.subset not in SLAKH_SUBSETS:
        raise OpenUnmixLikeError(f"--subset {args.subset}: Slakh2100's folders are train, validation and test; give "
                                 "one of them (or --split train, valid or test)")
    subset = SLAKH_SUBSETS.get(args.subset)
    if args.split and subset and subset != args.split and not (subset == "train" and args.split == "valid"):
        raise OpenUnmixLikeError(f"--subset {args.subset} --split {args.split}: they name different Slakh2100 "
                                 f"folders; give one (--split {args.split} alone)")
    return args.split or subset or "valid"


# How messages name the data sets whose split --valid-tracks makes.
DATA_SET_NAMES = {"moisesdb": "MoisesDB", "medleydb": "MedleyDB", "dsd100": "DSD100"}


def hash_split_of(args: argparse.Namespace) -> Optional[str]:
    """The MoisesDB or MedleyDB tracks scored: ``valid`` (the default) or ``train``, of the split umx-train makes
    with ``--valid-tracks``; ``None`` with ``--all-tracks``."""
    name = DATA_SET_NAMES[args.layout]
    if args.subset is not None:
        raise OpenUnmixLikeError(f"--subset {args.subset}: {name} has no subsets; its validation tracks are "
                                 "scored (the split umx-train makes), or --split train, or --all-tracks")
    if args.split == "test":
        raise OpenUnmixLikeError(f"--split test: {name} has no test split; score the validation tracks (the "
                                 "default), --split train, or --all-tracks")
    if args.all_tracks and (args.split or args.valid_tracks is not None):
        given = "--split" if args.split else "--valid-tracks"
        raise OpenUnmixLikeError(f"--all-tracks scores every track, whatever the split: drop {given}")
    if args.valid_tracks is not None and args.valid_tracks < 1:
        raise OpenUnmixLikeError(f"--valid-tracks {args.valid_tracks}: give at least 1")
    return None if args.all_tracks else args.split or "valid"


def dsd100_split(args: argparse.Namespace) -> str:
    """The DSD100 tracks scored: ``test`` (``Sources/Test``, the default), or ``valid`` or ``train``, of the split
    umx-train makes of ``Sources/Dev`` with ``--valid-tracks``."""
    if args.subset is not None:
        raise OpenUnmixLikeError(f"--subset {args.subset}: DSD100's tracks are chosen with --split: test "
                                 "(Sources/Test, the default), or valid or train (the split umx-train makes of "
                                 "Sources/Dev)")
    split = args.split or "test"
    if args.valid_tracks is not None and split == "test":
        raise OpenUnmixLikeError("--valid-tracks chooses the validation tracks of Sources/Dev: give it with --split "
                                 "valid or train (Sources/Test is scored whole)")
    if args.valid_tracks is not None and args.valid_tracks < 1:
        raise OpenUnmixLikeError(f"--valid-tracks {args.valid_tracks}: give at least 1")
    return split


def layout_tracks(args: argparse.Namespace, targets: Sequence[str], skip: Callable[[str], bool],
                  on_error: Callable[[str, OpenUnmixLikeError], None]):
    """The tracks of ``--root`` to score, with references for ``targets`` (the model's, or ``--targets``)."""
    from ..evaluate import (dsd100_tracks, folder_tracks, medleydb_tracks, moisesdb_tracks, musdb_tracks,
                            slakh_tracks)

    if args.layout == "musdb":
        return musdb_tracks(args.root, args.subset or "test", args.is_wav, args.split, args.tracks,
                            mixture_from_sources=args.mixture_from_sources, skip=skip, on_error=on_error)
    if args.layout == "folder":
        return folder_tracks(args.root, args.tracks, skip=skip, on_error=on_error)
    residual = args.residual if targets else None  # the rest of no target is the whole mixture
    if args.layout == "slakh":
        return slakh_tracks(args.root, slakh_split(args), targets, residual, args.tracks, skip, on_error)
    if args.layout == "dsd100":
        return dsd100_tracks(args.root, dsd100_split(args), args.valid_tracks, targets, residual, args.tracks, skip,
                             on_error)
    if args.layout == "medleydb":
        return medleydb_tracks(args.root, hash_split_of(args), args.valid_tracks, args.stem_grouping or "four",
                               args.include_bleed, targets, residual, args.tracks, skip, on_error)
    return moisesdb_tracks(args.root, hash_split_of(args), args.valid_tracks, args.stem_grouping or "four",
                           targets, residual, args.tracks, skip, on_error)


def _report(message: str) -> None:
    print(f"umx-evaluate: error: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"umx-evaluate: warning: {message}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # A run that scores nothing leaves no new folder; SIGTERM is Ctrl+C from here on (the model loading too).
    with made_folders_removed_if_empty(args.evaldir, args.outdir), sigterm_as_interrupt():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        return evaluate(args)
    except OpenUnmixLikeError as exc:
        _report(str(exc))
        return 1
    except KeyboardInterrupt:  # before or after the scoring, which reports its own
        _report(f"interrupted; the track results written to {args.evaldir} are kept")
        return 130


@dataclasses.dataclass
class Batch:
    """One run's progress: records per method, results written, and tracks that failed."""

    args: argparse.Namespace
    evaldir: Path
    done: Dict[str, Dict[str, dict]]
    written: int = 0
    failed: List[str] = dataclasses.field(default_factory=list)

    def fail(self, where: str, exc: BaseException) -> None:
        """Report a track that could not be scored; the batch goes on."""
        if _interrupted(exc):
            raise KeyboardInterrupt from exc
        if isinstance(exc, OpenUnmixLikeError):
            _report(str(exc))
        else:
            _report(f"{where}: unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
                    "(run with --verbose for details)")
            if self.args.verbose:
                traceback.print_exception(type(exc), exc, exc.__traceback__)  # one argument: Python 3.10+
        self.failed.append(where)


def evaluate(args: argparse.Namespace) -> int:
    check_options(args)
    main_method = method_name(args)
    methods = build_methods(args)
    batch = Batch(args, Path(args.evaldir), load_done(Path(args.evaldir), methods))

    def scored(name: str) -> bool:  # by every method already: not even decoded
        return all(name in batch.done[m] for m in methods)

    tracks = layout_tracks(args, next(iter(methods.values())).targets, skip=scored, on_error=batch.fail)
    pool = Workers(args.cores) if args.cores > 1 else None
    try:
        with sigterm_as_interrupt():
            score_tracks(tracks, methods, batch, pool)
    except KeyboardInterrupt:
        _stop_workers(pool and pool.executor)
        _report(f"interrupted: {batch.written} track results written to {batch.evaldir} in this run are kept; "
                "run the same command again to score the other tracks")
        return 130
    finally:
        if pool:
            pool.executor.shutdown(cancel_futures=True)
    if any(batch.done.values()) or not batch.failed:
        # Another umx-evaluate on this folder (other --tracks) may have written results meanwhile: the summary
        # counts them too. One run at a time reads and summarises, so the last to summarise has seen every result.
        with held_lock(batch.evaldir / ".umx-evaluate.lock"):
            report(args, main_method, written_meanwhile(batch.evaldir, methods, batch.done), batch.evaldir)
    return 1 if batch.failed else 0


def written_meanwhile(evaldir: Path, methods: Dict[str, Method],
                      done: Dict[str, Dict[str, dict]]) -> Dict[str, Dict[str, dict]]:
    """``done`` and the records of this model and settings that are in ``evaldir`` now (written by another run
    since this one started; what this run scored wins). Unreadable and other records were reported at the start."""
    merged = {}
    for name, method in methods.items():
        found = load_records(evaldir / name, on_error=lambda path, exc: None)
        merged[name] = {**{t: r for t, r in found.items() if same_identity(r, method.identity)}, **done[name]}
    return merged


# A job lost twice: with other jobs when a scoring process died, then alone, when its own process died again.
DIED_TWICE = "the process scoring it died, twice (likely out of memory); give fewer --cores or score shorter excerpts"


@dataclasses.dataclass
class Scoring:
    """One track's scoring by one method, from its estimation until its record is written."""

    method: str
    name: str
    where: str  # how messages name it
    job: tuple  # the arguments of score_track, kept to submit it again should its process die
    result: Union[Future, dict, None] = None
    generation: int = 0  # of the pool it was submitted to
    lost: int = 0  # how many times a scoring process died with it


class Workers:
    """The ``--cores`` scoring processes: a process pool, started again when one of its processes dies."""

    def __init__(self, cores: int):
        self.cores = cores
        # Jobs in flight, each holding a track's references and estimates: one waits for a process, which
        # starts it as soon as it is free.
        self.slots = cores + 1
        self.generation = 0  # pools started again so far
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn, not fork: a forked child of a process that has run torch's OpenMP threads can hang. The workers
        # ignore Ctrl+C (which reaches the whole process group): this process stops them and reports once.
        return ProcessPoolExecutor(self.cores, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=ignore_ctrl_c)

    def submit(self, fn: Callable, *args) -> Future:
        return self.executor.submit(fn, *args)

    def wait(self, futures: Sequence[Future]) -> None:
        """Return once one of ``futures`` is done."""
        wait_futures(futures, return_when=FIRST_COMPLETED)

    def restart(self, generation: int) -> None:
        """New processes in place of pool ``generation``, one of whose processes died; a pool already replaced
        (each job lost with it asks) is left alone."""
        if generation == self.generation:
            self.executor.shutdown(cancel_futures=True)  # its other processes are ended already
            self.executor = self._start()
            self.generation += 1


def score_tracks(tracks, methods: Dict[str, Method], batch: Batch, pool: Optional[Workers]) -> None:
    """Estimate and score each track by each method that has no record of it; write each record when ready.

    With ``pool``, the next track is estimated only once fewer than ``pool.slots`` jobs are in flight: estimating
    is much faster than scoring, and each job holds its track's references and estimates until it is written.
    """
    pending: List[Scoring] = []
    for track in tracks:
        for method, spec in methods.items():
            if track.name in batch.done[method]:
                continue
            where = f"{track.path or track.name} ({method})"
            if pool and pending:
                _make_room(pending, methods, batch, pool, pool.slots - 1)
            try:
                scoring = Scoring(method, track.name, where, scoring_job(batch.args, method, spec, track))
                if pool:
                    _submit(pool, scoring, pending, methods, batch)
                else:
                    scoring.result = score_track(*scoring.job)
            except Exception as exc:  # one track's failure does not stop the others
                batch.fail(where, exc)
                continue
            pending.append(scoring)
            if not batch.args.quiet:
                print(f"{method}: {track.name}", file=sys.stderr)
            if not pool:
                _collect(pending, methods, batch)
    if pool:
        _make_room(pending, methods, batch, pool, 0)


def _give(pool: Workers, scoring: Scoring) -> None:
    with children_ignore_ctrl_c():  # a worker it starts must not die of Ctrl+C on the terminal while still starting
        scoring.result = pool.submit(score_track, *scoring.job)
    scoring.generation = pool.generation


def _submit(pool: Workers, scoring: Scoring, pending: List[Scoring], methods: Dict[str, Method],
            batch: Batch) -> None:
    """Submit ``scoring`` to ``pool``; if a process has died since the last look, to a new pool, once the jobs
    lost with it are scored again."""
    try:
        _give(pool, scoring)
    except BrokenProcessPool:
        pool.restart(pool.generation)
        _make_room(pending, methods, batch, pool, 0)
        _give(pool, scoring)


def _make_room(pending: List[Scoring], methods: Dict[str, Method], batch: Batch, pool: Workers, room: int) -> None:
    """Wait until at most ``room`` jobs are in flight, writing each record as soon as it is ready.

    A process that dies takes every job in flight with it (the pool cannot tell whose it was): each is scored
    again once, alone. A track that died of the memory the others took then has it all, and one whose process
    dies again is the cause, and fails.
    """
    retries: List[Scoring] = []
    while True:
        lost = _collect(pending, methods, batch)
        if any(not scoring.lost for scoring in lost):
            _warn("a scoring process died (likely out of memory); scoring again, one at a time: " +
                  ", ".join(f"{s.name} ({s.method})" for s in lost if not s.lost))
        for scoring in lost:
            pool.restart(scoring.generation)
            if scoring.lost:
                batch.fail(scoring.where, OpenUnmixLikeError(f"{scoring.where}: {DIED_TWICE}"))
            else:
                scoring.lost += 1
                retries.append(scoring)
        if retries and not pending:
            scoring = retries.pop(0)
            try:
                _give(pool, scoring)
            except Exception as exc:
                batch.fail(scoring.where, exc)
                continue
            pending.append(scoring)
        elif not retries and len(pending) <= room and not any(scoring.lost for scoring in pending):
            return
        else:
            pool.wait([scoring.result for scoring in pending])


def scoring_job(args: argparse.Namespace, method: str, spec: Method, track: Track) -> tuple:
    """The arguments of :func:`score_track` for one track and method (the estimates are made here)."""
    estimates = {t: e for t, e in spec.estimate(track).items() if t in track.references}
    if not estimates:
        raise OpenUnmixLikeError(f"{track.path or track.name}: none of the estimated targets has a reference "
                                 f"(the track has {', '.join(sorted(track.references))})")
    keep_estimates(args.outdir, method, track, estimates)
    refs = {t: track.references[t].numpy().T for t in estimates}
    ests = {t: e.numpy().T for t, e in estimates.items()}
    return track.name, refs, ests, track.rate


def _interrupted(exc: Optional[BaseException]) -> bool:
    """Whether ``exc`` arose from Ctrl+C: museval's ``except np.linalg.linalg.LinAlgError`` (gone in numpy 2)
    turns a KeyboardInterrupt during its solve into an AttributeError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__context__
    return False


def _stop_workers(pool: Optional[ProcessPoolExecutor]) -> None:
    """Stop the scoring processes now, not after the tracks they hold (which would be lost anyway)."""
    if pool is None:
        return
    if hasattr(pool, "terminate_workers"):  # Python 3.14
        pool.terminate_workers()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def _collect(pending: List[Scoring], methods: Dict[str, Method], batch: Batch) -> List[Scoring]:
    """Write the finished scores (each track's JSON, with what made it, as soon as it is ready), without waiting;
    returns the jobs lost with a scoring process that died. Both leave ``pending``."""
    lost = []
    for scoring in list(pending):
        result = scoring.result
        if isinstance(result, Future):
            if not result.done():
                continue
            pending.remove(scoring)
            try:
                result = result.result()
            except BrokenProcessPool:
                lost.append(scoring)
                continue
            except Exception as exc:
                batch.fail(scoring.where, exc)
                continue
        else:
            pending.remove(scoring)
        result.update(methods[scoring.method].identity)
        path = batch.evaldir / scoring.method / f"{scoring.name.replace('/', '_')}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, result)
        except OSError as exc:
            remedy = ("the track's name is too long for a file name there; rename its folder (at most 250 bytes)"
                      if exc.errno == errno.ENAMETOOLONG else "free space or give another --evaldir")
            batch.fail(scoring.where, OpenUnmixLikeError(f"{path}: cannot write it ({exc.strerror or exc}); {remedy}"))
            continue
        batch.done[scoring.method][scoring.name] = result
        batch.written += 1
    return lost


def report(args, main_method: str, done: Dict[str, Dict[str, dict]], evaldir: Path) -> None:
    tables = {m: aggregate(records) for m, records in done.items() if records}
    if not tables:
        raise OpenUnmixLikeError("no track was scored")
    if main_method not in tables:  # every track failed for the main method, not for the oracles beside it
        main_method = next(iter(tables))
    parts = [full_markdown(main_method, tables[main_method])]
    if len(tables) > 1:
        parts.append("SDR, median over tracks:\n\n" + markdown_table(tables))
    if {"IRM2", "MIX"} <= set(tables) and main_method not in ("IRM2", "MIX"):
        fraction = closed_fraction(tables[main_method], tables["MIX"], tables["IRM2"])
        parts.append("Share of the SDR distance from the mixture to IRM2 that "
                     f"{main_method} closes: " + ", ".join(f"{t} {100 * f:.0f} %" for t, f in fraction.items()))
    text = "\n\n".join(parts) + "\n"
    print(text)
    summary = evaldir / "results.md"
    try:
        write_bytes_atomic(summary, text.encode())
        summary = evaldir / "results.csv"
        write_csv(summary, tables)
        summary = evaldir / "sdr-boxplot.png"
        boxplot(summary, {m: done[m] for m in tables})
    except PermissionError as exc:  # on Windows, a file open in another program cannot be replaced
        raise OpenUnmixLikeError(f"{summary}: cannot be replaced ({exc.strerror or exc}); is it open in another "
                                 "program, such as a spreadsheet? Close it and run the same command again: the "
                                 "scored tracks are kept and not scored again") from None


if __name__ == "__main__":
    sys.exit(main())
