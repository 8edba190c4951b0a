"""torch.hub entry points: ``torch.hub.load("<owner>/openunmix-like", "umxhq")``.

Each gives the same :class:`openunmix_like.Separator` as ``Separator.from_pretrained``
and takes its keywords (``targets``, ``device``, and the Wiener settings ``niter``,
``softmask``, ``residual``, ``wiener_win_len``).
"""
dependencies = ["torch", "numpy", "scipy", "soundfile", "safetensors", "tqdm"]

from openunmix_like import Separator  # noqa: E402


def _loader(name):
    def load(targets=None, device="cpu", **wiener_options):
        return Separator.from_pretrained(name, targets=targets, device=device, **wiener_options)

    load.__doc__ = f"Separator with the {name or 'bundled default'} model (see Separator.from_pretrained)."
    return load


default = _loader(None)
umxhq = _loader("umxhq")
umx = _loader("umx")
umxl = _loader("umxl")
umxse = _loader("umxse")
