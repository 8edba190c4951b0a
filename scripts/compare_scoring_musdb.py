"""The bundled model on the 14 MUSDB18 validation excerpts: museval's scores against openunmix_like.bsseval's.

Separates each excerpt (the sum of its sources, as `umx-evaluate --mixture-from-sources` does), scores the
same estimates with both, and prints the largest differences per window and per track median, and the time
each spent scoring.

    python scripts/compare_scoring_musdb.py [MUSDB18-7S ROOT]
"""
import sys
import time

import museval
import numpy as np
import torch

from openunmix_like import Separator
from openunmix_like import evaluate as ev
from openunmix_like.bsseval import bss_eval_v4


def main() -> None:
    torch.set_num_threads(2)
    root = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/musdb18-7s"
    sep = Separator.from_pretrained(precision="fp32")
    run = ev.estimates_fn_for(sep)
    worst, rows, t_m, t_o = np.zeros(4), [], 0.0, 0.0
    for track in ev.musdb_tracks(root, "train", split="valid", mixture_from_sources=True):
        est = run(track)
        targets = list(est)
        refs = np.stack([track.references[t].numpy().T for t in targets]).astype(np.float64)
        ests = np.stack([est[t].numpy().T for t in targets]).astype(np.float64)
        start = time.perf_counter()
        a = np.array(museval.evaluate(refs, ests, win=track.rate, hop=track.rate))
        t_m += time.perf_counter() - start
        start = time.perf_counter()
        b = np.array(bss_eval_v4(refs, ests, track.rate, track.rate))
        t_o += time.perf_counter() - start
        d = np.nanmax(np.abs(a - b), axis=(1, 2))
        worst = np.maximum(worst, d)
        rows.append((track.name, np.nanmedian(a, axis=2), np.nanmedian(b, axis=2)))  # (metric, target) each
        print(track.name, "max window diff SDR ISR SIR SAR:", " ".join(f"{x:.1e}" for x in d), flush=True)
    ma, mb = np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])
    print("largest window difference over all tracks:", " ".join(f"{x:.1e}" for x in worst))
    print("largest track-median difference:",
          " ".join(f"{x:.1e}" for x in np.nanmax(np.abs(ma - mb), axis=(0, 2))))
    for j, target in enumerate(targets):
        print(f"{target} SDR, mean of track medians: museval {np.nanmean(ma[:, 0, j]):.4f}, "
              f"ours {np.nanmean(mb[:, 0, j]):.4f}")
    print("scoring time: museval %.1f s, ours %.1f s" % (t_m, t_o))


if __name__ == "__main__":
    main()
