#!/usr/bin/env python
"""Copy trained target models into the package as the bundled default model.

    python scripts/bundle_model.py [--last] TRAIN_OUTPUT [DEST]

Takes ``<target>.safetensors`` and ``<target>.json`` (the best-validation
weights ``umx-train`` keeps) for vocals, drums, bass and other, writes
``separator.json``, and checks that the folder loads into a Separator and stays
within the 40 MB the package allows for bundled weights. With ``--last`` the
weights come from ``<target>.chkpnt`` instead: those of the last epoch trained,
to start a further stage from.
"""
import argparse
import shutil
from pathlib import Path

from safetensors.torch import save

from openunmix_like import Separator
from openunmix_like.fileio import write_bytes_atomic
from openunmix_like.modeldir import FORMAT, AudioSettings, read_target_json, update_separator_json
from openunmix_like.train import read_checkpoint

TARGETS = ("vocals", "drums", "bass", "other")
LIMIT = 40 * 2 ** 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train_output", help="umx-train --output folder")
    p.add_argument("dest", nargs="?", default="openunmix_like/models/default")
    p.add_argument("--last", action="store_true", help="weights of the last epoch (.chkpnt), not the best")
    args = p.parse_args()
    src, dest = Path(args.train_output), Path(args.dest)
    settings = AudioSettings.from_json(read_target_json(src / "separator.json"))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "separator.json").unlink(missing_ok=True)
    for target in TARGETS:  # separator.json lists the targets in this order
        shutil.copyfile(src / f"{target}.json", dest / f"{target}.json")
        if args.last:
            state = read_checkpoint(src / f"{target}.chkpnt")["state_dict"]
            write_bytes_atomic(dest / f"{target}.safetensors",
                               save({k: v.contiguous() for k, v in state.items()}, metadata={"format": FORMAT}))
        else:
            shutil.copyfile(src / f"{target}.safetensors", dest / f"{target}.safetensors")
        update_separator_json(dest, target, settings)
    size = sum(p.stat().st_size for p in dest.glob("*.safetensors"))
    if size > LIMIT:
        raise SystemExit(f"{dest}: {size / 2 ** 20:.1f} MB of weights, over the 40 MB limit")
    Separator.from_pretrained(str(dest))
    print(f"bundled {', '.join(TARGETS)} into {dest} ({size / 2 ** 20:.1f} MB)")


if __name__ == "__main__":
    main()
