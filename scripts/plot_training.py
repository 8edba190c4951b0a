#!/usr/bin/env python
"""Plot training and validation loss per epoch from umx-train output folders.

    python scripts/plot_training.py OUT.png STAGE_DIR [STAGE_DIR ...]

Each folder's ``<target>.json`` histories are drawn one after the other (stage
1, then stage 2, ...), one panel per target, with the best epoch marked.
"""
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = ("vocals", "drums", "bass", "other")


def main() -> None:
    out, stages = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    # tab20 pairs a dark and a light shade of one hue: ten stages before colours repeat.
    colours = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(4 * len(TARGETS), 3.4), sharey=False)
    for ax, target in zip(axes, TARGETS):
        offset = 0
        for k, stage in enumerate(stages):
            path = stage / f"{target}.json"
            if not path.is_file():
                continue
            meta = json.loads(path.read_text())
            # An epoch without a step has a null train loss: a gap in the curve.
            train = [math.nan if v is None else v for v in meta["train_loss_history"]]
            valid = [math.nan if v is None else v for v in meta["valid_loss_history"]]
            epochs = range(offset + 1, offset + len(train) + 1)
            ax.plot(epochs, train, color=colours[(2 * k + 1) % 20], lw=1, label=f"{stage.name} train")
            ax.plot(epochs, valid, color=colours[2 * k % 20], lw=1.5, label=f"{stage.name} valid")
            best = meta.get("best_epoch") or 0  # the epoch kept, which --select-by sdr picks by another measure
            if best:
                ax.plot(offset + best, valid[best - 1], "k*", ms=8)
            if k:
                ax.axvline(offset + 0.5, color="grey", ls=":", lw=1)
            offset += len(train)
        ax.set_title(target)
        if not offset:  # no folder trained this target
            ax.text(0.5, 0.5, "not trained in these runs", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("magnitude MSE")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
