#!/usr/bin/env python
"""Copy trained target models into the package as the bundled default model.

    python scripts/bundle_model.py [--last [--average]] TRAIN_OUTPUT [DEST]

Takes ``<target>.safetensors`` and ``<target>.json`` (the best-validation
weights ``umx-train`` keeps) for vocals, drums, bass and other, writes
``separator.json``, and checks that the folder loads into a Separator and stays
within the 40 MB the package allows for bundled weights. DEST is replaced as a
whole, and only once the new folder has passed these checks. With ``--last`` the
weights come from ``<target>.chkpnt`` instead: those of the last epoch trained,
to start a further stage from; with ``--last --average``, the weight average of
a run trained with ``--ema`` at its last epoch.
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
    p.add_argument("--average", action="store_true", help="with --last: the checkpoint's weight average (--ema)")
    args = p.parse_args()
    if args.average and not args.last:
        p.error("--average takes the last epoch's weight average: give --last too")
    src, dest = Path(args.train_output), Path(args.dest)
    settings = AudioSettings.from_json(read_target_json(src / "separator.json"))
    # Assembled and checked beside DEST, then swapped in: a failure leaves DEST as it was.
    work = dest.parent / f".{dest.name}.bundling"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        for target in TARGETS:  # separator.json lists the targets in this order
            shutil.copyfile(src / f"{target}.json", work / f"{target}.json")
            if args.last:
                checkpoint = read_checkpoint(src / f"{target}.chkpnt")
                if args.average and "average" not in checkpoint:
                    raise SystemExit(f"{src / f'{target}.chkpnt'}: no weight average (trained without --ema); "
                                     "drop --average")
                state = checkpoint["average" if args.average else "state_dict"]
                write_bytes_atomic(work / f"{target}.safetensors",
                                   save({k: v.contiguous() for k, v in state.items()}, metadata={"format": FORMAT}))
            else:
                shutil.copyfile(src / f"{target}.safetensors", work / f"{target}.safetensors")
            update_separator_json(work, target, settings)
        size = sum(p.stat().st_size for p in work.glob("*.safetensors"))
        if size > LIMIT:
            raise SystemExit(f"{src}: {size / 2 ** 20:.1f} MB of weights, over the 40 MB limit; {dest} left as it was")
        Separator.from_pretrained(str(work))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    old = dest.parent / f".{dest.name}.replaced"
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    work.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    print(f"bundled {', '.join(TARGETS)} into {dest} ({size / 2 ** 20:.1f} MB)")


if __name__ == "__main__":
    main()
