"""``umx-evaluate``'s results: scoring a track into its record, reading the records, aggregating them,
comparing two methods.

Nothing here imports torch: ``umx-evaluate``'s scoring processes and ``umx-compare`` start without it
(seconds, and about 180 MB in each process).
"""
from __future__ import annotations

import collections
import csv
import io
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import OpenUnmixLikeError
from .fileio import write_bytes_atomic
from .metrics import track_metrics

log = logging.getLogger(__name__)

METRICS = ("SDR", "SIR", "SAR", "ISR")
MUSDB_TARGETS = ("vocals", "drums", "bass", "other")
MAX_RESAMPLES = 1_000_000
BOOTSTRAP_BLOCK = 4_000_000  # track indices drawn at once (32 MB)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def score_track(name: str, references: Mapping[str, np.ndarray], estimates: Mapping[str, np.ndarray],
                rate: int) -> dict:
    """BSSEval v4 of one track, as museval's JSON record plus fast metrics.

    The scores are museval's (:mod:`openunmix_like.bsseval` computes them in memory flat in the
    track's length, equal to museval's to rounding).

    Args:
        references, estimates: target -> ``(nb_timesteps, nb_channels)`` arrays,
            evaluated jointly (SIR depends on the other targets).

    museval refuses an all-zero estimate (the projections would be
    underdetermined). A model can output one, e.g. a mask shut everywhere, so
    such an estimate is scored as a deterministic noise floor 200 dB below full
    scale instead. It then scores about 0 dB SDR, as silence does under the MDX
    definition (the error is the whole reference), and the record lists it
    under ``silent_estimates``.

    museval also refuses an all-zero reference: a track without that source,
    e.g. a song without vocals. Its target has no score: NaN in every window
    and in the fast metrics, which the aggregation skips, and the record lists
    it under ``silent_references``. The other targets are evaluated together
    without it; a silent source adds nothing to the references the estimates
    are projected on, so their scores are BSSEval's for the sources present.
    """
    from .bsseval import bss_eval_v4, silent  # SciPy: only scoring needs it

    try:
        import museval
    except ImportError:
        raise OpenUnmixLikeError("scoring needs museval (its windows and record format): "
                                 "pip install 'openunmix-like[evaluate]'") from None

    targets = list(estimates)
    # Silent as museval takes it: channels that sum to 0 everywhere (it refuses such a source).
    absent = [t for t in targets if silent(np.asarray(references[t]))]
    if absent:
        log.info("%s: no %s in the track (silent reference); its scores are NaN", name, ", ".join(absent))
    kept = [t for t in targets if t not in absent]
    # The arrays as given (BSSEval works in float64 a block at a time): copies would grow with the track.
    refs, ests = [np.asarray(references[t]) for t in kept], [np.asarray(estimates[t]) for t in kept]
    silent_estimates = []
    for j, target in enumerate(kept):
        if silent(ests[j]):
            log.warning("%s: the %s estimate is silent; scored as a -200 dBFS noise floor", name, target)
            ests[j] = 1e-10 * np.random.default_rng(0).standard_normal(ests[j].shape)
            silent_estimates.append(target)
    frames = museval.metrics.Framing(rate, rate, np.shape(references[targets[0]])[0]).nwin
    scores = {metric: np.full((len(targets), frames), np.nan) for metric in METRICS}
    if kept:
        rows = [targets.index(t) for t in kept]
        sdr, isr, sir, sar = bss_eval_v4(refs, ests, window=rate, hop=rate)
        for metric, values in zip(("SDR", "ISR", "SIR", "SAR"), (sdr, isr, sir, sar)):
            scores[metric][rows] = values
    store = museval.TrackStore(track_name=name, win=1.0, hop=1.0)
    for j, target in enumerate(targets):
        store.add_target(target, {metric: scores[metric][j].tolist() for metric in METRICS})
    record = json.loads(store.json)
    if silent_estimates:
        record["silent_estimates"] = silent_estimates
    if absent:
        record["silent_references"] = absent
    record["fast_metrics"] = {t: {"SDR_mdx": math.nan, "SI-SDR": math.nan} for t in targets}
    for j, target in enumerate(kept):
        sdr_full, si = track_metrics(refs[j], ests[j])
        record["fast_metrics"][target] = {"SDR_mdx": sdr_full, "SI-SDR": si}
    return record


def read_record(path: Path) -> dict:
    """One track's record as :func:`score_track` made it (``<evaldir>/<method>/<track>.json``).

    Raises:
        OpenUnmixLikeError: unreadable, not JSON, or JSON of another kind, naming the file.
    """
    try:
        record = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise OpenUnmixLikeError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise OpenUnmixLikeError(f"{path}: not valid JSON ({_one_line(exc)}); score that track again "
                                 "with umx-evaluate") from None
    problem = record_problem(record)
    if problem:
        raise OpenUnmixLikeError(f"{path}: not a umx-evaluate track result ({problem}); give a folder of "
                                 "the per-track results umx-evaluate writes (<evaldir>/<method>)")
    return record


def record_problem(record) -> Optional[str]:
    """What keeps ``record`` from being a track's scores (None if nothing): the parts :func:`track_medians` reads."""
    if not isinstance(record, dict) or not isinstance(record.get("targets"), list):
        return "no 'targets' list"
    for target in record["targets"]:
        if not isinstance(target, dict) or not isinstance(target.get("name"), str):
            return "a target without a 'name'"
        if not isinstance(target.get("frames"), list):
            return f"target {target['name']!r} has no 'frames' list"
        for frame in target["frames"]:
            metrics = frame.get("metrics") if isinstance(frame, dict) else None
            if not isinstance(metrics, dict) or not all(m in metrics and _is_score(metrics[m]) for m in METRICS):
                return f"a frame of {target['name']!r} without the numbers {', '.join(METRICS)}"
    return None


def _is_score(value) -> bool:
    """A window's score in a record: a number, or None/NaN where museval gave none."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def track_medians(record: dict) -> Dict[str, Dict[str, float]]:
    """target -> metric -> median over the track's windows (NaN windows skipped)."""
    out = {}
    for target in record["targets"]:
        out[target["name"]] = {}
        for metric in METRICS:
            values = [f["metrics"][metric] for f in target["frames"]]
            values = [v for v in values if v is not None and not math.isnan(v)]
            out[target["name"]][metric] = statistics.median(values) if values else math.nan
    return out


def aggregate(records: Mapping[str, dict]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """target -> metric -> {"median": over tracks, "mean": over tracks, "tracks": n}."""
    per_track = {name: track_medians(r) for name, r in records.items()}
    targets = sorted({t for m in per_track.values() for t in m}, key=_target_order)
    table = {}
    for target in targets:
        table[target] = {}
        for metric in METRICS:
            values = [m[target][metric] for m in per_track.values()
                      if target in m and not math.isnan(m[target][metric])]
            table[target][metric] = {
                "median": statistics.median(values) if values else math.nan,
                "mean": statistics.fmean(values) if values else math.nan,
                "tracks": len(values),
            }
    return table


def paired_difference(new: Mapping[str, dict], old: Mapping[str, dict], metric: str = "SDR",
                      resamples: int = 10000, seed: int = 0) -> dict:
    """Compare two methods' records track by track (the tracks both scored).

    Per track and target the median over the track's windows is taken, as in :func:`aggregate`;
    a track's difference is the mean over the targets both methods scored. Returns the mean
    difference per target, the mean of the track differences with a 95 % bootstrap interval
    (``resamples`` draws of the tracks with replacement), how many tracks got better, and the
    tracks only one side has. A paired comparison sees a change much smaller than the spread of
    the scores over tracks."""
    if metric not in METRICS:
        raise OpenUnmixLikeError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
    check_bootstrap(resamples, seed)
    common = sorted(set(new) & set(old))
    if not common:
        raise OpenUnmixLikeError("the two result folders have no track in common; compare results of the same tracks")
    per_track_new = {t: track_medians(new[t]) for t in common}
    per_track_old = {t: track_medians(old[t]) for t in common}
    targets = sorted({n for t in common for n in per_track_new[t] if n in per_track_old[t]}, key=_target_order)
    if not targets:
        raise OpenUnmixLikeError("the two result folders have no target in common")
    diffs = np.full((len(common), len(targets)), np.nan)
    for i, t in enumerate(common):
        for j, name in enumerate(targets):
            if name in per_track_new[t] and name in per_track_old[t]:
                diffs[i, j] = per_track_new[t][name][metric] - per_track_old[t][name][metric]
    track_diff = np.array([_mean_or_nan(row) for row in diffs])
    kept = track_diff[~np.isnan(track_diff)]
    if kept.size == 0:
        alone = ", or a target separated alone, which has none" if metric == "SIR" else ""
        raise OpenUnmixLikeError(f"no track has a {metric} score on both sides (all windows silent{alone}); compare "
                                 "another --metric")
    low, high = np.percentile(_bootstrap_means(kept, resamples, seed), [2.5, 97.5])
    return {
        "metric": metric,
        "targets": {name: _mean_or_nan(diffs[:, j]) for j, name in enumerate(targets)},
        "mean": float(kept.mean()),
        "interval": (float(low), float(high)),
        "better": int((kept > 0).sum()),
        "worse": int((kept < 0).sum()),
        "tracks": int(kept.size),
        "only_new": sorted(set(new) - set(old)),
        "only_old": sorted(set(old) - set(new)),
        "separated": _separated_if_different(per_track_new, per_track_old, common),
        "lengths": _lengths_if_different(new, old, common),
        "settings": _settings_differing([new[t] for t in common], [old[t] for t in common]),
        "models": tuple(_models_if_several([side[t] for t in common]) for side in (new, old)),
    }


def _models_if_several(records: Sequence[dict]) -> Dict[str, int]:
    """model_sha256 -> how many of ``records`` name it, where they name more than one model (else empty).

    A folder that umx-evaluate rescored with ``--tracks`` after the model changed keeps the other tracks'
    records of the model before, and its side of a comparison is then two models."""
    counts = collections.Counter(r.get("model_sha256") for r in records if isinstance(r.get("model_sha256"), str))
    return dict(counts.most_common()) if len(counts) > 1 else {}


def _separated_if_different(per_track_new: Mapping[str, dict], per_track_old: Mapping[str, dict],
                            tracks: Sequence[str]) -> Optional[Tuple[List[str], List[str]]]:
    """The targets each side scored on ``tracks``, where the two differ (else None)."""
    sides = [sorted({name for t in tracks for name in side[t]}, key=_target_order)
             for side in (per_track_new, per_track_old)]
    return (sides[0], sides[1]) if sides[0] != sides[1] else None


def _windows(record: dict) -> int:
    """How many BSSEval windows a record's targets have (the scored audio's length in seconds, rounded up)."""
    return max((len(t.get("frames") or ()) for t in record["targets"]), default=0)


def _lengths_if_different(new: Mapping[str, dict], old: Mapping[str, dict],
                          tracks: Sequence[str]) -> Dict[str, Tuple[int, int]]:
    """Tracks whose two records span different numbers of windows: track -> (new, old) windows.

    The same name can be two different cuts of a song, e.g. a MUSDB18 track's 7-second preview
    and the full track; their scores are not comparable."""
    lengths = {t: (_windows(new[t]), _windows(old[t])) for t in tracks}
    return {t: n for t, n in lengths.items() if n[0] != n[1]}


# Settings left out of the comparison of the records' settings: which targets were separated is
# compared on the targets scored (``--targets vocals`` and a vocals-only model separate the same).
UNCOMPARED_SETTINGS = ("targets",)


def _settings_differing(new: Sequence[dict], old: Sequence[dict]) -> Dict[str, Tuple[str, str]]:
    """The settings (in the records' ``settings``) both sides recorded with different values:
    name -> (new, old), each as JSON, or ``mixed`` where a side's records disagree."""
    def values(records: Sequence[dict]) -> Dict[str, str]:
        seen: Dict[str, set] = {}
        for record in records:
            settings = record.get("settings")
            for key, value in (settings.items() if isinstance(settings, dict) else ()):
                seen.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
        return {key: next(iter(v)) if len(v) == 1 else "mixed" for key, v in seen.items()}

    a, b = values(new), values(old)
    # Two sides both "mixed" are equal strings, yet each side's differences then mix settings.
    return {key: (a[key], b[key]) for key in a
            if key in b and (a[key] != b[key] or a[key] == "mixed") and key not in UNCOMPARED_SETTINGS}


def check_bootstrap(resamples: int, seed: int) -> None:
    """Refuse bootstrap settings numpy cannot use (a seed below 0) or that would not fit in memory in one go."""
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise OpenUnmixLikeError(f"--resamples {resamples}: give 1 to {MAX_RESAMPLES:,} (default 10,000; more draws "
                                 "do not make the interval more exact than the tracks allow)")
    if seed < 0:
        raise OpenUnmixLikeError(f"--seed {seed}: give a seed of 0 or more")


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` draws of ``values`` with replacement, drawn in blocks of bounded memory."""
    rng = np.random.default_rng(seed)
    rows = max(1, min(resamples, BOOTSTRAP_BLOCK // values.size))  # one block for the default draws
    means = [values[rng.integers(0, values.size, size=(min(rows, resamples - start), values.size))].mean(axis=1)
             for start in range(0, resamples, rows)]
    return np.concatenate(means)


def _mean_or_nan(values: np.ndarray) -> float:
    """Mean of the values that are not NaN; NaN when there are none (without numpy's warning)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def paired_markdown(result: Mapping, new_name: str, old_name: str) -> str:
    """The comparison of :func:`paired_difference` as a short report."""
    m = result["metric"]
    lines = [f"{m} of {new_name} minus {old_name}, track by track ({result['tracks']} tracks; per track the median "
             f"over windows, averaged over the targets):", "",
             "| " + " | ".join(list(result["targets"]) + ["track average"]) + " |",
             "|" + "---|" * (len(result["targets"]) + 1),
             "| " + " | ".join(f"{v:+.3f}" for v in result["targets"].values()) + f" | {result['mean']:+.3f} |", ""]
    low, high = result["interval"]
    if result["tracks"] < 2:  # every draw is that track: an interval of width 0 that shows nothing
        verdict = "no difference shown: one track tells nothing of the others; compare the results of more tracks"
    elif low > 0 or high < 0:
        verdict = "better" if low > 0 else "worse"
        verdict = f"{new_name} is {verdict}: the interval excludes 0"
    else:
        verdict = "no difference shown: the interval includes 0"
    lines.append(f"95 % bootstrap interval of the track average: {low:+.3f} to {high:+.3f} dB; better on "
                 f"{result['better']}, worse on {result['worse']} of {result['tracks']} tracks; {verdict}.")
    for side, name in (("only_new", new_name), ("only_old", old_name)):
        if result[side]:
            lines.append(f"Not compared, scored only by {name}: {', '.join(result[side])}.")
    if result.get("separated"):
        ours, theirs = (", ".join(names) for names in result["separated"])
        lines.append(f"Separated different targets ({new_name}: {ours}; {old_name}: {theirs}): only those both "
                     "scored are compared, and their estimates differ even from the same model (the Wiener filter "
                     "shares the mixture among the targets separated); evaluate both with the same --targets.")
    if result.get("lengths"):
        shown = ", ".join(f"{track} ({a} / {b} s)" for track, (a, b) in list(result["lengths"].items())[:3])
        more = len(result["lengths"]) - 3
        shown += f" and {more} more" if more > 0 else ""
        lines.append(f"Scored on audio of different lengths ({new_name} / {old_name}, in 1 s windows): {shown}; "
                     "these are different cuts of the tracks (a 7-second preview and a full track share names), "
                     "whose scores are not comparable: evaluate both on the same data set.")
    for models, name in zip(result.get("models") or (), (new_name, old_name)):
        if models:
            shown = ", ".join(f"{sha[:12]} on {n} track{'s' if n > 1 else ''}" for sha, n in models.items())
            lines.append(f"Scored by {len(models)} different models in {name} (model_sha256 {shown}): the "
                         "difference is not one model's; run umx-evaluate on all its tracks with the model you "
                         "mean, which scores the others again.")
    if result.get("settings"):
        shown = ", ".join(f"{key} {a} / {b}" for key, (a, b) in result["settings"].items())
        lines.append(f"Evaluated with different settings ({new_name} / {old_name}): {shown}; the difference is not "
                     "the models' alone.")
    return "\n".join(lines) + "\n"


def _target_order(name: str):
    return (MUSDB_TARGETS.index(name) if name in MUSDB_TARGETS else len(MUSDB_TARGETS), name)


# ---------------------------------------------------------------- reports


def markdown_table(tables: Mapping[str, Mapping], metric: str = "SDR", stat: str = "median") -> str:
    """Rows: methods; columns: targets; cells: the aggregated metric."""
    targets = sorted({t for table in tables.values() for t in table}, key=_target_order)
    lines = [f"| method | {' | '.join(targets)} |", "|---|" + "---|" * len(targets)]
    for method, table in tables.items():
        cells = [f"{table[t][metric][stat]:.2f}" if t in table else "" for t in targets]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return "\n".join(lines)


def full_markdown(method: str, table: Mapping) -> str:
    lines = [f"| target | {' | '.join(f'{m} median' for m in METRICS)} | {' | '.join(f'{m} mean' for m in METRICS)} "
             "| tracks |", "|---|" + "---|" * (2 * len(METRICS) + 1)]
    for target, metrics in table.items():
        med = " | ".join(f"{metrics[m]['median']:.2f}" for m in METRICS)
        mean = " | ".join(f"{metrics[m]['mean']:.2f}" for m in METRICS)
        lines.append(f"| {target} | {med} | {mean} | {metrics['SDR']['tracks']} |")
    return f"**{method}** (BSSEval v4, median over 1 s frames, then over tracks)\n\n" + "\n".join(lines)


def closed_fraction(model: Mapping, mix: Mapping, irm2: Mapping) -> Dict[str, float]:
    """Per target, the share of the SDR distance from the mixture to IRM2 the model covers."""
    out = {}
    for target in model:
        if target in mix and target in irm2:
            lo, hi = mix[target]["SDR"]["median"], irm2[target]["SDR"]["median"]
            out[target] = (model[target]["SDR"]["median"] - lo) / (hi - lo) if hi != lo else math.nan
    return out


def write_csv(path: Path, tables: Mapping[str, Mapping]) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["method", "target", "metric", "median", "mean", "tracks"])
    for method, table in tables.items():
        for target, metrics in table.items():
            for metric in METRICS:
                m = metrics[metric]
                writer.writerow([method, target, metric, f"{m['median']:.4f}", f"{m['mean']:.4f}", m["tracks"]])
    write_bytes_atomic(path, text.getvalue().encode())


def boxplot(path: Path, records_by_method: Mapping[str, Mapping[str, dict]]) -> bool:
    """PNG box plot of per-track SDR per target (one box per method and target)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    data, labels = [], []
    for method, records in records_by_method.items():
        medians = [track_medians(r) for r in records.values()]
        targets = sorted({t for m in medians for t in m}, key=_target_order)
        for target in targets:
            values = [m[target]["SDR"] for m in medians if target in m and not math.isnan(m[target]["SDR"])]
            data.append(values)
            labels.append(f"{method}\n{target}" if len(records_by_method) > 1 else target)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(data)), 4))
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_ylabel("SDR (dB), median over 1 s frames")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def load_records(folder: Path, on_error: Optional[Callable[[Path, OpenUnmixLikeError], None]] = None
                 ) -> Dict[str, dict]:
    """Track name -> record of the per-track results in ``folder`` (none when it does not exist).

    A file that is not such a record raises :class:`OpenUnmixLikeError` naming it, or with
    ``on_error`` is passed to ``on_error(path, error)`` and left out.
    """
    records = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records[path.stem] = read_record(path)
        except OpenUnmixLikeError as exc:
            if on_error is None:
                raise
            on_error(path, exc)
    return records
