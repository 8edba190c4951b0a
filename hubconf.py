"""torch.hub entry points: ``torch.hub.load("<owner>/openunmix-like", "umxhq")``.

Each gives the same :class:`openunmix_like.Separator` as ``Separator.from_pretrained``.
"""
dependencies = ["torch", "numpy", "scipy", "soundfile", "safetensors", "tqdm"]

from openunmix_like import Separator  # noqa: E402


def _loader(name):
    def load(targets=None, device="cpu", niter=1, residual=None, softmask=False, wiener_win_len=300):
        return Separator.from_pretrained(name, targets=targets, device=device, niter=niter,
                                         residual=residual, softmask=softmask, wiener_win_len=wiener_win_len)

    load.__doc__ = f"Separator with the {name or 'bundled default'} model (see Separator.from_pretrained)."
    return load


default = _loader(None)
umxhq = _loader("umxhq")
umx = _loader("umx")
umxl = _loader("umxl")
umxse = _loader("umxse")
