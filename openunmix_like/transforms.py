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


# Size of the temporaries the CPU transforms work in: well below glibc's largest reused
# block (32 MiB), above which every allocation is a fresh mapping whose pages fault in.
CPU_CHUNK_BYTES = 8 << 20


def frames_per_chunk(bytes_per_frame: int) -> int:
    """How many frames of ``bytes_per_frame`` bytes make one chunk of ``CPU_CHUNK_BYTES`` (at least one)."""
    return max(1, CPU_CHUNK_BYTES // max(1, bytes_per_frame))


_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _chunk_on_cpu(x: Tensor) -> bool:
    """Whether a transform of ``x`` may work chunk by chunk: on the CPU, outside autograd."""
    return x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)


class STFT(nn.Module):
    """Short-time Fourier transform of multichannel audio.

    Args:
        n_fft: window and FFT length in samples.
        n_hop: hop between frames in samples.
        center: pad the signal so frame ``t`` is centred at ``t * n_hop``.
        pad_mode: how ``center`` pads: ``reflect`` (the published models') or
            ``constant`` (zeros: any length works, as losses and augmentations need).
    """

    def __init__(self, n_fft: int = 4096, n_hop: int = 1024, center: bool = True, pad_mode: str = "reflect"):
        super().__init__()
        self.n_fft = n_fft
        self.n_hop = n_hop
        self.center = center
        self.pad_mode = pad_mode
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
        if _chunk_on_cpu(flat) and flat.dtype in _COMPLEX_OF:
            spec = self._chunked(flat)
            if spec is not None:
                return spec.reshape(shape[:-1] + spec.shape[-2:])
        spec = torch.stft(
            flat,
            n_fft=self.n_fft,
            hop_length=self.n_hop,
            window=_window_like(self.window, audio.dtype).to(audio.device),
            center=self.center,
            pad_mode=self.pad_mode,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        return spec.reshape(shape[:-1] + spec.shape[-2:])

    def _chunked(self, flat: Tensor) -> Optional[Tensor]:
        """``torch.stft``'s result, computed a few megabytes of frames at a time into one output
        (frame-major, like ``torch.stft``'s): for long inputs ``torch.stft`` builds every
        windowed frame at once, a fresh, page-faulting block on every call. ``None`` when the
        input is too short for more than one chunk (``torch.stft`` then does it, errors included)."""
        n_fft, hop = self.n_fft, self.n_hop
        step = frames_per_chunk(flat.shape[0] * n_fft * flat.element_size())
        nb_frames = nb_frames_for(flat.shape[-1], hop, self.center, n_fft)
        if nb_frames <= step or (self.center and flat.shape[-1] <= n_fft // 2):
            return None
        if self.center:
            flat = nn.functional.pad(flat[:, None], (n_fft // 2, n_fft // 2), mode=self.pad_mode)[:, 0]
        frames = flat.unfold(-1, n_fft, hop)  # (signals, frames, n_fft), a view
        window = _window_like(self.window, flat.dtype)
        out = torch.empty((flat.shape[0], nb_frames, n_fft // 2 + 1), dtype=_COMPLEX_OF[flat.dtype])
        for t in range(0, nb_frames, step):
            for i in range(flat.shape[0]):  # contiguous output rows: no temporary for out=
                torch.fft.rfft(frames[i, t : t + step] * window, out=out[i, t : t + step])
        return out.transpose(1, 2)

    def inverse(self, spec: Tensor, length: int) -> Tensor:
        """The inverse of :meth:`forward` through ``torch.istft``, for training, where gradients
        must flow (:class:`ISTFT` is the fast, memory-bounded one for separation).

        Args:
            spec: complex ``(..., nb_bins, nb_frames)``.
            length: output samples.

        Returns:
            real ``(..., length)``.
        """
        flat = spec.reshape(-1, *spec.shape[-2:])
        window = _window_like(self.window, spec.real.dtype).to(spec.device)
        audio = torch.istft(flat, self.n_fft, self.n_hop, window=window, center=self.center, length=length)
        return audio.reshape(*spec.shape[:-2], length)


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
        nb_frames = spec.shape[-1]
        buffer = self.allocate(spec.shape[:-2], nb_frames, spec.real.dtype, spec.device, length)
        self.accumulate(spec, buffer, 0)
        return self.finish(buffer, nb_frames, length)

    # The inverse works frame block by frame block (allocate, accumulate, finish),
    # so a caller can invert each block as soon as it is computed.

    def allocate(self, lead_shape, nb_frames: int, dtype: torch.dtype, device=None,
                 length: Optional[int] = None) -> Tensor:
        """Zeroed overlap-add buffer ``(*lead_shape, nb_samples)`` for ``nb_frames`` frames."""
        needed = (nb_frames - 1) * self.n_hop + self.n_fft
        if length is not None:
            needed = max(needed, length + self._pad)
        return torch.zeros(tuple(lead_shape) + (needed,), dtype=dtype, device=device)

    def accumulate(self, spec: Tensor, buffer: Tensor, frame_start: int) -> None:
        """Add the windowed inverse FFT of frames ``frame_start ...`` into ``buffer``.

        On the CPU the frames are inverted a few megabytes at a time: temporaries of
        that size are reused by the allocator, where larger ones would be fresh,
        page-faulting memory on every call.

        Args:
            spec: complex ``(..., nb_bins, n)``, frames ``frame_start`` to ``frame_start + n``.
            buffer: from :meth:`allocate`, same leading shape.
        """
        window = _window_like(self.window, buffer.dtype).to(buffer.device)
        n = spec.shape[-1]
        step = n
        if not spec.is_cuda:
            step = frames_per_chunk(buffer[..., :1].numel() * self.n_fft * buffer.element_size())
        for t in range(0, n, step):
            frames = torch.fft.irfft(spec[..., t : t + step].transpose(-1, -2), n=self.n_fft)  # (..., step, n_fft)
            self._overlap_add(frames.mul_(window), buffer, frame_start + t)

    def _overlap_add(self, frames: Tensor, buffer: Tensor, frame_start: int) -> None:
        n = frames.shape[-2]
        hop = self.n_hop
        if self.n_fft % hop:
            for t in range(n):
                start = (frame_start + t) * hop
                buffer[..., start : start + self.n_fft] += frames[..., t, :]
            return
        # n_fft = k * hop: each frame is k hop-sized pieces; piece i of frame t lands on slot t + i.
        k = self.n_fft // hop
        slots = buffer[..., : (buffer.shape[-1] // hop) * hop].unflatten(-1, (-1, hop))
        pieces = frames.unflatten(-1, (k, hop))
        for i in range(k):
            slots[..., frame_start + i : frame_start + i + n, :] += pieces[..., i, :]

    def finish(self, buffer: Tensor, nb_frames: int, length: Optional[int] = None) -> Tensor:
        """Divide by the summed squared window and crop; returns a view of ``buffer``."""
        window_sq = _window_like(self.window, buffer.dtype).to(buffer.device).square()
        envelope = torch.zeros(buffer.shape[-1], dtype=buffer.dtype, device=buffer.device)
        view = envelope.as_strided((nb_frames, self.n_fft), (self.n_hop, 1))
        for t in range(min(nb_frames, -(-self.n_fft // self.n_hop))):
            # Frames t, t + k, ... do not overlap each other: add them in one strided step.
            view[t :: -(-self.n_fft // self.n_hop)] += window_sq
        length = (nb_frames - 1) * self.n_hop if length is None else length
        out = buffer[..., self._pad : self._pad + length]
        out.div_(envelope[self._pad : self._pad + length].clamp_min(1e-11))
        return out

    @property
    def _pad(self) -> int:
        return self.n_fft // 2 if self.center else 0


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
        if _chunk_on_cpu(spec) and spec.dim() and spec.shape[-1] > 1:
            # One output, filled a few megabytes at a time (no spectrogram-sized temporaries).
            mag = torch.empty_like(spec, dtype=spec.real.dtype)
            step = frames_per_chunk(spec[..., :1].numel() * spec.element_size())
            for t in range(0, spec.shape[-1], step):
                torch.abs(spec[..., t : t + step], out=mag[..., t : t + step])
        else:
            mag = spec.abs()
        if self.mono:
            mag = mag.mean(dim=1, keepdim=True)
        return mag


def nb_frames_for(nb_timesteps: int, n_hop: int, center: bool = True, n_fft: int = 0) -> int:
    """Number of STFT frames a signal of ``nb_timesteps`` samples gives."""
    if center:
        return nb_timesteps // n_hop + 1
    return 1 + (nb_timesteps - n_fft) // n_hop
