"""--preload: the data decoded once and held on the training device gives the same items and the same run."""
import json

import pytest
import torch

from helpers import MUSDB_7S, RATE, require, track_folders, write
from openunmix_like import data
from openunmix_like.augment import Compose
from openunmix_like.training import TrainConfig, run


def layouts(root):
    """One small training set of each folder layout, with random draws and augmentations."""
    track_folders(root / "fix", tracks=3, seconds=1.5)
    for split in ("train", "valid"):
        for t in range(2):
            write(root / "aligned" / split / f"{t}" / "mixture.wav", 1.5, t)
            write(root / "aligned" / split / f"{t}" / "vocals.wav", 1.5, t + 10)
            write(root / "src" / split / "speech" / f"s{t}.wav", 1.5, t)
            write(root / "src" / split / "noise" / f"n{t}.wav", 1.5, t + 10)
        write(root / "var" / split / "a" / "vocals.wav", 1.5, 1)
        write(root / "var" / split / "a" / "piano.wav", 1.5, 2)
        write(root / "var" / split / "b" / "organ.wav", 1.5, 4)
    kw = dict(seq_duration=0.5, sample_rate=RATE, nb_channels=2, seed=7,
              source_augmentations=Compose.from_names(["gain", "channelswap"]))
    return {
        "aligned": lambda: data.AlignedDataset(root / "aligned", "train", "mixture.wav", "vocals.wav",
                                               **dict(kw, source_augmentations=None)),
        "sourcefolder": lambda: data.SourceFolderDataset(root / "src", "train", "speech", ["noise"], nb_samples=6,
                                                         **kw),
        "trackfolder_fix": lambda: data.FixedSourcesTrackFolderDataset(
            root / "fix", "train", "vocals.wav", ["drums.wav", "bass.wav", "other.wav"], random_track_mix=True,
            **kw),
        "trackfolder_var": lambda: data.VariableSourcesTrackFolderDataset(
            root / "var", "train", "vocals.wav", silence_missing_targets=True, random_interferer_mix=True, **kw),
        "valid (whole tracks)": lambda: data.FixedSourcesTrackFolderDataset(
            root / "fix", "valid", "vocals.wav", ["drums.wav"], **dict(kw, seq_duration=None)),
    }


def same_items(a, b, epochs=(1, 2)):
    for epoch in epochs:
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(a)):
            (xa, ya), (xb, yb) = a[i], b[i]
            assert torch.equal(xa, xb) and torch.equal(ya, yb), f"epoch {epoch}, item {i}"


@pytest.mark.parametrize("layout", ["aligned", "sourcefolder", "trackfolder_fix", "trackfolder_var",
                                    "valid (whole tracks)"])
def test_preloaded_items_equal_items_read_from_the_files(tmp_path, layout):
    make = layouts(tmp_path)[layout]
    files, memory = make(), make()
    memory.preload("cpu")
    assert memory.preloaded is not None and len(memory.preloaded.audio) == len(files.audio_files())
    assert memory.preload_bytes() == sum(t.numel() * 4 for t in memory.preloaded.audio.values())
    same_items(files, memory)


def test_a_track_folder_linked_twice_is_decoded_and_held_once(tmp_path, monkeypatch):
    make = layouts(tmp_path)["trackfolder_fix"]
    train = tmp_path / "fix" / "train"
    first = sorted(train.iterdir())[0]
    (train / f"{first.name}-2").symlink_to(first.name, target_is_directory=True)
    files, memory = make(), make()
    decoded = []
    read = data.read_excerpt
    monkeypatch.setattr(data, "read_excerpt", lambda f, *a: decoded.append(f.path) or read(f, *a))
    memory.preload("cpu")
    assert len(memory.preloaded.audio) == len(files.audio_files()) == 16  # every path drawn from: 4 folders
    assert len(decoded) == len({p.resolve() for p in decoded}) == 12  # 3 tracks x 4 stems, the link not again
    held = {id(t): t for t in memory.preloaded.audio.values()}.values()
    assert memory.preload_bytes() == sum(t.numel() * 4 for t in held)
    same_items(files, memory)


@pytest.mark.slow
@pytest.mark.musdb
def test_preloaded_musdb_equals_the_decoded_cache(tmp_path):
    root = require(MUSDB_7S).parent
    kw = dict(root=root, target="vocals", split="train", samples_per_track=1, random_track_mix=True,
              seq_duration=2.0, sample_rate=44100, nb_channels=2, seed=3)
    files, memory = data.MUSDBDataset(**kw), data.MUSDBDataset(**kw)
    memory.preload("cpu")
    same_items(files, memory, epochs=(1,))


def test_a_preloaded_run_is_the_same_run(tmp_path):
    root = track_folders(tmp_path / "data", tracks=4, seconds=1.0)
    common = dict(root=str(root), dataset="trackfolder_fix", target_file="vocals.wav",
                  interferer_files=["drums.wav", "bass.wav"], random_track_mix=True, hidden_size=8, nfft=512,
                  nhop=128, batch_size=2, seq_dur=0.5, sample_rate=RATE, epochs=2, quiet=True)
    off = run(TrainConfig(output=str(tmp_path / "off"), preload="off", **common))
    on = run(TrainConfig(output=str(tmp_path / "on"), preload="on", **common))
    assert on.train_loss == off.train_loss and on.valid_loss == off.valid_loss
    assert json.loads((tmp_path / "on" / "vocals.json").read_text())["args"]["preload"] == "on"
    auto = run(TrainConfig(output=str(tmp_path / "auto"), preload="auto", **dict(common, epochs=1)))
    assert auto.train_loss == off.train_loss[:1]
    assert json.loads((tmp_path / "auto" / "vocals.json").read_text())["args"]["preload"] == "off"  # CPU


def test_precision_bf16_trains_under_autocast_and_fp16_needs_cuda(tmp_path, monkeypatch):
    from openunmix_like.errors import OpenUnmixLikeError
    from openunmix_like.training import loop

    root = track_folders(tmp_path / "data", tracks=2, seconds=1.0)
    common = dict(root=str(root), dataset="trackfolder_fix", target_file="vocals.wav",
                  interferer_files=["drums.wav"], hidden_size=8, nfft=512, nhop=128, batch_size=2, seq_dur=0.5,
                  sample_rate=RATE, epochs=1, quiet=True)
    seen = []
    step = loop.step

    def spy(ctx, x, y, mix_stft=None):
        seen.append(ctx.autocast)
        return step(ctx, x, y, mix_stft=mix_stft)

    monkeypatch.setattr(loop, "step", spy)
    fp32 = run(TrainConfig(output=str(tmp_path / "fp32"), **common))
    bf16 = run(TrainConfig(output=str(tmp_path / "bf16"), precision="bf16", **common))
    assert seen == [None, torch.bfloat16]
    assert bf16.train_loss != fp32.train_loss  # bf16 arithmetic, close to fp32's
    assert abs(bf16.train_loss[0] - fp32.train_loss[0]) < 0.05 * fp32.train_loss[0]
    assert json.loads((tmp_path / "fp32" / "vocals.json").read_text())["args"]["precision"] == "fp32"  # auto, CPU
    with pytest.raises(OpenUnmixLikeError, match="fp16 needs CUDA"):
        run(TrainConfig(output=str(tmp_path / "fp16"), precision="fp16", **common))
