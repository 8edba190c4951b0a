"""Does averaging estimates over shifted inputs (Demucs' ``--shifts``) help this separator?

Separates the 14 MUSDB18 7 s validation excerpts with 1, 2 and 4 shifts (k x n_hop / N samples of
leading padding, cut off again), scores each with museval (BSSEval v4, 1 s windows) and prints the
median over tracks of the per-track median SDR, per target. Measured 2026-12-05 (bundled model):
docs/history/2026-12-05-python-files-oracles-wheel.md.

    python scripts/probe_shifts.py [MODEL]      # MODEL: a name or folder; default the bundled model
"""
import sys
from pathlib import Path

import numpy as np
import torch
import musdb
import museval
from openunmix_like import Separator

torch.set_num_threads(2)
name = sys.argv[1] if len(sys.argv) > 1 else None
shifts_list = [1, 2, 4]
sep = Separator.from_pretrained(name, precision="fp32")
db = musdb.DB(root=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "musdb18-7s"), subsets="train",
             split="valid")
hop = sep.n_hop
res = {s: {t: [] for t in sep.target_names} for s in shifts_list}
for track in db.tracks:
    mix = torch.from_numpy(track.audio.T.astype(np.float32))[None]
    refs = np.stack([track.targets[t].audio for t in sep.target_names])
    n = mix.shape[-1]
    for S in shifts_list:
        acc = 0
        for k in range(S):
            off = (k * hop) // S
            x = torch.nn.functional.pad(mix, (off, 0))
            with torch.no_grad():
                y = sep(x)[..., off:off + n]
            acc = acc + y
        est = (acc / S)[0].numpy().transpose(0, 2, 1)
        sdr, _, _, _ = museval.evaluate(refs, est, win=44100, hop=44100)
        for j, t in enumerate(sep.target_names):
            res[S][t].append(np.nanmedian(sdr[j]))
    print(track.name, flush=True)
for S in shifts_list:
    med = {t: float(np.median(v)) for t, v in res[S].items()}
    print(S, {t: round(v, 3) for t, v in med.items()}, "avg", round(np.mean(list(med.values())), 3))
