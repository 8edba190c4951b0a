"""The oracles a block of frames at a time: the whole-track definitions' estimates, in memory that does not
grow with the track beyond the estimates themselves."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import openunmix_like.evaluate as ev
from openunmix_like.errors import OpenUnmixLikeError
from openunmix_like.filtering import expectation_maximization


def _track(seconds: float, rate: int = 8000, seed: int = 0) -> ev.Track:
    """Three stereo sources with different directions (the oracle Wiener filter's covariances are then
    well conditioned) and a target, ``accompaniment``, made of two of them."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    sources = {name: torch.from_numpy(rng.standard_normal((2, n)).astype(np.float32) * scale)
               for name, scale in (("vocals", 0.3), ("drums", 0.2), ("bass", 0.4))}
    sources["bass"][1] *= 0.1
    mixture = sum(sources.values())
    references = {**sources, "accompaniment": sources["drums"] + sources["bass"]}
    return ev.Track("t", rate, mixture, references, sources=sources,
                    components={"accompaniment": ("drums", "bass")})


def _whole_track(method: str, track: ev.Track, targets, n_fft: int, n_hop: int, eps: float = 1e-10):
    """The definitions over the whole track's STFT at once (torch.stft and torch.istft)."""
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    n = track.mixture.shape[-1]

    def stft(audio):
        return torch.stft(audio.double(), n_fft, n_hop, window=window, center=True, pad_mode="reflect",
                          return_complex=True)

    def istft(spec):
        return torch.istft(spec, n_fft, n_hop, window=window, center=True, length=n).float()

    x = stft(track.mixture)
    spectra = {k: stft(a) for k, a in track.sources.items()}
    made_of = {t: track.components.get(t, (t,)) for t in targets}
    if method == "mwf":
        names = list(spectra)
        y = torch.stack([spectra[k] for k in names]).permute(3, 2, 1, 0)
        filtered = expectation_maximization(y, x.permute(2, 1, 0), iterations=1, eps=eps).permute(3, 2, 1, 0)
        return {t: istft(filtered[[names.index(k) for k in made_of[t]]].sum(dim=0)) for t in targets}
    alpha = 1.0 if method.endswith("1") else 2.0
    if method.startswith("irm"):
        total = sum(s.abs() ** alpha for s in spectra.values()) + eps
    else:
        total = x.abs() ** alpha + eps
    out = {}
    for t in targets:
        masks = [spectra[k].abs() ** alpha / total for k in made_of[t]]
        if method.startswith("ibm"):
            masks = [(m >= 0.5).double() for m in masks]
        out[t] = istft(sum(m * x for m in masks))
    return out


@pytest.mark.parametrize("method", ["irm1", "irm2", "ibm1", "ibm2", "mwf"])
@pytest.mark.parametrize("samples, n_fft, n_hop, block", [
    (8000, 512, 128, 3),     # many blocks; frames a multiple of the block (63 = 21 x 3)
    (8123, 512, 128, 7),     # a last block shorter than the others, a length off the hop
    (7001, 1000, 300, 4),    # a window that is no multiple of the hop
    (8000, 512, 128, 1000),  # one block
    (300, 512, 128, 2),      # shorter than the window (but longer than its half)
])
def test_the_blocks_give_the_whole_tracks_estimates(monkeypatch, method, samples, n_fft, n_hop, block):
    monkeypatch.setattr(ev._Frames, "block", block)
    track = _track(samples / 8000)
    targets = ["vocals", "accompaniment", "bass"]
    got = ev.oracle(method, track, targets, n_fft, n_hop)
    expected = _whole_track(method, track, targets, n_fft, n_hop)
    for t in targets:
        assert got[t].dtype == torch.float32 and got[t].shape == track.mixture.shape
        assert torch.allclose(got[t], expected[t], rtol=0, atol=1e-6 * expected[t].abs().max()), (t, method)


def test_a_track_no_longer_than_half_a_window_is_named():
    track = _track(256 / 8000)
    with pytest.raises(OpenUnmixLikeError, match=r"^t: 256 samples is too short for an oracle with --nfft 512 "
                                                 r".*use a smaller --nfft$"):
        ev.oracle("irm2", track, ["vocals"], 512, 128)


CHILD = textwrap.dedent("""
    import ctypes, gc, json, os, sys
    libc = ctypes.CDLL("libc.so.6")
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from helpers import make_tracks
    import openunmix_like.evaluate as ev

    grown = []
    for seconds in (20.0, 80.0):
        root = make_tracks(Path(sys.argv[1]) / str(seconds), n=1, seconds=seconds, rate=44100)
        track = next(ev.folder_tracks(root))
        gc.collect(); libc.malloc_trim(0)  # what the last run freed goes back to the system first
        before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # resident now
        # The peak so far (importing torch, making the track) is not the oracle's: start the peak again from now.
        Path("/proc/self/clear_refs").write_text("5")
        out = ev.oracle(sys.argv[2], track, list(track.references))
        peak = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024
        grown.append(peak - before - sum(o.numel() * 4 for o in out.values()))
        del track, out
    print(json.dumps((grown[1] - grown[0]) / 2**20))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads the resident sizes from Linux's /proc")
@pytest.mark.parametrize("method", ["irm2", "ibm1", "mwf"])
def test_an_oracles_memory_beyond_its_estimates_does_not_grow_with_the_track(tmp_path, method):
    # Whole-track STFTs grew by about 15 MB (irm2) to 40 MB (mwf) a second of this three-source track: 60 s more
    # took 0.9 to 2.4 GB more. A block at a time, the memory beyond the estimates is the same at 20 s and 80 s.
    # glibc's malloc raises its mmap threshold as big blocks are freed, after which blocks come from a heap that
    # keeps its freed pages: the peaks then swung by up to 130 MB between identical runs (one CI run read 41 MB).
    # A fixed threshold gives every big block back when freed; ten runs of each method then read -11 to -8 MB,
    # and one block the size of the track (_Frames.block = 10**6) reads 1,041 (irm2, ibm1) and 2,331 MB (mwf).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "data"), method, str(Path(__file__).parent)],
                          capture_output=True, text=True, check=True, env=env)
    assert json.loads(done.stdout) < 40, done.stdout
