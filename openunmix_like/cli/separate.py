"""``umx-separate``: split songs into stems from the command line."""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import os
import shutil
import sys
import threading
import traceback
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .. import __version__, catalogue
from . import sigterm_as_interrupt
from ..audio import MP3_BITRATES, MP3_DEFAULT_BITRATE
from ..errors import AudioError, OpenUnmixLikeError, shown
from ..naming import DEFAULT_TEMPLATE, aggregate_estimates, folder_name, stem_names, track_name
from ..processes import interrupts_ignored
from ..settings import DEFAULT_OVERLAP, DEFAULT_SEGMENT, PRECISIONS, WienerSettings
from ..writer import EncoderStopped

# torch (seconds to import) and the models load once the options are checked: --help, --version and a bad option
# answer at once.
if TYPE_CHECKING:
    from ..separator import Separator

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mp4", ".aac",
                    ".aif", ".aiff", ".wma", ".webm", ".mka", ".caf", ".w64", ".au"}
WIENER = WienerSettings()  # the defaults

# Options of the reference Open-Unmix CLI (umx), Demucs and Spleeter that umx-separate spells otherwise or
# lacks: each is refused with one line naming what to write instead (docs/migrating.md). Matched whole, before
# argparse, which would otherwise take --mp3 for --mp3-bitrate.
FOREIGN_OPTIONS = {
    "--audio-backend": "umx-separate reads audio with soundfile and the ffmpeg program, there is no backend "
                       "to choose; leave it out",
    "--filterbank": "umx-separate has one STFT, torch.stft (the reference's 'torch'); leave it out "
                    "(umx-export writes ONNX models)",
    **dict.fromkeys(("-n", "--name"), "use --model NAME or --model DIR (umxhq, umx, umxl, umxse or a model "
                                      "folder; Demucs models do not load here)"),
    **dict.fromkeys(("-o", "--output_path"), "use --outdir DIR"),
    "-d": "use --device cpu|cuda|mps (Demucs's -d) or --duration SECONDS (Spleeter's -d)",
    "--two-stems": "use --targets STEM --residual NAME, e.g. --targets vocals --residual no_vocals",
    "--mp3": "use --ext mp3 (and --mp3-bitrate KBPS, default 320)",
    "--flac": "use --ext flac",
    "--int24": "use --bits 24",
    "--float32": "use --bits 32 (32-bit float wav)",
    "--clip-mode": "use --clip rescale|clamp|none",
    "-j": "use --jobs N (files separated in parallel)",
    "--shifts": ("umx-separate has no averaging over shifted copies (it gained nothing measurable for "
                 "these models); leave it out"),
    "--no-split": "use --segment 0 (the whole track in one pass)",
    "--other-method": "use --residual NAME for the mixture minus the targets, or --aggregate to sum targets",
    "--mp3-preset": "umx-separate encodes mp3 at a constant --mp3-bitrate; leave it out",
    **dict.fromkeys(("--repo", "--sig"), "use --model DIR with a model folder"),
    "-v": "use --verbose",
    **dict.fromkeys(("-p", "--params_filename"), "use --model (spleeter:4stems' targets are the default ones; "
                                                 "spleeter:2stems is --targets vocals --residual accompaniment; "
                                                 "Spleeter models do not load here)"),
    **dict.fromkeys(("-i", "--inputs"), "give the input files as arguments, without an option"),
    **dict.fromkeys(("-c", "--codec"), "use --ext wav|flac|mp3"),
    **dict.fromkeys(("-b", "--bitrate"), "use --mp3-bitrate KBPS, a number (320, not 320k)"),
    **dict.fromkeys(("-f", "--filename_format"), "use --filename with {track}, {target} and {ext} "
                                                 "(Spleeter's {filename}, {instrument} and {codec})"),
    **dict.fromkeys(("-s", "--offset"), "use --start SECONDS"),
    "--mwf": "the Wiener filter is always on; --niter N sets its EM iterations (default 1)",
    **dict.fromkeys(("-B", "--stft-backend", "-a", "--adapter"), "umx-separate has one STFT and one audio "
                                                                 "reader; leave it out"),
}


def foreign_option(argv: Sequence[str]) -> Optional[str]:
    """The message for the first option of another tool in ``argv`` (:data:`FOREIGN_OPTIONS`), if any."""
    for token in argv:
        if token == "--":
            return None
        name = token.split("=", 1)[0]
        if name in FOREIGN_OPTIONS:
            return f"{name}: {FOREIGN_OPTIONS[name]}; see docs/migrating.md"
    return None


def extension(value: str) -> str:
    """``--ext``'s value without a leading dot, so the reference CLI's ``--ext .flac`` works too."""
    return value[1:] if value.startswith(".") else value


def add_separator_args(parser: argparse.ArgumentParser, precision: str = "auto") -> None:
    """Options that choose and configure the separator (shared by CLI tools); ``precision``
    is the default of ``--precision``."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="model folder, or a published model name (umxhq, umx, umxl, umxse); "
                        "default: the bundled model")
    g.add_argument("--targets", nargs="+", default=None, help="targets to separate (default: all of the model's)")
    g.add_argument("--residual", default=None, metavar="NAME",
                   help="add a target NAME holding the mixture minus the other targets")
    g.add_argument("--niter", type=int, default=None,
                   help="Wiener filter EM iterations; 0 skips them (default: the model folder's own, from its "
                        f"separator.json, where umx-train --dataset aligned writes 0; else {WIENER.niter})")
    g.add_argument("--softmask", action="store_true",
                   help="start the Wiener filter from ratio masks (with one target: the input unchanged)")
    g.add_argument("--wiener-win-len", type=int, default=WIENER.wiener_win_len,
                   help=f"frames filtered together; 0 filters each segment at once (default {WIENER.wiener_win_len})")
    g.add_argument("--segment", type=float, default=DEFAULT_SEGMENT,
                   help=f"seconds separated at once, bounding memory; 0 = whole track (default {DEFAULT_SEGMENT})")
    g.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP,
                   help=f"seconds of cross-fade between segments (default {DEFAULT_OVERLAP})")
    g.add_argument("--batch-segments", type=int, default=None, metavar="N",
                   help="segments separated at once, as one batch through each model (default: 1 on the CPU, "
                        "on a GPU as many as a quarter of its free memory holds)")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="where to run (default cpu)")
    g.add_argument("--precision", default=precision, choices=PRECISIONS,
                   help="the target models' matrix products: bf16 is faster on CPUs and GPUs with bfloat16 units, "
                        "its SDR cost is in docs/benchmarks.md; fp32 equals the reference package to float "
                        f"rounding; auto: bf16 on CPUs with bfloat16 units, fp32 elsewhere (default {precision})")
    g.add_argument("--input-level", default="auto", type=input_level_arg, metavar="auto|off|DB",
                   help="turn a track more than 3 dB from this level (dBFS RMS of its median second) to within 3 dB of "
                        "it before separating, and its stems back: quiet masters separate as well as loud ones; "
                        "auto: the level the model was trained at where its folder records one (the bundled model: "
                        "-16.5), else off; off: tracks as they are (with --precision fp32, equal to the reference "
                        "package). Default auto")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="umx-separate",
        description="Separate music into stems (vocals, drums, bass, other) with Open-Unmix-style models.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="audio files, folders (searched recursively) or globs; with --engine ray also URLs "
                        "(s3://bucket/key, file://...); a leading ~ is the home folder, even where no shell "
                        "expanded it (so in --outdir and manifest lines)")
    add_separator_args(p)
    g = p.add_argument_group("input and output")
    g.add_argument("--aggregate", default=None, metavar="JSON",
                   help='sum targets into new stems, e.g. \'{"vocals": ["vocals"], '
                        '"accompaniment": ["drums", "bass", "other"]}\' (only these are written)')
    g.add_argument("--start", type=float, default=0.0, help="start offset in seconds (default 0)")
    g.add_argument("--duration", type=float, default=None, help="seconds to separate (default: to the end)")
    g.add_argument("--outdir", default="separated", help="output folder (default ./separated)")
    g.add_argument("--filename", default=DEFAULT_TEMPLATE,
                   help="output path template under --outdir with {track}, {target}, {ext}, {model} and "
                        "{folder} (the input's folder below the folder or pattern it was found by, else as given; "
                        "'{folder}/{track}/{target}.{ext}' mirrors a catalogue's tree) "
                        f"(default {DEFAULT_TEMPLATE})")
    g.add_argument("--ext", default="wav", type=extension, choices=["wav", "flac", "mp3"],
                   help="output format (default wav); mp3 is encoded by the ffmpeg program")
    g.add_argument("--bits", type=int, default=None, choices=[16, 24, 32],
                   help="bits per sample of wav and flac; 32 is float, wav only (default 16)")
    g.add_argument("--mp3-bitrate", type=int, default=None, choices=MP3_BITRATES, metavar="KBPS",
                   help=f"kbit/s of mp3 stems, constant (default {MP3_DEFAULT_BITRATE}; rates below 32 kHz allow "
                        "at most 160)")
    g.add_argument("--clip", default="rescale", choices=["rescale", "clamp", "none"],
                   help="peaks above full scale: rescale the whole track, clamp samples, or none (default rescale)")
    g.add_argument("--keep-model-rate", action="store_true",
                   help="write at the model's sample rate instead of the input's")
    g.add_argument("--force", action="store_true", help="overwrite existing output files")
    g.add_argument("--skip-existing", action="store_true",
                   help="leave out inputs whose stems all exist already (an earlier run's; its settings are not "
                        "compared), so a stopped batch is finished by running it again")
    g.add_argument("--jobs", type=int, default=1, help="files separated in parallel (default 1)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or summary lines")
    g.add_argument("--verbose", action="store_true", help="show tracebacks of unexpected errors")
    # The reference CLI's spelling of the default, --device cpu (docs/migrating.md).
    p.add_argument("--no-cuda", action="store_true", help=argparse.SUPPRESS)
    catalogue.add_arguments(p)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def collect_inputs(specs: Sequence[str], exclude: Optional[Path] = None) -> Tuple[Dict[Path, str], List[str]]:
    """Expand files, folders and globs into audio files; return them, each with its ``{folder}``
    (:func:`openunmix_like.stems.folder_name`), and the errors.

    Folders are searched without their hidden files (``.name``: partial outputs, macOS
    resource forks) and without the folder ``exclude`` (the output folder), if it is inside;
    so are patterns, below their part before the first wildcard.
    A file found twice (also under two spellings, ``song.wav`` and ``/music/song.wav``) keeps its
    first name and ``{folder}``.
    """
    files: Dict[Path, str] = {}
    errors: List[str] = []
    skip = exclude.resolve() if exclude is not None else None
    seen = set()

    def add(found: Path, folder: str) -> None:
        if found.resolve() not in seen:
            seen.add(found.resolve())
            files[found] = folder

    for spec in specs:
        path = Path(spec)
        if path.is_file():
            add(path, folder_name(path))
        elif path.is_dir():
            found, broken = folder_files(path)
            errors.extend(broken_link(link) for link in broken)
            found = [p for p in found if not _inside(p, skip, path)]
            if not found and not broken:
                errors.append(f"{path}: folder holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
            for p in found:
                add(p, folder_name(p, root=str(path)))
        elif glob.has_magic(spec):
            root = pattern_root(spec)
            matched = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            # A wildcard reaching into the output folder below the pattern's fixed part would take an earlier
            # run's stems for songs, as a folder search would without leaving that folder out.
            found = [p for p in matched if not _inside(p, skip, Path(root))]
            if not found:
                errors.append(f"{spec}: pattern matches no files"
                              + (f" outside --outdir {exclude}" if matched else "")
                              + ("; [ ] in a pattern match one of the characters between them: write [[] for "
                                 "a [ in a file or folder name" if "[" in spec and not matched else ""))
            for p in found:
                add(p, folder_name(p, root=root))
        elif path.is_symlink():
            errors.append(broken_link(path))
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


def broken_link(link: Path) -> str:
    """The message for a link that leads nowhere, naming where it leads."""
    return f"{link}: a link to {os.readlink(link)}, which does not exist; fix or remove the link"


def folder_files(folder: Path) -> Tuple[List[Path], List[Path]]:
    """The audio files in ``folder`` and its subfolders, without hidden files (``.name``), sorted; and the links
    among them that lead nowhere. Linked folders are searched too, each folder once (a link to a folder above
    it does not loop)."""
    found, broken, seen = [], [], set()
    for top, folders, names in os.walk(folder, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            folders.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        for name in names:
            p = Path(top) / name
            if name.startswith(".") or p.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            if p.is_file():
                found.append(p)
            elif p.is_symlink() and not p.exists():
                broken.append(p)
    return sorted(found), sorted(broken)


def pattern_root(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard: ``music`` for ``music/*/*.mp3``."""
    parts = pattern.replace(os.sep, "/").split("/")
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts[:-1]))
    return "/".join(fixed) or ("/" if pattern.startswith("/") else ".")


def _inside(path: Path, folder: Optional[Path], searched: Path) -> bool:
    """Whether ``path`` is under ``folder``, a folder strictly inside ``searched``."""
    if folder is None:
        return False
    top = searched.resolve()
    if folder == top or top not in folder.parents:
        return False
    return folder in path.resolve().parents


def relative_outputs(track: str, names: Sequence[str], args: argparse.Namespace,
                     folder: str = "") -> Dict[str, str]:
    """Stem name -> output path relative to ``--outdir``, from the ``--filename`` template."""
    model = Path(args.model).name if args.model else "default"
    try:
        return stem_names(args.filename, track, names, args.ext, model, folder)
    except ValueError as exc:
        raise OpenUnmixLikeError(f"--filename {exc}") from None


def output_paths(path: Path, names: Sequence[str], args: argparse.Namespace, folder: str = "") -> Dict[str, Path]:
    return {name: Path(args.outdir) / rel
            for name, rel in relative_outputs(track_name(path), names, args, folder).items()}


def separate_file(path: Path, separator: Separator, args: argparse.Namespace,
                  aggregate: Optional[dict], outputs: Dict[str, Path],
                  on_progress: Optional[Callable[[float], None]] = None,
                  cancel: Optional[threading.Event] = None) -> None:
    """Separate one file into its output paths (all written, or none), with the options in ``args``.

    ``on_progress`` is called with the fraction done after each chunk. When ``cancel`` is set,
    the track stops after the chunk in hand, raising :class:`~openunmix_like.stems.Cancelled`.
    """
    from .. import stems

    stems.write_stems(path, separator, outputs, ext=args.ext, bits=args.bits, mp3_bitrate=args.mp3_bitrate,
                      clip=args.clip, keep_model_rate=args.keep_model_rate, start=args.start,
                      duration=args.duration, aggregate=aggregate, segment=args.segment, overlap=args.overlap,
                      batch_segments=args.batch_segments, overwrite=args.force, progress=not args.quiet,
                      on_progress=on_progress, cancel=cancel, names=stems.CLI_NAMES)


def load_separator(args: argparse.Namespace) -> Separator:
    from ..separator import Separator, check_device

    try:
        check_device(args.device)
    except ValueError as exc:
        raise OpenUnmixLikeError(f"--device {args.device}: {exc}") from None
    # Without --niter the model's own applies (Separator.from_pretrained): no WienerSettings is passed.
    options = dict(softmask=args.softmask, residual=args.residual, wiener_win_len=args.wiener_win_len,
                   **({} if args.niter is None else {"niter": args.niter}))
    try:
        WienerSettings(**options)  # refused before the model loads (maybe downloads)
    except ValueError as exc:
        raise OpenUnmixLikeError(f"--niter, --residual or --wiener-win-len: {exc}") from None
    precision = precision_of(args)
    try:
        return Separator.from_pretrained(args.model, targets=args.targets, device=args.device,
                                         progress=not args.quiet, precision=precision,
                                         input_level=getattr(args, "input_level", "auto"), **options)
    except ValueError as exc:  # e.g. a --residual named like one of the model's targets
        raise OpenUnmixLikeError(f"--targets or --residual: {exc}") from None


def check_options(args: argparse.Namespace) -> None:
    """Refuse, once and before any work, option values that no track could use; fill in the format's defaults."""
    from ..audio import subtype_for

    for name, value in (("--segment", args.segment), ("--overlap", args.overlap), ("--start", args.start)):
        if not math.isfinite(value) or value < 0:
            raise OpenUnmixLikeError(f"{name} {value:g}: give a number of seconds, 0 or more")
    if args.duration is not None and (not math.isfinite(args.duration) or args.duration <= 0):
        raise OpenUnmixLikeError(f"--duration {args.duration:g}: give a number of seconds above 0, "
                                 "or leave it out to separate to the end")
    if args.no_cuda and args.device != "cpu":
        raise OpenUnmixLikeError(f"--no-cuda and --device {args.device} contradict each other; give one")
    if args.jobs < 1:
        raise OpenUnmixLikeError("--jobs must be at least 1")
    if args.skip_existing and args.force:
        raise OpenUnmixLikeError("--skip-existing and --force contradict each other: keep the stems that exist, "
                                 "or write them again; give one")
    if args.skip_existing and args.engine == "ray":
        raise OpenUnmixLikeError("--skip-existing is what --engine ray does already, with each track's _done.json "
                                 "(which also notices changed settings); leave it out")
    if args.batch_segments is not None and args.batch_segments < 1:
        raise OpenUnmixLikeError("--batch-segments must be at least 1")
    if args.ext == "mp3":
        if args.bits is not None:
            raise OpenUnmixLikeError(f"--bits {args.bits} is for wav and flac; mp3 stems take --mp3-bitrate")
        if not shutil.which("ffmpeg"):
            raise OpenUnmixLikeError("--ext mp3 needs the ffmpeg program to encode; install it "
                                     "(e.g. apt-get install ffmpeg) or write wav or flac")
        args.mp3_bitrate = args.mp3_bitrate or MP3_DEFAULT_BITRATE
        return
    if args.mp3_bitrate is not None:
        raise OpenUnmixLikeError(f"--mp3-bitrate is for --ext mp3, and the stems are {args.ext}; leave it out")
    args.bits = args.bits or 16
    try:
        subtype_for(args.ext, args.bits)
    except AudioError as exc:
        raise OpenUnmixLikeError(f"--ext {args.ext} --bits {args.bits}: {exc}") from None


def input_level_arg(text: str):
    """``--input-level``: ``auto``, ``off`` (``None``) or a level in dBFS."""
    if text == "auto":
        return text
    if text == "off":
        return None
    from ..level import check_input_level

    try:
        return check_input_level(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError("give auto, off or a level in dBFS RMS from -60 to 0 (e.g. -16.5)") from None


def precision_of(args: argparse.Namespace) -> str:
    """``--precision`` resolved for ``--device`` (``auto`` may read ``UMX_AUTO_PRECISION``)."""
    from ..separator import resolve_precision

    try:
        return resolve_precision(args.precision, args.device)
    except ValueError as exc:
        raise OpenUnmixLikeError(f"--precision {args.precision}: {exc}") from None


def parse_aggregate(text: Optional[str], names: Sequence[str]) -> Optional[dict]:
    if text is None:
        return None
    try:
        aggregate = json.loads(text)
    except ValueError as exc:
        raise OpenUnmixLikeError(f"--aggregate: not valid JSON ({exc})") from None
    if not isinstance(aggregate, dict) or not aggregate:
        raise OpenUnmixLikeError('--aggregate: expected an object like {"accompaniment": ["drums", "bass"]}')
    try:  # the same check the separation applies, before any file is processed
        aggregate_estimates({name: np.zeros(0) for name in names}, aggregate)
    except (ValueError, TypeError) as exc:
        raise OpenUnmixLikeError(f"--aggregate: {exc}") from None
    return aggregate


def home_expanded(spec: str) -> str:
    """``spec`` with a leading ``~`` or ``~user`` made the home folder, as models and the cache are: a path no
    shell expanded (quoted, typed in Windows' cmd, a manifest line) means what it means in a shell. A folder
    named ``~`` is given as ``./~``."""
    return os.path.expanduser(spec)  # only a leading ~ or ~user is expanded


def local_manifest(manifest: Optional[str]) -> List[str]:
    """The manifest's entries for ``--engine local``, which reads local files only."""
    if manifest is None:
        return []
    from ..storage import is_url, read_manifest

    if is_url(manifest):
        raise OpenUnmixLikeError(f"--manifest {manifest}: URLs need --engine ray")
    entries = read_manifest(manifest)
    remote = next((e for e in entries if is_url(e)), None)
    if remote is not None:
        raise OpenUnmixLikeError(f"--manifest {manifest}: lists URLs ({remote}); use --engine ray for those")
    return [home_expanded(entry) for entry in entries]


def _report(message: str) -> None:
    print(f"umx-separate: error: {shown(message)}", file=sys.stderr)


def plan_tracks(files: Mapping[Path, str], named: Sequence[Path], names: Sequence[str],
                args: argparse.Namespace) -> Tuple[List[Tuple[Path, Dict[str, Path]]], List[str]]:
    """Each file's output paths, without the files this run writes and refusing clashes.

    A file found in a folder or by a pattern that is one of this run's outputs (the stems
    of an earlier run, with ``--outdir`` inside the folder) is left out; a track whose
    outputs would overwrite a named input, or another track's outputs, is refused.
    Returns the runnable ``(file, outputs)`` and one message per refused track.
    """
    plans = [(path, output_paths(path, names, args, folder)) for path, folder in files.items()]
    resolved = {p: p.resolve() for path, outputs in plans for p in (path, *outputs.values())}
    produced = {resolved[out] for _, outputs in plans for out in outputs.values()}
    explicit = {p.resolve() for p in named}
    plans = [(path, outputs) for path, outputs in plans
             if resolved[path] in explicit or resolved[path] not in produced]
    inputs = {resolved[path]: path for path, _ in plans}
    same = _same_name_key(Path(args.outdir))
    claimed: Dict[str, Tuple[Path, Path]] = {}  # an output's key -> (the output, the input that writes it)
    runnable, errors = [], []
    for path, outputs in plans:
        overwritten = next((o for o in outputs.values() if resolved[o] in inputs), None)
        clash = next((claimed[same(o)] + (o,) for o in outputs.values() if same(o) in claimed), None)
        if overwritten is not None:
            which = inputs[resolved[overwritten]]
            errors.append(f"{path}: its output {overwritten} would overwrite the input "
                          f"{'itself' if which == path else which}; change --outdir or --filename")
        elif clash is not None and clash[0] != clash[2]:
            errors.append(f"{path}: its output {clash[2]} and {clash[0]} of {clash[1]} are one file where --outdir is, "
                          "a file system that does not tell names apart by case; rename one of the two songs, or "
                          "give it a run of its own with another --outdir")
        elif clash is not None:
            errors.append(f"{path}: would write the same files as {clash[1]}; {clash_remedy(args.filename)}")
        else:
            claimed.update({same(o): (o, path) for o in outputs.values()})
            runnable.append((path, outputs))
    return runnable, errors


def _same_name_key(outdir: Path) -> Callable[[Path], str]:
    """A function giving two outputs the same key when they are one file under ``outdir``: their paths as
    written, or, on a file system that ignores case (macOS's and Windows' by default), the paths case-folded."""
    if not ignores_case(outdir):
        return str
    return lambda path: unicodedata.normalize("NFC", str(path)).casefold()


def ignores_case(folder: Path) -> bool:
    """Whether the file system of ``folder`` (or of its nearest parent that exists) takes names that differ in
    case only for one: the first folder upwards whose name has letters is looked up with their case swapped."""
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), Path("."))
    for part in (existing.resolve(), *existing.resolve().parents):
        swapped = part.with_name(part.name.swapcase()) if part.name else part
        if swapped != part:
            try:
                return os.path.samefile(part, swapped)
            except OSError:  # FileNotFoundError: told apart by case
                return False
    return False


def clash_remedy(template: str) -> str:
    """What to do when two inputs would write the same stems under ``template``."""
    if "{folder}" not in template:
        return ("tell them apart with {folder} in --filename, e.g. --filename '{folder}/{track}/{target}.{ext}'")
    return ("they have one name in one folder (e.g. song.mp3 and song.flac); rename one, or give it a run of "
            "its own with another --outdir")


def finished_before(plans: Sequence[Tuple[Path, Dict[str, Path]]]) -> Tuple[List[Tuple[Path, Dict[str, Path]]], int]:
    """The plans still to run, and how many were left out because every one of their stems is a file already.

    Stems are renamed into place only once all are encoded, so a complete set is a finished run's;
    a partial set (say, an earlier run with fewer ``--targets``) is not skipped, and is refused
    without ``--force`` as usual.
    """
    todo = [(path, outputs) for path, outputs in plans if not all(out.is_file() for out in outputs.values())]
    return todo, len(plans) - len(todo)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    refused = foreign_option(sys.argv[1:] if argv is None else argv)
    if refused is not None:
        _report(refused)
        return 2
    args = parser.parse_args(argv)
    if not args.inputs and not args.manifest:
        parser.error("give at least one INPUT or a --manifest")
    args.inputs, args.outdir = [home_expanded(spec) for spec in args.inputs], home_expanded(args.outdir)
    args.manifest = home_expanded(args.manifest) if args.manifest else args.manifest
    try:
        check_options(args)
    except OpenUnmixLikeError as exc:
        _report(str(exc))
        return 1
    if args.engine == "ray":
        from ..catalogue.engine import run as run_catalogue

        return run_catalogue(args)
    try:
        # SIGTERM as Ctrl+C from here on, so that a stop while the model loads is one line too.
        with sigterm_as_interrupt():
            return separate_local(args)
    except KeyboardInterrupt:  # before any track started: the batch reports its own
        _report("interrupted before any track was separated; nothing was written")
        return 130


def separate_local(args: argparse.Namespace) -> int:
    """``main`` for ``--engine local``, after the options are checked: collect, plan and separate the tracks."""
    try:
        args.inputs = [*args.inputs, *local_manifest(args.manifest)]
    except OpenUnmixLikeError as exc:
        _report(str(exc))
        return 1
    files, errors = collect_inputs(args.inputs, exclude=Path(args.outdir))
    for message in errors:
        _report(message)
    if errors and not files:  # nothing to separate: no model is loaded (or downloaded) for it
        return 1
    try:
        separator = load_separator(args)
        aggregate = parse_aggregate(args.aggregate, separator.target_names)
        names = list(aggregate) if aggregate else separator.target_names
        runnable, refused = plan_tracks(files, [Path(s) for s in args.inputs if Path(s).is_file()], names, args)
    except OpenUnmixLikeError as exc:
        _report(str(exc))
        return 1
    for message in refused:
        _report(message)
    failed = len(errors) + len(refused)
    if args.skip_existing:
        runnable, skipped = finished_before(runnable)
        if skipped and not args.quiet:
            print(f"{skipped} of {skipped + len(runnable)} tracks skipped: their stems exist (--skip-existing)")
    if args.jobs > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    return run_tracks(runnable, separator, args, aggregate, failed)


def run_tracks(runnable: Sequence[Tuple[Path, Dict[str, Path]]], separator: Separator, args: argparse.Namespace,
               aggregate: Optional[dict], failed: int) -> int:
    """Separate the planned tracks, ``--jobs`` at a time; the exit status (``failed`` tracks refused before)."""
    from ..stems import Cancelled

    lock = threading.Lock()
    cancel = threading.Event()

    def run(item) -> Union[None, bool, str]:
        path, outputs = item
        if cancel.is_set():
            return None
        try:
            separate_file(path, separator, args, aggregate, outputs, cancel=cancel)
        except Cancelled:
            return None
        except EncoderStopped as exc:
            # ffmpeg stopped by SIGINT or SIGTERM: a Ctrl+C reaches the whole process group, ffmpeg first
            # at times; reported once the batch is over, unless this process was interrupted too.
            return str(exc)
        except OpenUnmixLikeError as exc:
            if cancel.is_set():  # Ctrl+C also reaches ffmpeg, which then fails: not the file's fault
                return None
            with lock:
                _report(str(exc))
            return False
        except Exception as exc:  # keep the batch going; details with --verbose
            with lock:
                _report(f"{path}: unexpected {type(exc).__name__}: {exc} (run with --verbose for details)")
                if args.verbose:
                    traceback.print_exc()
            return False
        if not args.quiet:
            with lock:
                print(shown(f"{path} -> {', '.join(str(o) for o in outputs.values())}"))
        return True

    pool = ThreadPoolExecutor(max_workers=args.jobs)
    futures = [pool.submit(run, item) for item in runnable]
    try:  # SIGTERM is Ctrl+C here too (main)
        results = [f.result() for f in futures]
    except KeyboardInterrupt:
        # Stop at the next chunk; the tracks in hand remove their partial files. A second
        # Ctrl+C would leave them, so it is ignored for the moment that takes.
        cancel.set()
        with interrupts_ignored():
            _report("interrupted: stopping after the segment in hand; nothing unfinished is kept")
            pool.shutdown(wait=True, cancel_futures=True)
        finished = sum(1 for f in futures if not f.cancelled() and f.result() is True)
        _report(f"interrupted: {finished} of {len(runnable)} tracks finished and written; the others wrote nothing "
                "(run the same command with --skip-existing to do only those)")
        return 130
    pool.shutdown()
    for result in results:
        if isinstance(result, str):  # an encoder stopped by a signal that did not stop this process
            _report(result)
    failed += sum(1 for result in results if result is False or isinstance(result, str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
