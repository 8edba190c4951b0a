#!/usr/bin/env python
"""Lay out the default model's training data as one trackfolder_fix root.

    python scripts/prepare_default_corpus.py SYNTH_ROOT MUSDB_ROOT OUT

``OUT/train`` links every generated training song and, ``--musdb-repeat``
times each, the 80 training excerpts of the MUSDB18 7-second preview (decoded
once to 16-bit wav under ``OUT/musdb-wav``), so that real music is about half
of what an epoch sees; ``OUT/valid`` holds only the 14 MUSDB18 validation
excerpts, so validation loss and model selection follow real music. The
MUSDB18 audio stays outside the repository.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import soundfile as sf

STEMS = ("vocals", "drums", "bass", "other")


def export_musdb(root: str, out: Path) -> dict:
    import musdb

    folders = {}
    for split in ("train", "valid"):
        db = musdb.DB(root=root, subsets="train", split=split)
        for track in db:
            dest = out / split / track.name
            folders.setdefault(split, []).append(dest)
            if (dest / "other.wav").is_file():
                continue
            tmp = dest.with_name(dest.name + ".partial")
            tmp.mkdir(parents=True, exist_ok=True)
            for stem in STEMS:
                sf.write(tmp / f"{stem}.wav", track.sources[stem].audio, track.rate, subtype="PCM_16")
            sf.write(tmp / "mixture.wav", sum(track.sources[s].audio for s in STEMS).clip(-1, 1), track.rate,
                     subtype="PCM_16")
            os.replace(tmp, dest)
    return folders


def link(target: Path, link_path: Path) -> None:
    if link_path.is_symlink() or link_path.exists():
        link_path.unlink()
    link_path.symlink_to(target.resolve(), target_is_directory=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("synth_root", help="umx-synth output (its train/ split is used)")
    p.add_argument("musdb_root", help="MUSDB18 7-second preview (../shared/data/musdb18-7s)")
    p.add_argument("out", help="folder to create")
    p.add_argument("--musdb-repeat", type=int, default=2, help="links per MUSDB18 training excerpt (default 2)")
    args = p.parse_args()
    out = Path(args.out)
    musdb_folders = export_musdb(args.musdb_root, out / "musdb-wav")
    for split in ("train", "valid"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for old in (out / split).iterdir():
            if old.is_symlink():
                old.unlink()
    synth = sorted(d for d in (Path(args.synth_root) / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in synth:
        link(d, out / "train" / d.name)
    for split, folders in musdb_folders.items():
        for d in folders:
            for k in range(args.musdb_repeat if split == "train" else 1):
                link(d, out / split / (f"musdb-{d.name}" + (f"-{k + 1}" if k else "")))
    print(f"{out}: train = {len(synth)} generated songs + {len(musdb_folders['train'])} MUSDB18 excerpts "
          f"x {args.musdb_repeat}, "
          f"valid = {len(musdb_folders['valid'])} MUSDB18 excerpts")


if __name__ == "__main__":
    main()
