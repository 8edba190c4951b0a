"""Time building the MUSDB18 training and validation sets: once into an empty decoded cache, then again.

    python scripts/time_musdb_listing.py path/to/musdb18-7s
"""
import argparse
import tempfile
import time
from pathlib import Path

from openunmix_like import data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the MUSDB18 folder (holding train/)")
    parser.add_argument("--is-wav", action="store_true", help="MUSDB18-HQ layout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="musdb-cache-") as cache:
        settings = dict(sample_rate=44100, nb_channels=2, is_wav=args.is_wav, cache_dir=Path(cache))
        for run in ("empty cache", "decoded"):
            start = time.perf_counter()
            train = data.MUSDBDataset(args.root, "vocals", "train", seq_duration=6.0, **settings)
            valid = data.MUSDBDataset(args.root, "vocals", "valid", seq_duration=None, **settings)
            print(f"{run}: {time.perf_counter() - start:.1f} s for {len(train.tracks)} training and "
                  f"{len(valid.tracks)} validation tracks", flush=True)


if __name__ == "__main__":
    main()
