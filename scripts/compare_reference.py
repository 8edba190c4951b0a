"""Compare openunmix-like with the reference Open-Unmix 1.3.0 on the same weights.

Builds random weights in the published umxhq shapes, loads them into both
packages, separates the same audio and prints the largest difference relative
to the output peak, per setting. With ``--folder``, instead: a model folder (one
``umx-train`` wrote, or a published one) loaded by each package's own loader
(ours in fp32), the same comparison on noise. Needs the reference package importable:

    pip install --no-deps openunmix==1.3.0
    PYTHONPATH=../shared/tools/reference-openunmix python scripts/compare_reference.py
    PYTHONPATH=../shared/tools/reference-openunmix python scripts/compare_reference.py --folder my-model
"""
import argparse
import sys

import torch

from openunmix_like import OpenUnmix, Separator


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--folder", default=None, help="a model folder, loaded by both packages' loaders")
    args = p.parse_args(argv)
    try:
        import openunmix.model as ref
    except ImportError as exc:
        print(f"reference openunmix not importable ({exc}); see the docstring", file=sys.stderr)
        return 2
    if args.folder:
        return compare_folder(args.folder, args.seconds)
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


def compare_folder(folder: str, seconds: float) -> int:
    """Both packages' loaders on one model folder: the reference's ``load_separator`` reads its
    ``<target>.pth``, ``<target>.json`` and ``separator.json``, ours its own files."""
    import json
    from pathlib import Path

    from openunmix.utils import load_separator

    targets = json.loads((Path(folder) / "separator.json").read_text())["targets"]
    torch.manual_seed(0)
    audio = torch.randn(1, 2, int(seconds * 44100)) * 0.1
    print(f"{folder}: targets {', '.join(targets)}")
    print("niter residual  max|ours-ref|/peak")
    # The reference refuses the filter's iterations for one target without a residual.
    for niter, residual in dict.fromkeys([(0, False), (1, len(targets) == 1), (1, True)]):
        theirs = load_separator(folder, targets=targets, niter=niter, residual=residual, device="cpu")
        theirs.freeze()
        ours = Separator.from_pretrained(folder, targets=targets, niter=niter, precision="fp32",
                                         residual="residual" if residual else None)
        with torch.no_grad():
            a, b = ours(audio), theirs(audio)
        print(f"{niter:5d} {str(residual):8s}  {float((a - b).abs().max() / b.abs().max()):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
