"""Real-time streaming separation with causal (unidirectional) Open-Unmix models.

A :class:`StreamingSeparator` takes audio in blocks of any size and returns the separated audio
a fixed :attr:`~StreamingSeparator.latency` later. From block to block it carries what the
whole-signal :class:`~openunmix_like.separator.Separator` would compute: the input not yet framed,
every target model's LSTM state, and the inverse STFT's overlap-add sums. Nothing is recomputed: a
block costs the STFT frames it completes.

With models trained by ``umx-train --unidirectional`` and ``niter=0`` the concatenated output
equals the separator's on the whole signal (no segments) up to float rounding, edges included:
the first frame's reflect padding reads the first ``n_fft // 2 + 1`` samples, which the latency
waits for anyway, and :meth:`~StreamingSeparator.flush` pads the end as the STFT does once the
length is known. The offline filter's EM iterations look at later frames and are refused; ``causal_em``
offers EM iterations from the frames so far instead (:func:`causal_em`), which differ from offline.

    streamer = StreamingSeparator.from_pretrained("my-causal-model")   # umx-train --unidirectional
    for block in blocks:                   # (nb_channels, n), any n, at streamer.sample_rate
        out = streamer.process(block)      # (nb_targets, nb_channels, m): finished samples
    out = streamer.flush()                 # the last ones
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import filtering
from .architectures import architecture_of
from .architectures.umx import OpenUnmix
from .errors import ModelError
from .separator import Separator, WienerSettings, wiener_settings

CAUSAL_HINT = "streaming needs a causal Open-Unmix model, trained with `umx-train --unidirectional`"


def check_streamable(separator: Separator) -> None:
    """Raise a one-line error if ``separator`` cannot stream.

    Raises:
        ValueError: EM iterations in the Wiener filter (``niter >= 1``), or a target model in training mode.
        ModelError: a target model that looks at later frames (a bidirectional LSTM, another architecture).
    """
    for name, model in separator.target_models.items():  # first: a model that cannot stream, whatever the filter
        if not isinstance(model, OpenUnmix):
            try:
                kind = f"a {architecture_of(model).name} model"
            except ValueError:
                kind = f"a {type(model).__name__}"
            raise ModelError(f"target {name!r} is {kind}, whose output for a frame depends on later frames; "
                             f"{CAUSAL_HINT}")
        if not model.config.unidirectional:
            raise ModelError(f"target {name!r} has a bidirectional LSTM (as every published model, umxhq, umx, umxl "
                             f"and umxse, and the bundled one), which reads the signal back from its end; "
                             f"{CAUSAL_HINT}")
        if any(m.training for m in model.modules()):
            raise ValueError(f"target {name!r} is in training mode (batch statistics and dropout per block); "
                             "call separator.freeze() first")
    check_wiener(separator.wiener)


def check_wiener(wiener: WienerSettings) -> None:
    """Raise a one-line ``ValueError`` for Wiener settings that cannot stream (EM iterations)."""
    if wiener.niter:
        raise ValueError(f"niter={wiener.niter}: the Wiener filter's EM iterations estimate spatial covariances "
                         "from every frame of a window, later ones included, so they cannot stream; use niter=0 "
                         "(the per-frame filter, which streams exactly), optionally with causal_em=1 (EM from the "
                         "frames so far, which differs from offline)")


@dataclasses.dataclass
class _Group:
    """Channels the offline separator separates together, as one batch (see :meth:`Separator.forward`),
    and what the stream carries for them.

    Attributes:
        channels: ``(nb_samples, channels per sample)`` indices into the stream's channels.
        downmix: mono input to a stereo model: the model sees the channel twice and the filter
            the mean of its two output channels.
        states: per target model, its LSTM's ``(h, c)`` after the frames so far (``None``: none yet).
        em: per sample, the causal EM's running statistics (see :func:`causal_em`).
    """

    channels: Tensor
    downmix: bool
    states: List[Optional[tuple]]
    em: List["EMState"]


def _channel_groups(nb_channels: int, model_channels: int, nb_models: int, device) -> List[_Group]:
    """How a stream of ``nb_channels`` is separated: stereo models take pairs (a last odd channel
    as mono), mono models the mean magnitude of all channels, as :meth:`Separator.forward` does."""
    if model_channels == 1 or nb_channels <= 2:
        groups = [([list(range(nb_channels))], model_channels == 2 and nb_channels == 1)]
    else:
        even = nb_channels - nb_channels % 2
        groups = [([[c, c + 1] for c in range(0, even, 2)], False)]
        if even < nb_channels:
            groups.append(([[nb_channels - 1]], True))
    return [_Group(torch.tensor(channels, device=device), downmix, [None] * nb_models, [EMState() for _ in channels])
            for channels, downmix in groups]


@dataclasses.dataclass
class EMState:
    """What :func:`causal_em` carries from frame to frame: per iteration, the forgotten sums of each
    source's ``y y^H`` ``(nb_sources, nb_bins, nb_channels, nb_channels)`` and power ``(nb_sources, nb_bins)``
    over the frames so far, and the largest mixture magnitude so far (the regulariser's scale)."""

    sums: List[tuple] = dataclasses.field(default_factory=list)
    peak: float = 0.0


def causal_em(y: Tensor, mix_stft: Tensor, iterations: int, state: EMState, forget: float = 1.0,
              eps: float = 1e-10, scale_factor: float = 10.0) -> Tensor:
    """EM iterations of the multichannel Wiener filter whose spatial covariances come from the
    frames so far only, frame by frame: a causal variant of :func:`filtering.wiener`'s EM.

    Offline, iteration ``k`` estimates every source's spatial covariance ``R_j`` per bin from the
    estimates of iteration ``k - 1`` on all frames of a window, then filters each frame with
    ``v_j R_j (sum_i v_i R_i + reg I)^-1 x``. Here the sums behind ``R_j`` run over the frames up to
    the current one, each earlier frame weighted ``forget`` per frame of age (1: all frames
    equally), and the regulariser scales with the largest mixture magnitude so far instead of the
    window's. The result differs from offline EM (it cannot see later frames), not from itself:
    any blocking of the frames gives the same values.

    Args:
        y: initial estimates (:func:`filtering.wiener_fast` with ``iterations=0``), complex
            ``(nb_sources, nb_channels, nb_bins, nb_frames)``.
        mix_stft: complex ``(nb_channels, nb_bins, nb_frames)``.
        iterations: EM iterations (0 returns ``y``).
        state: the statistics after the previous frames, updated in place (a fresh :class:`EMState` to start).
        forget: weight of a frame per frame of age, in (0, 1].
        eps, scale_factor: as for :func:`filtering.wiener`.

    Returns:
        the refined estimates, same shape as ``y``.
    """
    if not iterations:
        return y
    nb_channels = mix_stft.shape[0]
    eye = torch.eye(nb_channels, dtype=y.dtype, device=y.device)
    out = torch.empty_like(y)
    for t in range(y.shape[-1]):
        x = mix_stft[..., t]  # (nb_channels, nb_bins)
        state.peak = max(state.peak, float(x.abs().max()))
        m2 = max(1.0, state.peak / scale_factor) ** 2  # the offline filter's scaling, from the frames so far
        estimate = y[..., t]  # (nb_sources, nb_channels, nb_bins)
        for k in range(iterations):
            v = (estimate.real.square() + estimate.imag.square()).mean(dim=1)  # (nb_sources, nb_bins)
            outer = torch.einsum("jcf,jdf->jfcd", estimate, estimate.conj())
            if len(state.sums) <= k:
                state.sums.append((torch.zeros_like(outer), torch.zeros_like(v)))
            sums, weights = state.sums[k]
            sums, weights = sums.mul_(forget).add_(outer), weights.mul_(forget).add_(v)
            r = sums / (eps * m2 + weights)[..., None, None].to(sums.dtype)
            vc = v.to(r.dtype)
            cxx = torch.einsum("jf,jfcd->fcd", vc, r) + eps ** 0.5 * m2 * eye
            z = torch.einsum("fcd,df->fc", filtering.invert_hermitian(cxx, eps * m2), x)
            estimate = (vc[..., None] * torch.einsum("jfcd,fd->jfc", r, z)).transpose(1, 2)
        out[..., t] = estimate
    return out


def _causal_step(model: OpenUnmix, mix: Tensor, state: Optional[tuple], autocast: bool):
    """A causal model's estimate for new frames, carrying its LSTM state.

    Args:
        mix: mixture magnitude of the new frames, frame-major ``(nb_frames, nb_samples, nb_channels, nb_bins)``.
        state: the LSTM's ``(h, c)`` after the previous frames, or ``None`` at the start.
        autocast: run under bfloat16 autocast (a ``bf16`` separator whose model was converted back).

    Returns:
        ``(estimate, state)``: frame-major magnitudes like ``mix``, and the LSTM's state after the new frames.
    """
    with torch.autocast(device_type=mix.device.type, dtype=torch.bfloat16, enabled=autocast):
        # OpenUnmix.encode with the state carried in: the same input layer, then the LSTM from ``state``
        # (its gates and state in the dtype of the model's other parameters, float32 beside bfloat16 products).
        x = model.input_layer(mix)
        lstm_out, state = lstm_steps(model.lstm, x, state, model.input_scale.dtype)
        estimate = model.decode(torch.cat([x, lstm_out], -1), mix)
    return estimate.to(mix.dtype), state


def lstm_steps(lstm: nn.LSTM, x: Tensor, state: Optional[tuple] = None, dtype: Optional[torch.dtype] = None):
    """A unidirectional ``nn.LSTM`` in eval mode run over ``x`` from ``state``, frame by frame.

    Equal to ``lstm(x, state)`` up to float rounding, and faster for the few frames of a
    stream's block: on the CPU ``nn.LSTM`` hands its weights to oneDNN on every call (about 10 ms
    for a hidden size of 512, more than the frame's arithmetic). The products run in the
    weights' dtype, the gates and the state in ``dtype`` (float32 for bfloat16 weights, so the
    cell state does not lose precision from frame to frame).

    Args:
        x: ``(nb_frames, nb_samples, input_size)``.
        state: ``(h, c)``, each ``(num_layers, nb_samples, hidden_size)`` in ``dtype``; ``None``: zeros.
        dtype: of the gates and the state; default ``x``'s.

    Returns:
        ``(output, (h, c))``: output ``(nb_frames, nb_samples, hidden_size)`` in the weights' dtype.
    """
    dtype = dtype or x.dtype
    if state is None:
        zeros = x.new_zeros((lstm.num_layers, x.shape[1], lstm.hidden_size), dtype=dtype)
        state = (zeros, zeros)
    hs, cs = [], []
    for layer in range(lstm.num_layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(lstm, f"{name}_l{layer}") for name in
                                  ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        # The input's share of the gates for every frame at once, then the recurrence.
        inputs = nn.functional.linear(x.to(w_ih.dtype), w_ih, b_ih).to(dtype) + b_hh.to(dtype)
        h, c = state[0][layer], state[1][layer]
        outputs = []
        for t in range(x.shape[0]):
            gates = inputs[t] + nn.functional.linear(h.to(w_hh.dtype), w_hh).to(dtype)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        x = torch.stack(outputs).to(w_ih.dtype)
        hs.append(h)
        cs.append(c)
    return x, (torch.stack(hs), torch.stack(cs))


class StreamingSeparator:
    """Separates a stream of audio blocks with causal models, block by block, with a fixed latency.

    Args:
        separator: a :class:`Separator` of Open-Unmix models trained with ``umx-train
            --unidirectional``, with ``niter=0`` (``softmask`` and ``residual`` as it likes),
            frozen (``separator.freeze()``). It is used, not copied: several streams may share it.
        sample_rate: the input's rate in Hz, if known: another rate than the separator's is
            refused (streams are not resampled).
        nb_channels: the input's channel count; ``None``: the first block's. Channels are
            handled as :meth:`Separator.forward` does (mono into stereo models, pairs of more).
        causal_em: EM iterations after the per-frame filter, with spatial covariances from the
            frames so far only (:func:`causal_em`), forgetting older frames with a time constant
            of the separator's ``wiener_win_len`` frames (``None``: all frames alike). Not
            equal to offline EM (``niter``), which looks at later frames too; 0 (the default)
            streams exactly.

    Every sample comes out exactly :attr:`latency` samples after it went in: after ``R`` input
    samples, ``max(0, R - latency)`` output samples were returned in all. :meth:`flush` returns
    the rest at the end, and the output then equals ``separator(audio[None])[0]`` on the whole
    stream ``audio`` (up to float rounding).

    Raises:
        ValueError, ModelError: see :func:`check_streamable`; another ``sample_rate``.

    Example:
        >>> streamer = StreamingSeparator(Separator(causal_models, niter=0).freeze())
        >>> out = streamer.process(block)       # (nb_targets, nb_channels, m)
    """

    def __init__(self, separator: Separator, *, sample_rate: Optional[float] = None,
                 nb_channels: Optional[int] = None, causal_em: int = 0):
        if not isinstance(separator, Separator):
            raise TypeError(f"separator must be a Separator, got {type(separator).__name__}; "
                            "or use StreamingSeparator.from_pretrained")
        check_streamable(separator)
        if sample_rate is not None and float(sample_rate) != float(separator.sample_rate):
            raise ValueError(f"input at {sample_rate} Hz but the models run at {separator.sample_rate} Hz, and streams "
                             f"are not resampled; open the device or decoder at {separator.sample_rate} Hz")
        if nb_channels is not None and (isinstance(nb_channels, bool) or not isinstance(nb_channels, int)
                                        or nb_channels < 1):
            raise ValueError(f"nb_channels must be a channel count, 1 or more (None: the first block's), "
                             f"got {nb_channels!r}")
        if isinstance(causal_em, bool) or not isinstance(causal_em, int) or causal_em < 0:
            raise ValueError(f"causal_em must be a whole number of EM iterations (0: none), got {causal_em!r}")
        self.separator = separator
        self.causal_em = causal_em
        # A frame's weight falls by 1/e over wiener_win_len frames: the offline filter's window, as a time constant.
        self._forget = 1.0 - 1.0 / separator.wiener_win_len if separator.wiener_win_len else 1.0
        self._fixed_channels = nb_channels
        self.reset()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: Union[str, Path, None] = None,
        targets: Optional[Sequence[str]] = None,
        device: Union[str, torch.device] = "cpu",
        wiener: Optional[WienerSettings] = None,
        progress: bool = True,
        precision: str = "auto",
        sample_rate: Optional[float] = None,
        causal_em: int = 0,
        **wiener_options,
    ) -> "StreamingSeparator":
        """A stream from a model folder of causal models, as :meth:`Separator.from_pretrained` loads it.

        The Wiener filter defaults to ``niter=0`` here (the only setting that streams);
        ``softmask``, ``residual`` and ``wiener_win_len`` (for ``causal_em``) may be given. The
        published models and the bundled one are bidirectional and refused (the published ones
        before any download).

        Raises:
            ModelError: the model cannot be loaded, or is not causal (one line naming it).
            ValueError: ``niter`` above 0, another ``sample_rate``, or a device the machine lacks.
        """
        from .pretrained import pretrained_table

        wiener = wiener_settings(wiener or WienerSettings(niter=0), wiener_options)
        label = "the bundled model" if name_or_path is None else f"model {str(name_or_path)!r}"
        check_wiener(wiener)  # before loading, which may download
        published = isinstance(name_or_path, str) and name_or_path in pretrained_table()
        if published and not Path(name_or_path).expanduser().exists():
            raise ModelError(f"{label} has bidirectional LSTMs, as every published Open-Unmix model, which read the "
                             f"signal back from its end; {CAUSAL_HINT}")
        separator = Separator.from_pretrained(name_or_path, targets, device, wiener, progress, precision)
        try:
            return cls(separator, sample_rate=sample_rate, causal_em=causal_em)
        except ModelError as exc:
            raise ModelError(f"{label}: {exc}") from None

    @property
    def latency(self) -> int:
        """Samples between a sample going in and coming out: ``n_fft - 1`` (4095, 92.9 ms at
        4096/44.1 kHz), the same for every sample whatever the block sizes. The last STFT frame
        that overlaps a sample may start at it: it is centred ``n_fft // 2`` samples later (the
        centre padding) and reaches ``n_fft - 1 - n_fft // 2`` samples further (the rest of the
        window). Samples elsewhere in the hop could come up to ``n_hop - 1`` samples sooner; a
        fixed latency waits for the worst case, so the hop does not enter it."""
        return self.separator.n_fft - 1

    @property
    def sample_rate(self) -> Union[int, float]:
        return self.separator.sample_rate

    @property
    def target_names(self) -> List[str]:
        """Names of the estimates, in the order of the targets axis of :meth:`process`."""
        return self.separator.target_names

    def reset(self) -> None:
        """Forget the stream so far: the next block starts a new one (the models are kept)."""
        self._channels = self._fixed_channels
        self._groups: Optional[List[_Group]] = None
        self._received = 0  # samples given to process
        self._emitted = 0  # samples returned
        self._frames = 0  # STFT frames computed
        # The input not framed yet: raw samples until the left reflect padding can be built, then the
        # padded signal (sample n at position n + n_fft // 2) from position ``_input_start``.
        self._input: Optional[Tensor] = None
        self._padded = False
        self._input_start = 0
        # Overlap-add sums of the estimates (nb_targets, nb_channels, n) and of the squared windows (n,),
        # from padded position ``_ola_start``.
        self._ola: Optional[Tensor] = None
        self._norm: Optional[Tensor] = None
        self._ola_start = 0
        self._flushed = False

    def process(self, block: Tensor) -> Tensor:
        """Feed the next samples of the stream.

        Args:
            block: ``(nb_channels, n)`` float tensor on the models' device, any ``n`` (0 too),
                at :attr:`sample_rate`; the same channel count for the whole stream.

        Returns:
            ``(nb_targets, nb_channels, m)`` in the separator's dtype, targets in the order of
            :attr:`target_names`: the samples that follow those returned before, up to
            :attr:`latency` samples before the end of the input so far.

        Raises:
            TypeError: not a float tensor, or a separator in float16 on the CPU (whose FFT lacks it).
            ValueError: a wrong shape, another channel count than earlier blocks, another
                device than the models', NaN or infinite samples.
            RuntimeError: the stream was flushed (:meth:`reset` starts a new one).
        """
        if self._flushed:
            raise RuntimeError("this stream was flushed; call reset() to start a new one")
        block = self._checked_block(block)
        with torch.no_grad():
            self._received += block.shape[-1]
            self._append(block)
            self._advance()
            return self._emit(max(0, self._received - self.latency))

    def flush(self) -> Tensor:
        """End the stream and return its last samples (all of them for a stream shorter than :attr:`latency`).

        Returns:
            ``(nb_targets, nb_channels, m)``; ``m`` is 0 for an empty stream and for a second call.
        """
        if self._flushed or not self._received:
            self._flushed = True
            return self._empty()
        self._flushed = True
        n_fft, length = self.separator.n_fft, self._received
        with torch.no_grad():
            if length < n_fft:
                # The separator zero-pads inputs shorter than a frame (and crops the estimates).
                self._append(self._input.new_zeros((self._input.shape[0], n_fft - length)))
            half = n_fft // 2
            # The STFT's reflect padding at the end.
            self._input = torch.cat([self._input, self._input[:, -(half + 1):-1].flip(-1)], dim=-1)
            self._advance()
            return self._emit(length)

    def stream(self, blocks: Iterable[Tensor]) -> Iterator[Tensor]:
        """Separate ``blocks`` as a new stream: yields :meth:`process` of each, then :meth:`flush`.

        Example:
            >>> torch.cat(list(streamer.stream(audio.split(512, dim=-1))), dim=-1)   # (nb_targets, *audio.shape)
        """
        self.reset()
        for block in blocks:
            yield self.process(block)
        yield self.flush()

    # ---------------------------------------------------------------- the steps

    def _checked_block(self, block) -> Tensor:
        """``block`` in the separator's dtype, or a one-line error saying what to pass instead."""
        if not isinstance(block, Tensor):
            raise TypeError(f"block must be a torch.Tensor (nb_channels, n), got {type(block).__name__}; audio "
                            "libraries give (n, nb_channels) arrays: pass torch.from_numpy(array.T)")
        if block.dim() != 2 or block.shape[0] == 0:
            raise ValueError(f"block must be (nb_channels, n) with at least one channel, got {tuple(block.shape)}")
        # The separator's own checks (float samples, the models' device, a dtype the FFT has, finite samples).
        block = self.separator._checked_input(block[None])[0]
        if self._channels is not None and block.shape[0] != self._channels:
            raise ValueError(f"block has {block.shape[0]} channel(s) but this stream has {self._channels}; "
                             "call reset() to start a stream with another channel count")
        if self._groups is None:
            self._start(block.shape[0], block.device)
        return block

    def _start(self, nb_channels: int, device) -> None:
        sep = self.separator
        self._channels = nb_channels
        self._groups = _channel_groups(nb_channels, sep.nb_channels, len(sep.target_models), device)
        self._window = sep.stft.window.to(device)
        self._window_sq = self._window.square()

    def _empty(self) -> Tensor:
        channels = self._channels or self.separator.nb_channels
        window = self.separator.stft.window
        return window.new_zeros((len(self.target_names), channels, 0))

    def _append(self, samples: Tensor) -> None:
        """Add input samples; build the left reflect padding as soon as the samples it mirrors are in."""
        # A copy of the first block: callers refill one buffer block after block (an audio callback's).
        self._input = samples.clone() if self._input is None else torch.cat([self._input, samples], dim=-1)
        half = self.separator.n_fft // 2
        if not self._padded and self._input.shape[-1] > half:
            self._input = torch.cat([self._input[:, 1:half + 1].flip(-1), self._input], dim=-1)
            self._padded = True

    def _advance(self) -> None:
        """Separate every STFT frame the input now covers, and overlap-add its estimates."""
        if not self._padded:
            return
        n_fft, hop = self.separator.n_fft, self.separator.n_hop
        end = self._input_start + self._input.shape[-1]
        first = self._frames * hop - self._input_start  # where the next frame starts in ``_input``
        if end - self._input_start - first < n_fft:
            return
        count = (end - self._input_start - first - n_fft) // hop + 1
        frames = self._input[:, first:first + (count - 1) * hop + n_fft].unfold(-1, n_fft, hop)
        mix_stft = torch.fft.rfft(frames * self._window, dim=-1).transpose(-1, -2)  # (nb_channels, nb_bins, count)
        self._overlap_add(self._separate_frames(mix_stft))
        # Keep what the next frame needs, and the last n_fft // 2 + 1 samples the end's reflection mirrors.
        keep = min(self._frames * hop, end - (n_fft // 2 + 1))
        self._input = self._input[:, keep - self._input_start:]
        self._input_start = keep

    def _separate_frames(self, mix_stft: Tensor) -> Tensor:
        """The targets' complex estimates ``(nb_targets, nb_channels, nb_bins, nb_frames)`` of new frames
        of the mixture's STFT ``(nb_channels, nb_bins, nb_frames)``, as :meth:`Separator._separate` makes them."""
        sep = self.separator
        out = mix_stft.new_empty((len(self.target_names),) + tuple(mix_stft.shape))
        # EM needs two sources: with one target and no residual, a hidden residual (as offline).
        residual = sep.residual is not None or (self.causal_em > 0 and len(sep.target_models) == 1)
        for group in self._groups:
            x = mix_stft[group.channels]  # (nb_samples, channels, nb_bins, nb_frames)
            mag = sep.complexnorm(x)
            if group.downmix:
                mag = mag.expand(-1, 2, -1, -1)
            estimates = self._estimate(group, mag.permute(3, 0, 1, 2))
            for i, channels in enumerate(group.channels):
                spec = torch.stack([e[:, i] for e in estimates], dim=1)  # (nb_frames, nb_targets, channels, nb_bins)
                if group.downmix:
                    spec = spec.mean(dim=2, keepdim=True)
                # Without EM every bin is filtered on its own: one block of bins, the fewest operations.
                y = filtering.wiener_fast(spec.permute(1, 2, 3, 0), x[i], iterations=0, softmask=sep.softmask,
                                          residual=residual, block_bins=x.shape[-2])
                out[:, channels] = causal_em(y, x[i], self.causal_em, group.em[i], self._forget)[:out.shape[0]]
        return out

    def _estimate(self, group: _Group, mix: Tensor) -> List[Tensor]:
        """Every target model's frame-major estimate of new frames ``mix``, carrying each one's LSTM state.

        One model after the other: a block's few frames are matrix-vector products bound by reading
        the weights, which running the models side by side in lanes (as offline) did not speed up on
        two cores and made a call in a hundred twice as slow (docs/benchmarks.md, Streaming)."""
        sep = self.separator
        estimates = []
        for j, model in enumerate(sep.target_models.values()):
            autocast = sep.precision == "bf16" and model.product_dtype != torch.bfloat16
            estimate, group.states[j] = _causal_step(model, mix, group.states[j], autocast)
            estimates.append(estimate)
        return estimates

    def _overlap_add(self, estimates: Tensor) -> None:
        """Add the windowed inverse FFTs of the new frames' estimates (and their squared windows)."""
        n_fft, hop = self.separator.n_fft, self.separator.n_hop
        count = estimates.shape[-1]
        frames = torch.fft.irfft(estimates.transpose(-1, -2), n=n_fft).mul_(self._window)  # (..., count, n_fft)
        if self._ola is None:
            self._ola = frames.new_zeros(frames.shape[:2] + (0,))
            self._norm = frames.new_zeros((0,))
        self._grow((self._frames + count - 1) * hop + n_fft - (self._ola_start + self._ola.shape[-1]))
        for k in range(count):
            start = (self._frames + k) * hop - self._ola_start
            self._ola[..., start:start + n_fft] += frames[..., k, :]
            self._norm[start:start + n_fft] += self._window_sq
        self._frames += count

    def _grow(self, samples: int) -> None:
        """Extend the overlap-add buffers by ``samples`` zeros (none for 0 or fewer)."""
        if samples > 0:
            self._ola = torch.cat([self._ola, self._ola.new_zeros(self._ola.shape[:2] + (samples,))], dim=-1)
            self._norm = torch.cat([self._norm, self._norm.new_zeros((samples,))])

    def _emit(self, until: int) -> Tensor:
        """Output samples from the last one returned up to ``until`` (exclusive), normalised by the
        summed squared windows (all the frames that overlap them are in)."""
        if until <= self._emitted:
            return self._empty()
        half = self.separator.n_fft // 2
        a, b = self._emitted + half - self._ola_start, until + half - self._ola_start
        self._grow(b - self._ola.shape[-1])  # a hop near n_fft leaves the last samples uncovered: zeros, as offline
        out = self._ola[..., a:b] / self._norm[a:b].clamp_min(1e-11)
        self._ola, self._norm = self._ola[..., b:], self._norm[b:]
        self._ola_start += b
        self._emitted = until
        return out
