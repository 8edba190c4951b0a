#!/usr/bin/env python
"""Copy trained target models into the package as the bundled default model.

    python scripts/bundle_model.py TRAIN_OUTPUT [DEST]

Takes ``<target>.safetensors`` and ``<target>.json`` (the best-validation
weights ``umx-train`` keeps) for vocals, drums, bass and other, writes
``separator.json``, and checks that the folder loads into a Separator and stays
within the 40 MB the package allows for bundled weights.
"""
import shutil
import sys
from pathlib import Path

from openunmix_like import Separator
from openunmix_like.modeldir import AudioSettings, read_target_json, update_separator_json

TARGETS = ("vocals", "drums", "bass", "other")
LIMIT = 40 * 2 ** 20


def main() -> None:
    src = Path(sys.argv[1])
    dest = Path(sys.argv[2] if len(sys.argv) > 2 else "openunmix_like/models/default")
    settings = AudioSettings.from_json(read_target_json(src / "separator.json"))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "separator.json").unlink(missing_ok=True)
    for target in TARGETS:  # separator.json lists the targets in this order
        for ext in (".safetensors", ".json"):
            shutil.copyfile(src / f"{target}{ext}", dest / f"{target}{ext}")
        update_separator_json(dest, target, settings)
    size = sum(p.stat().st_size for p in dest.glob("*.safetensors"))
    if size > LIMIT:
        sys.exit(f"{dest}: {size / 2 ** 20:.1f} MB of weights, over the 40 MB limit")
    Separator.from_pretrained(str(dest))
    print(f"bundled {', '.join(TARGETS)} into {dest} ({size / 2 ** 20:.1f} MB)")


if __name__ == "__main__":
    main()
