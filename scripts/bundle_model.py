#!/usr/bin/env python
"""Copy trained target models into the package as the bundled default model.

    python scripts/bundle_model.py TRAIN_OUTPUT [DEST]

Takes ``<target>.safetensors`` and ``<target>.json`` (the best-validation
weights ``umx-train`` keeps) for vocals, drums, bass and other, writes
``separator.json``, and checks that the folder loads into a Separator and stays
within the 40 MB the package allows for bundled weights.
"""
import json
import shutil
import sys
from pathlib import Path

TARGETS = ("vocals", "drums", "bass", "other")
LIMIT = 40 * 2 ** 20


def main() -> None:
    src = Path(sys.argv[1])
    dest = Path(sys.argv[2] if len(sys.argv) > 2 else "openunmix_like/models/default")
    dest.mkdir(parents=True, exist_ok=True)
    for target in TARGETS:
        for ext in (".safetensors", ".json"):
            shutil.copyfile(src / f"{target}{ext}", dest / f"{target}{ext}")
    meta = json.loads((dest / "vocals.json").read_text())
    separator = {"format": "openunmix-like/1", "sample_rate": meta["sample_rate"], "nfft": meta["args"]["nfft"],
                 "nhop": meta["args"]["nhop"], "nb_channels": meta["args"]["nb_channels"], "targets": list(TARGETS)}
    (dest / "separator.json").write_text(json.dumps(separator, indent=2) + "\n")
    size = sum(p.stat().st_size for p in dest.glob("*.safetensors"))
    if size > LIMIT:
        sys.exit(f"{dest}: {size / 2 ** 20:.1f} MB of weights, over the 40 MB limit")
    from openunmix_like import Separator

    Separator.from_pretrained(str(dest))
    print(f"bundled {', '.join(TARGETS)} into {dest} ({size / 2 ** 20:.1f} MB)")


if __name__ == "__main__":
    main()
