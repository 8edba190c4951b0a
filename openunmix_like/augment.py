"""Source augmentations for training.

Each is a module-level function ``f(audio, rng) -> audio`` on one source
``(nb_channels, nb_timesteps)``, with the randomness drawn from the
``random.Random`` the dataset passes in, so data-loader worker processes can
pickle them and results do not depend on global random state.
"""
from __future__ import annotations

import random
from typing import Callable, Dict, List, Sequence

from torch import Tensor

Augmentation = Callable[[Tensor, random.Random], Tensor]


def gain(audio: Tensor, rng: random.Random, low: float = 0.25, high: float = 1.25) -> Tensor:
    """Scale by a gain drawn uniformly from ``[low, high)``."""
    return audio * rng.uniform(low, high)


def channelswap(audio: Tensor, rng: random.Random) -> Tensor:
    """Swap left and right with probability 1/2 (stereo only)."""
    if audio.shape[0] == 2 and rng.random() < 0.5:
        return audio.flip(0)
    return audio


def force_stereo(audio: Tensor, rng: random.Random) -> Tensor:
    """Mono becomes two identical channels; more than two keep the first two."""
    if audio.shape[0] == 1:
        return audio.expand(2, -1).clone()
    return audio[:2]


AUGMENTATIONS: Dict[str, Augmentation] = {"gain": gain, "channelswap": channelswap, "force_stereo": force_stereo}


class Compose:
    """Apply augmentations in order (picklable, unlike a lambda chain)."""

    def __init__(self, functions: Sequence[Augmentation] = ()):
        self.functions: List[Augmentation] = list(functions)

    def __call__(self, audio: Tensor, rng: random.Random) -> Tensor:
        for f in self.functions:
            audio = f(audio, rng)
        return audio

    @classmethod
    def from_names(cls, names: Sequence[str]) -> "Compose":
        unknown = [n for n in names if n not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; choose from {', '.join(AUGMENTATIONS)}")
        return cls([AUGMENTATIONS[n] for n in names])
