"""STFT, inverse STFT and magnitude with the conventions of the published models.

Periodic Hann window of length ``n_fft``, ``center=True`` with reflect padding,
not normalised, one-sided. Spectrograms are complex tensors shaped
``(nb_samples, nb_channels, nb_bins, nb_frames)``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def _window_like(window: Tensor, dtype: torch.dtype) -> Tensor:
    """The Hann window in ``dtype``, computed in that precision rather than cast."""
    if window.dtype == dtype:
        return window
    return torch.hann_window(window.shape[0], periodic=True, dtype=dtype, device=window.device)


class STFT(nn.Module):
    """Short-time Fourier transform of multichannel audio.

    Args:
        n_fft: window and FFT length in samples.
        n_hop: hop between frames in samples.
        center: pad the signal so frame ``t`` is centred at ``t * n_hop``.
    """

    def __init__(self, n_fft: int = 4096, n_hop: int = 1024, center: bool = True):
        super().__init__()
        self.n_fft = n_fft
        self.n_hop = n_hop
        self.center = center
        # Not persistent: published state dicts of the Separator hold no window.
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    def forward(self, audio: Tensor) -> Tensor:
        """
        Args:
            audio: ``(..., nb_timesteps)`` real, typically ``(nb_samples, nb_channels, nb_timesteps)``.

        Returns:
            complex ``(..., nb_bins, nb_frames)``.
        """
        shape = audio.shape
        flat = audio.reshape(-1, shape[-1])
        spec = torch.stft(
            flat,
            n_fft=self.n_fft,
            hop_length=self.n_hop,
            window=_window_like(self.window, audio.dtype),
            center=self.center,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        return spec.reshape(shape[:-1] + spec.shape[-2:])


class ISTFT(nn.Module):
    """Inverse of :class:`STFT` (overlap-add with window-square normalisation).

    Args:
        n_fft: window and FFT length in samples.
        n_hop: hop between frames in samples.
        center: must equal the forward transform's setting.
    """

    def __init__(self, n_fft: int = 4096, n_hop: int = 1024, center: bool = True):
        super().__init__()
        self.n_fft = n_fft
        self.n_hop = n_hop
        self.center = center
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    def forward(self, spec: Tensor, length: Optional[int] = None) -> Tensor:
        """
        Args:
            spec: complex ``(..., nb_bins, nb_frames)``.
            length: number of output samples (the original signal's length).

        Returns:
            real ``(..., nb_timesteps)``.
        """
        shape = spec.shape
        flat = spec.reshape((-1,) + shape[-2:])
        audio = torch.istft(
            flat,
            n_fft=self.n_fft,
            hop_length=self.n_hop,
            window=_window_like(self.window, flat.real.dtype),
            center=self.center,
            normalized=False,
            onesided=True,
            length=length,
        )
        return audio.reshape(shape[:-2] + audio.shape[-1:])


class ComplexNorm(nn.Module):
    """Magnitude of a complex spectrogram, optionally averaged to one channel.

    Args:
        mono: average the magnitudes over channels (keeping a channel axis of 1),
            as mono models expect.
    """

    def __init__(self, mono: bool = False):
        super().__init__()
        self.mono = mono

    def forward(self, spec: Tensor) -> Tensor:
        """
        Args:
            spec: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.

        Returns:
            real ``(nb_samples, nb_channels or 1, nb_bins, nb_frames)``.
        """
        mag = spec.abs()
        if self.mono:
            mag = mag.mean(dim=1, keepdim=True)
        return mag


def nb_frames_for(nb_timesteps: int, n_hop: int, center: bool = True, n_fft: int = 0) -> int:
    """Number of STFT frames a signal of ``nb_timesteps`` samples gives."""
    if center:
        return nb_timesteps // n_hop + 1
    return 1 + (nb_timesteps - n_fft) // n_hop
