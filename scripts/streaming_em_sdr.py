"""SDR of the streaming filter settings against the offline Wiener filter, on MUSDB18 excerpts.

Every filter gets the same magnitude estimates: the model's on the whole excerpt. The
default (the bundled model) is bidirectional, so it stands in for a causal model; what is
compared is the filter alone:

- ``niter 0``: the per-frame filter, what ``StreamingSeparator`` computes exactly;
- ``causal_em N (memory M)``: :func:`openunmix_like.streaming.causal_em`, EM from the
  frames so far, forgetting with a time constant of ``M`` frames (``all``: none), what
  ``StreamingSeparator(..., causal_em=N)`` computes;
- ``offline niter N``: the offline filter (300-frame windows), which sees later frames too.

SDR is the full-track SDR of the Music Demixing Challenge (``openunmix_like.metrics.sdr_mdx``),
not BSSEval. Needs the ``musdb`` package (``pip install -e ".[tests]"``).

    python scripts/streaming_em_sdr.py --root ../shared/data/musdb18-7s      # musdb's 14 validation tracks
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable, Dict, List, Optional, Sequence

import torch

from openunmix_like import Separator, filtering
from openunmix_like.metrics import sdr_mdx
from openunmix_like.streaming import EMState, causal_em


def filters(window: int) -> Dict[str, Callable]:
    """Name -> function of (magnitudes (J, C, F, T), mixture STFT (C, F, T)) giving complex estimates."""
    def per_frame(spec, mix):
        return filtering.wiener_fast(spec, mix, iterations=0)

    def causal(iterations: int, memory: Optional[int]):
        forget = 1.0 - 1.0 / memory if memory else 1.0
        return lambda spec, mix: causal_em(per_frame(spec, mix), mix, iterations, EMState(), forget)

    def offline(iterations: int):
        return lambda spec, mix: filtering.wiener_fast(spec, mix, iterations=iterations, win_len=window)

    return {
        "niter 0 (streams exactly)": per_frame,
        f"causal_em 1 (memory {window})": causal(1, window),
        "causal_em 1 (memory all)": causal(1, None),
        f"causal_em 2 (memory {window})": causal(2, window),
        f"offline niter 1 ({window}-frame windows)": offline(1),
        f"offline niter 2 ({window}-frame windows)": offline(2),
    }


def score_track(separator: Separator, track, methods: Dict[str, Callable]) -> Dict[str, Dict[str, float]]:
    """Method -> target -> SDR of one musdb track."""
    mixture = torch.as_tensor(track.audio.T, dtype=torch.float32)
    with torch.no_grad():
        mix_stft = separator.stft(mixture)
        mag = separator.complexnorm(mix_stft[None])
        spec = torch.stack([model(mag)[0] for model in separator.target_models.values()])
        scores = {}
        for name, method in methods.items():
            estimates = separator.istft(method(spec, mix_stft), length=mixture.shape[-1])
            scores[name] = {target: sdr_mdx(torch.as_tensor(track.targets[target].audio.T), estimates[j])
                            for j, target in enumerate(separator.target_models)}
    return scores


def report(scores: List[Dict[str, Dict[str, float]]], targets: Sequence[str]) -> str:
    methods = list(scores[0])
    lines = ["| filter | " + " | ".join(targets) + " | mean | mean minus niter 0 |",
             "|---|" + "---|" * (len(targets) + 2)]
    base = statistics.mean(s[methods[0]][t] for s in scores for t in targets)
    for m in methods:
        medians = [statistics.median(s[m][t] for s in scores) for t in targets]
        mean = statistics.mean(s[m][t] for s in scores for t in targets)
        lines.append(f"| {m} | " + " | ".join(f"{x:.2f}" for x in medians) + f" | {mean:.3f} | {mean - base:+.3f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    import musdb

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data/musdb18-7s", help="MUSDB18 (.stem.mp4) folder")
    parser.add_argument("--subset", default="train")
    parser.add_argument("--split", default="valid", help="musdb's split of the subset (valid: its 14 tracks)")
    parser.add_argument("--model", default=None, help="model name or folder (default: the bundled model)")
    parser.add_argument("--window", type=int, default=300, help="offline window and causal memory, in frames")
    args = parser.parse_args(argv)
    separator = Separator.from_pretrained(args.model, niter=0, precision="fp32")
    db = musdb.DB(root=args.root, subsets=args.subset, split=args.split)
    methods = filters(args.window)
    scores = []
    for track in db:
        scores.append(score_track(separator, track, methods))
        print(track.name, {m: round(statistics.mean(s.values()), 2) for m, s in scores[-1].items()}, flush=True)
    print(f"\n{len(scores)} tracks, median SDR (dB) per target, mean over targets and tracks:\n")
    print(report(scores, list(separator.target_models)))


if __name__ == "__main__":
    main()
