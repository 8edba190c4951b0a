#!/usr/bin/env python
"""Lay out the default model's training data as one trackfolder_fix root.

    python scripts/prepare_default_corpus.py SYNTH_ROOT MUSDB_ROOT OUT

``OUT/train`` links every generated training song (``--synth-repeat`` times
each) and, ``--musdb-repeat`` times each, the 80 training excerpts of the
MUSDB18 7-second preview; by default real music is about half of what an epoch
sees. ``OUT/valid`` holds the 14 MUSDB18 validation excerpts, so validation
loss and model selection follow real music, and with ``--synth-valid`` also
the generated validation songs, so that they follow both; ``--synth-valid-from
OTHER`` takes those songs from another umx-synth output (e.g. one made with more
``--valid`` songs and the same seed), and ``--no-musdb-valid`` leaves the real
excerpts out of validation. The MUSDB18 excerpts
are the 16-bit wav stems that ``umx-train --dataset musdb`` decodes once into
the package cache; no audio is copied into OUT, and none into the repository.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from openunmix_like.data import MUSDBDataset


def musdb_folders(root: str) -> dict:
    """Per split, the folders of decoded wav stems of each MUSDB18 track (decoding them if needed)."""
    return {split: [files["vocals"].path.parent
                    for files in MUSDBDataset(root, split=split, seq_duration=None, sample_rate=44100,
                                              nb_channels=2).tracks]
            for split in ("train", "valid")}


def songs(synth_root: str, split: str) -> list:
    """The finished songs of one umx-synth split (half-written ones are hidden dot-folders)."""
    return sorted(d for d in (Path(synth_root) / split).iterdir() if d.is_dir() and not d.name.startswith("."))


def copy_name(name: str, k: int) -> str:
    """The name of the k-th link (from 0) to one track: ``name``, ``name-2``, ``name-3``, ..."""
    return name + (f"-{k + 1}" if k else "")


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
    p.add_argument("--synth-repeat", type=int, default=1, help="links per generated training song (default 1)")
    p.add_argument("--synth-valid", action="store_true", help="also validate on the generated valid/ songs")
    p.add_argument("--synth-valid-from", metavar="SYNTH_ROOT", default=None,
                   help="validate on the valid/ songs of this umx-synth output instead (implies --synth-valid)")
    p.add_argument("--no-musdb-valid", action="store_true", help="leave the MUSDB18 excerpts out of valid/")
    args = p.parse_args()
    out = Path(args.out)
    folders = musdb_folders(args.musdb_root)
    for split in ("train", "valid"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for old in (out / split).iterdir():
            if old.is_symlink():
                old.unlink()
    synth = songs(args.synth_root, "train")
    for d in synth:
        for k in range(args.synth_repeat):
            link(d, out / "train" / copy_name(d.name, k))
    if args.synth_valid_from:
        synth_valid = songs(args.synth_valid_from, "valid")
    else:
        synth_valid = songs(args.synth_root, "valid") if args.synth_valid else []
    if args.no_musdb_valid:
        folders["valid"] = []
    for d in synth_valid:
        link(d, out / "valid" / d.name)
    for split, tracks in folders.items():
        for d in tracks:
            for k in range(args.musdb_repeat if split == "train" else 1):
                link(d, out / split / copy_name(f"musdb-{d.name}", k))
    print(f"{out}: train = {len(synth)} generated songs x {args.synth_repeat} + "
          f"{len(folders['train'])} MUSDB18 excerpts x {args.musdb_repeat}, "
          f"valid = {len(folders['valid'])} MUSDB18 excerpts + {len(synth_valid)} generated songs")


if __name__ == "__main__":
    main()
