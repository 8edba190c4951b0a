#!/usr/bin/env python
"""Do our training data sets draw the data the reference Open-Unmix 1.3.0 recipe draws for the same options?

    python scripts/reference_layout_parity.py [--items 240] [--keep DIR]

Writes small generated data sets for the layouts the reference has (aligned,
sourcefolder, trackfolder_fix, trackfolder_var, and a MUSDB18-HQ-style musdb
folder), builds both packages' training and validation sets from the same
command line (the reference through its own ``load_datasets`` in a subprocess
with ``../shared/tools/reference-openunmix`` on PYTHONPATH, ours through
``umx-train``'s option parsing and factory), draws items and prints what they
hold. Without the reference (or its torchaudio stand-in) only our rows are shown.

Every source file is one tone of its own frequency (which identifies the file),
left channel twice the right (which shows channel swaps), with the envelope
``1 + t/2`` over the file's time ``t`` in seconds (the ratio of an excerpt's
last and first quarter gives its start, whatever its gain). Columns:
``n``: items per epoch; ``shape``; ``|x|``, ``|y|``: mean absolute mixture and
target; ``E(x-y)``: mean energy of the mixture minus the target, x 1e3;
``<x,y>``: the target's share of the mixture, ``<x,y>/<y,y>`` (1: the target is
in it); ``noise``: the mixture's energy away from every tone, dB (the musdb
mixture.wav holds noise 25 dB down, as the 7-second preview's AAC mixture is
about 25 dB from the sum of its sources); ``gain``: the target's gain, 5th to
95th percentile; ``swap``: share of targets with their channels swapped;
``start s``: the target excerpt's start in its file, mean [min, max];
``own``: share of interferers from the target's track; ``files``: distinct target
files; ``seed``: whether ``--seed 1`` and ``--seed 2`` give different first
items; ``rep``: share of epoch 3's items that epoch 2 already had (after a
validation pass, as the recipe's loop runs them); ``rate``, ``target``: the data
set's sample rate and the name the run trains the target under.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATE = 44100
SEQ = 1.0
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "tools" / "reference-openunmix"
MUSDB_VALID = ("Actions - One Minute Smile", "Leaf - Summerghost", "Young Griffo - Pennies")
LEVELS = {"vocals": 0.05, "drums": 0.08, "bass": 0.06, "other": 0.04, "piano": 0.05, "accordion": 0.07,
          "marimba": 0.03}


# ---------------------------------------------------------------- generated data


class Writer:
    """Writes tone files, each of its own frequency, and records which file each frequency is."""

    def __init__(self, root: Path, seed: int = 0):
        self.root, self.tones, self.rng = root, {}, np.random.default_rng(seed)

    def tone(self, seconds: float, source: str, track: str, split: str) -> np.ndarray:
        freq = 220.0 + 29.0 * len(self.tones)
        self.tones[freq] = {"source": source, "track": track, "split": split, "level": LEVELS[source]}
        t = np.arange(int(round(seconds * RATE))) / RATE
        left = LEVELS[source] * (1 + 0.5 * t) * np.sin(2 * np.pi * freq * t + self.rng.uniform(0, 2 * np.pi))
        return np.stack([left, 0.5 * left], axis=1)

    def write(self, rel: str, audio: np.ndarray) -> None:
        import soundfile as sf

        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), audio.astype(np.float32), RATE, subtype="FLOAT")

    def save(self) -> None:
        (self.root / "tones.json").write_text(json.dumps({str(f): v for f, v in self.tones.items()}))


def make_data(top: Path) -> None:
    """The five roots under ``top``."""
    w = Writer(top / "aligned", 1)
    for split, n in (("train", 6), ("valid", 3)):
        for k in range(n):
            track = f"t{k}"
            parts = {s: w.tone(4.0, s, track, split) for s in ("vocals", "drums", "bass")}
            w.write(f"{split}/{track}/vocals.wav", parts["vocals"])
            w.write(f"{split}/{track}/mixture.wav", sum(parts.values()))
    w.save()
    w = Writer(top / "trackfolder_fix", 2)
    for split, n in (("train", 6), ("valid", 3)):
        for k in range(n):
            for s in ("vocals", "drums", "bass", "other"):
                w.write(f"{split}/t{k}/{s}.wav", w.tone(4.0, s, f"t{k}", split))
    w.save()
    layouts = [("vocals", "piano"), ("vocals", "accordion", "marimba"), ("vocals", "drums"),
               ("piano", "marimba"), ("vocals", "piano", "drums"), ("vocals", "accordion")]
    for name, seed in (("trackfolder_var", 3), ("trackfolder_var_mixture", 7)):
        w = Writer(top / name, seed)
        for split, n in (("train", 6), ("valid", 3)):
            for k in range(n):
                parts = {s: w.tone(4.0, s, f"t{k}", split) for s in layouts[k]}
                for s, audio in parts.items():
                    w.write(f"{split}/t{k}/{s}.wav", audio)
                if name.endswith("mixture") and split == "train" and k in (1, 4):  # a mixture file beside them
                    w.write(f"{split}/t{k}/mixture.wav", sum(parts.values()))
        w.save()
    w = Writer(top / "sourcefolder", 4)
    for split, n in (("train", 5), ("valid", 3)):
        for s in ("vocals", "drums", "bass"):
            for k in range(n):
                w.write(f"{split}/{s}/{s}{k}.wav", w.tone(2.5 + 0.9 * k, s, f"{s}{k}", split))
    w.save()
    w = Writer(top / "musdb", 5)
    names = list(MUSDB_VALID) + [f"Generated - Song {k}" for k in range(5)]
    noise = np.random.default_rng(6)
    for name in names:
        parts = {s: w.tone(4.0, s, name, "valid" if name in MUSDB_VALID else "train")
                 for s in ("vocals", "drums", "bass", "other")}
        for s, audio in parts.items():
            w.write(f"train/{name}/{s}.wav", audio)
        mix = sum(parts.values())
        hiss = noise.standard_normal(mix.shape) * math.sqrt(np.mean(mix ** 2) * 10 ** (-25 / 10))
        w.write(f"train/{name}/mixture.wav", mix + hiss)  # the released mixture: the sum, coded
    w.save()


# ---------------------------------------------------------------- what an item holds


def item_stats(x: np.ndarray, y: np.ndarray, tones: dict) -> dict:
    """What one ``(mixture, target)`` pair holds (see the module docstring)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    n = x.shape[-1]
    freqs = np.array(sorted(tones))
    bins = np.rint(freqs * n / RATE).astype(int)
    near = np.zeros(n // 2 + 1, bool)
    for f in freqs:  # within 8 Hz of a tone
        near[max(0, int((f - 8) * n / RATE)): int((f + 8) * n / RATE) + 1] = True
    spec_x = np.abs(np.fft.rfft(x.sum(0) * np.hanning(n))) ** 2
    out = {"shape": list(x.shape), "ax": float(np.abs(x).mean()), "ay": float(np.abs(y).mean()),
           "exy": float(np.mean((x - y) ** 2)),
           "noise": float(10 * np.log10(max(spec_x[~near].sum(), 1e-30) / max(spec_x.sum(), 1e-30)))}
    yy = float(np.sum(y * y))
    if yy < 1e-12:
        return out
    out["proj"] = float(np.sum(x * y) / yy)
    spec_y = np.abs(np.fft.rfft(y.sum(0)))
    peak = [spec_y[max(0, b - 2): b + 3].max() for b in bins]
    target = tones[float(freqs[int(np.argmax(peak))])]
    out["file"] = f"{target['track']}/{target['source']}"
    env = np.abs(y).sum(0)
    q = n // 4
    ratio = env[-q:].mean() / max(env[:q].mean(), 1e-12)
    d = n / RATE
    start = -2 + d * (7 - ratio) / (8 * (ratio - 1)) if ratio > 1 + 1e-9 else float("nan")
    out["start"] = float(start)
    out["gain"] = float(env.mean() / (target["level"] * 1.5 * (1 + 0.5 * (start + d / 2)) * 2 / np.pi))
    out["swap"] = bool(np.abs(y[0]).mean() < np.abs(y[1]).mean())
    spec_r = np.abs(np.fft.rfft((x - y).sum(0)))
    found = [tones[float(f)] for f, b in zip(freqs, bins) if spec_r[max(0, b - 2): b + 3].max() > 0.003 * n]
    out["own"] = [t["track"] == target["track"] for t in found]
    return out


def fingerprint(x) -> float:
    return round(float(np.asarray(x, np.float64).sum()) + float(np.abs(np.asarray(x)[..., :500]).sum()), 5)


def summary(items: list, length: int) -> dict:
    def pick(key):
        return [i[key] for i in items if key in i and not (isinstance(i[key], float) and math.isnan(i[key]))]

    shapes = sorted({tuple(i["shape"]) for i in items})
    own = [o for i in items for o in i.get("own", [])]
    gains = pick("gain")
    return {"n": length, "drawn": len(items),
            "shape": shapes[0] if len(shapes) == 1 else f"{len(shapes)} shapes {shapes[0]}..{shapes[-1]}",
            "ax": np.mean(pick("ax")), "ay": np.mean(pick("ay")), "exy": np.mean(pick("exy")),
            "proj": np.mean(pick("proj")) if pick("proj") else float("nan"), "noise": np.mean(pick("noise")),
            "gain": (np.percentile(gains, 5), np.percentile(gains, 95)) if gains else None,
            "swap": np.mean(pick("swap")) if pick("swap") else float("nan"),
            "start": (np.mean(pick("start")), min(pick("start")), max(pick("start"))) if pick("start") else None,
            "own": np.mean(own) if own else float("nan"), "files": len(set(pick("file"))),
            "seconds": sorted({i["shape"][-1] / RATE for i in items})}


# ---------------------------------------------------------------- the runs


def runs(top: Path) -> list:
    """``(name, root, argv)`` of every comparison: the same command line for both packages."""
    seq = ["--seq-dur", str(SEQ)]
    aug = ["--source-augmentations", "gain", "channelswap"]
    fix = ["--dataset", "trackfolder_fix", "--root", str(top / "trackfolder_fix"), "--target-file", "vocals.wav",
           "--interferer-files", "drums.wav", "bass.wav", "other.wav", *seq]
    var = ["--dataset", "trackfolder_var", "--root", str(top / "trackfolder_var"), "--target-file", "vocals.wav",
           *seq]
    return [
        ("aligned", "aligned", ["--dataset", "aligned", "--root", str(top / "aligned"), "--input-file",
                                "mixture.wav", "--output-file", "vocals.wav", *seq]),
        ("sourcefolder", "sourcefolder", ["--dataset", "sourcefolder", "--root", str(top / "sourcefolder"),
                                          "--target-dir", "vocals", "--interferer-dirs", "drums", "bass", *seq]),
        ("trackfolder_fix", "trackfolder_fix", fix),
        ("fix +mix +aug", "trackfolder_fix", [*fix, "--random-track-mix", *aug]),
        ("trackfolder_var", "trackfolder_var", var),
        ("var +aug", "trackfolder_var", [*var, *aug]),
        ("var +mix +aug +silence", "trackfolder_var", [*var, "--random-interferer-mix", "--silence-missing", *aug]),
        ("var +aug, 2 mixture.wav", "trackfolder_var_mixture",
         [*var[:3], str(top / "trackfolder_var_mixture"), *var[4:], *aug]),
        ("musdb (HQ wav)", "musdb", ["--dataset", "musdb", "--root", str(top / "musdb"), "--is-wav", "--target",
                                     "vocals", "--samples-per-track", "16", *seq]),
    ]


def draw(side, argv: list, tones: dict, items: int) -> dict:
    """Train and validation statistics of one command line; ``side`` builds ``(train, valid, target name)``
    from argv and draws an item (``side.item(dataset, index, epoch)``)."""
    train, valid, target = side.build(argv)
    per_epoch = min(len(train), math.ceil(items / 3))
    epochs = max(3, math.ceil(items / per_epoch))
    drawn, valid_items, prints = [], None, {}
    order = np.random.default_rng(0)
    for epoch in range(1, epochs + 1):
        prints[epoch] = []
        for index in order.permutation(len(train))[:per_epoch]:
            x, y = side.item(train, int(index), epoch)
            prints[epoch].append(fingerprint(x))
            if len(drawn) < items:
                drawn.append(item_stats(x, y, tones))
        if epoch <= 2:  # the recipe validates after every epoch: what epoch 3 draws may depend on it
            pairs = [side.item(valid, k, 0) for k in range(len(valid))]
            valid_items = valid_items or [item_stats(x, y, tones) for x, y in pairs]
    again = set(prints[2])
    firsts = []
    for seed in ("1", "2"):
        t = side.build([*argv, "--seed", seed])[0]
        firsts.append(fingerprint(side.item(t, 0, 1)[0]))
    out = {"train": summary(drawn, len(train)), "valid": summary(valid_items, len(valid))}
    out["train"]["rep"] = float(np.mean([p in again for p in prints[3]]))
    out["train"]["seed"] = firsts[0] != firsts[1]
    out["valid"].update(target=target, rate=float(train.sample_rate))
    return out


class Ours:
    """Our data sets, built as ``umx-train`` builds them."""

    def build(self, argv):
        from openunmix_like.cli.train import config_from_args, parse_args
        from openunmix_like.training.config import check_options
        from openunmix_like.training.factory import build_datasets, resolve_sources

        cfg = resolve_sources(check_options(config_from_args(parse_args(argv))))
        return (*build_datasets(cfg), cfg.target)

    def item(self, dataset, index, epoch):
        dataset.set_epoch(epoch)
        x, y = dataset[index]
        return x.numpy(), y.numpy()


class Reference:
    """The reference's data sets, built by its ``load_datasets`` after the recipe's own options and seeding."""

    def build(self, argv):
        import random

        import torch
        from openunmix import data

        parser = argparse.ArgumentParser()
        parser.add_argument("--target", type=str, default="vocals")
        parser.add_argument("--dataset", type=str, default="musdb")
        parser.add_argument("--root", type=str)
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--seq-dur", type=float, default=6.0)
        sys.argv = ["train.py", *argv]
        args, _ = parser.parse_known_args()
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        train, valid, args = data.load_datasets(parser, args)
        return train, valid, args.target

    def item(self, dataset, index, epoch):
        x, y = dataset[index]
        return x.numpy(), y.numpy()


def side_rows(side, top: Path, items: int) -> list:
    rows = []
    for name, layout, argv in runs(top):
        tones = {float(f): v for f, v in json.loads((top / layout / "tones.json").read_text()).items()}
        try:
            # The reference reads musdb through ffmpeg (about 0.1 s a file): half the items there.
            rows.append({"run": name, **draw(side, argv, tones, items // 2 if layout == "musdb" else items)})
        except BaseException as exc:  # noqa: BLE001 - a side that cannot build the run says why in its row
            said = str(exc).strip().splitlines()
            rows.append({"run": name, "error": f"{type(exc).__name__}: {said[0] if said else ''}"[:70]})
    return rows


def reference_rows(top: Path, items: int, reference: Path):
    """The reference's rows, from a subprocess with its torchaudio stand-in on the path; None without it."""
    if not (reference / "torchaudio").is_dir():
        return None, f"{reference} not found"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(reference), os.environ.get("PYTHONPATH"))
                                                        if p), TQDM_DISABLE="1")
    done = subprocess.run([sys.executable, __file__, "--worker", str(top), "--items", str(items)], env=env,
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode:
        return None, (done.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1]), ""


# ---------------------------------------------------------------- the table


def fmt(v, spec=".3f"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def sides_of(ours: list, theirs, part: str):
    """``(run name, side, statistics of part)`` for each run and side, printing a side's error in their place."""
    sides = [("ours", ours)] + ([("ref", theirs)] if theirs else [])
    for k, (name, _, _) in enumerate(runs(Path("."))):
        for label, rows in sides:
            if "error" in rows[k]:
                print(f"{name:24s} {label:4s} {rows[k]['error']}")
            else:
                yield name, label, rows[k][part]


def span(start) -> str:
    """An excerpt start's mean [min, max] in seconds."""
    return f"{start[0]:.2f} [{start[1]:.1f},{start[2]:.1f}]" if start else "-"


def common_columns(t: dict) -> str:
    """The columns both tables have after the item count and length: levels, mixture share, noise."""
    return (f"{fmt(t['ax']):>6s} {fmt(t['ay']):>6s} {fmt(t['exy'] * 1e3, '.2f'):>6s} {fmt(t['proj'], '.2f'):>5s} "
            f"{fmt(t['noise'], '.0f'):>5s}")


def print_tables(ours: list, theirs) -> None:
    print("TRAINING (first items of the epochs drawn; noise in dB)")
    print(f"{'run':24s} {'side':4s} {'n':>5s} {'shape':>10s} {'|x|':>6s} {'|y|':>6s} {'E(x-y)':>6s} "
          f"{'<x,y>':>5s} {'noise':>5s} {'gain':>9s} {'swap':>4s} {'start s':>16s} {'own':>4s} {'files':>5s} "
          f"{'seed':>4s} {'rep':>4s}")
    for name, label, t in sides_of(ours, theirs, "train"):
        gain = f"{t['gain'][0]:.2f}-{t['gain'][1]:.2f}" if t["gain"] else "-"
        shape = "x".join(map(str, t["shape"])) if isinstance(t["shape"], (list, tuple)) else "varies"
        print(f"{name:24s} {label:4s} {t['n']:5d} {shape:>10s} {common_columns(t)} {gain:>9s} "
              f"{fmt(t['swap'], '.2f'):>4s} {span(t['start']):>16s} {fmt(t['own'], '.2f'):>4s} "
              f"{t['files']:5d} {'yes' if t['seed'] else 'no':>4s} {fmt(t['rep'], '.2f'):>4s}")
    print("\nVALIDATION (every item)")
    print(f"{'run':24s} {'side':4s} {'n':>5s} {'seconds':>11s} {'|x|':>6s} {'|y|':>6s} {'E(x-y)':>6s} "
          f"{'<x,y>':>5s} {'noise':>5s} {'start s':>16s} {'files':>5s} {'rate':>6s} target")
    for name, label, v in sides_of(ours, theirs, "valid"):
        secs = f"{min(v['seconds']):.1f}-{max(v['seconds']):.1f}"
        print(f"{name:24s} {label:4s} {v['n']:5d} {secs:>11s} {common_columns(v)} {span(v['start']):>16s} "
              f"{v['files']:5d} {v['rate']:6.0f} {v['target']}")

def plain(value):
    """JSON-safe copies of numpy numbers and tuples."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=240, help="training items drawn per run and side (default 240)")
    p.add_argument("--keep", metavar="DIR", help="write the generated data here and keep it (default: a temp folder)")
    p.add_argument("--reference", type=Path, default=REFERENCE,
                   help="the folder with the torchaudio stand-in (default ../shared/tools/reference-openunmix)")
    p.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:  # inside the subprocess that imports the reference
        print(json.dumps(plain(side_rows(Reference(), Path(args.worker), args.items))))
        return 0
    import logging

    logging.disable(logging.WARNING)  # our data sets' notes on left-out tracks (the reference prints its own)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="layout-parity-") as tmp:
        top = Path(args.keep) if args.keep else Path(tmp)
        make_data(top)
        theirs, why = reference_rows(top, args.items, args.reference)
        ours = plain(side_rows(Ours(), top, args.items))
    print_tables(ours, theirs)
    if theirs is None:
        print(f"\nreference not run ({why}): only our rows are shown")
    print(f"\n{time.perf_counter() - began:.0f} s; {args.items} training items per run and side ({args.items // 2} for "
          f"musdb), --seq-dur {SEQ:g}, {RATE} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
