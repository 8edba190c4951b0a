"""Compare openunmix-like with the reference Open-Unmix 1.3.0 on the same weights.

Builds random weights in the published umxhq shapes, loads them into both
packages, separates the same audio and prints the largest difference relative
to the output peak, per setting. Needs the reference package importable:

    pip install --no-deps openunmix==1.3.0
    PYTHONPATH=../shared/tools/reference-openunmix python scripts/compare_reference.py
"""
import argparse
import sys

import torch

from openunmix_like import OpenUnmix, Separator


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--hidden-size", type=int, default=512)
    args = p.parse_args(argv)
    try:
        import openunmix.model as ref
    except ImportError as exc:
        print(f"reference openunmix not importable ({exc}); see the docstring", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    targets = ["vocals", "drums", "bass", "other"]
    states = {}
    for t in targets:
        m = OpenUnmix(2049, 2, args.hidden_size, max_bin=1487)
        with torch.no_grad():
            for prm in m.parameters():
                prm.add_(torch.randn_like(prm) * 0.05)
        states[t] = m.state_dict()
    audio = torch.randn(1, 2, int(args.seconds * 44100)) * 0.1
    print("niter softmask residual wiener_win_len  max|ours-ref|/peak")
    for niter, softmask, residual, win in [(0, False, False, 300), (1, False, False, 300), (1, True, False, 300),
                                           (2, False, True, 300), (1, False, False, None)]:
        ours_models, ref_models = {}, {}
        for t in targets:
            ours_models[t] = OpenUnmix(2049, 2, args.hidden_size, max_bin=1487)
            ours_models[t].load_state_dict(states[t])
            ref_models[t] = ref.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=args.hidden_size, max_bin=1487)
            ref_models[t].load_state_dict(states[t])
        ours = Separator(ours_models, niter=niter, softmask=softmask, residual="residual" if residual else None,
                         wiener_win_len=win).freeze()
        theirs = ref.Separator(ref_models, niter=niter, softmask=softmask, residual=residual,
                               wiener_win_len=win).eval()
        with torch.no_grad():
            a, b = ours(audio), theirs(audio)
        print(f"{niter:5d} {str(softmask):8s} {str(residual):8s} {str(win):14s}  "
              f"{float((a - b).abs().max() / b.abs().max()):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
