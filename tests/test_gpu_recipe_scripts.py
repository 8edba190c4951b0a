"""scripts/pack_corpus.py and scripts/train_default_gpu.py: the corpus round trip through Opus parts, the
split into parts and calls, and the width the recipe trains at."""
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import NAMES, write

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import pack_corpus  # noqa: E402
import train_default_gpu  # noqa: E402


def pack_tracks(tmp_path: Path, names, seconds=1.5, rate=44100) -> list:
    """Encoded tracks (pack_corpus.encode_track) of generated stems, train split."""
    tracks = []
    for k, name in enumerate(names):
        folder = tmp_path / "src" / name
        for j, stem in enumerate(NAMES):
            write(folder / f"{stem}.wav", seconds, seed=10 * k + j, rate=rate)
        tracks.append(pack_corpus.encode_track("train", name, folder, dict.fromkeys(NAMES, 64), tmp_path / "cache"))
    return tracks


@pytest.mark.slow
def test_parts_decode_back_to_the_original_length_and_rate_and_link_the_repeats(tmp_path):
    tracks = pack_tracks(tmp_path, ["song-a", "musdb-b", "song-c"])
    parts = pack_corpus.split_evenly(tracks, 2)
    for k, part in enumerate(parts, start=1):
        pack_corpus.write_part(tmp_path / f"corpus-part{k}.tar", part, k, len(parts))
    dest = tmp_path / "root"
    # One part at a time, as two device calls would: the root knows which parts it holds.
    for k in (1, 2):
        done = subprocess.run([sys.executable, str(REPO / "scripts" / "pack_corpus.py"), "unpack", str(dest),
                               str(tmp_path / f"corpus-part{k}.tar"), "--jobs", "2", "--musdb-repeat", "2"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert pack_corpus.parts_unpacked(dest) == (set(range(1, k + 1)), 2)
    for name in ("song-a", "musdb-b", "song-c"):
        for stem in NAMES:
            original, rate = sf.read(tmp_path / "src" / name / f"{stem}.wav", dtype="float64")
            decoded, decoded_rate = sf.read(dest / "train" / name / f"{stem}.wav", dtype="float64")
            assert decoded_rate == rate == 44100 and decoded.shape == original.shape  # back from Opus's 48 kHz
            assert sf.info(str(dest / "train" / name / f"{stem}.wav")).subtype == "FLOAT"
            error = np.square(decoded - original).sum() / np.square(original).sum()
            assert 10 * np.log10(1 / error) > 10  # aligned and close (a shifted copy scores about 0 dB)
    assert (dest / "train" / "musdb-b-2").is_symlink() and not (dest / "train" / "song-a-2").exists()


@pytest.mark.slow
def test_a_damaged_part_is_refused_naming_the_file(tmp_path):
    tracks = pack_tracks(tmp_path, ["song-a"], seconds=0.5)
    entry, data = tracks[0][0]
    tracks[0][0] = (entry, data[:-100] + bytes(100))  # the sha256 in the manifest is the original's
    pack_corpus.write_part(tmp_path / "corpus-part1.tar", tracks[0:1], 1, 1)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "pack_corpus.py"), "unpack", str(tmp_path / "r"),
                           str(tmp_path / "corpus-part1.tar"), "--jobs", "1"], capture_output=True, text=True)
    assert done.returncode != 0 and "train/song-a/vocals.opus: sha256 mismatch" in done.stderr
    assert pack_corpus.parts_unpacked(tmp_path / "r") == (set(), None)


def fake_track(name: str, sizes) -> list:
    return [({"track": name}, bytes(size)) for size in sizes]


def test_parts_are_whole_tracks_in_order_and_about_equal():
    tracks = [fake_track(f"t{k}", [1000 * (1 + k % 3)] * 4) for k in range(30)]
    parts = pack_corpus.split_evenly(tracks, 4)
    assert [t for part in parts for t in part] == tracks
    sizes = [sum(len(d) + 1024 for t in part for _, d in t) for part in parts]
    assert len(parts) == 4 and max(sizes) - min(sizes) <= 2 * max(sum(len(d) + 1024 for _, d in t) for t in tracks)
    bounded = pack_corpus.split_into_parts(tracks, 20_000)
    assert all(sum(len(d) + 1024 for t in part for _, d in t) <= 20_000 for part in bounded)


def test_calls_fill_up_to_the_limit_beside_the_tree(tmp_path):
    paths = []
    for name, size in [("whl", 3), ("p1", 20), ("p2", 20), ("p3", 20), ("init", 40)]:
        paths.append(tmp_path / name)
        paths[-1].write_bytes(bytes(size * 1024))  # KiB standing for MiB
    calls = train_default_gpu.plan_calls(paths, tree=20 * 1024, limit=64 * 1024)
    assert [[p.name for p in call] for call in calls] == [["whl", "p1", "p2"], ["p3"], ["init"]]
    with pytest.raises(SystemExit, match="does not fit beside the working tree"):
        train_default_gpu.plan_calls(paths, tree=30 * 1024, limit=64 * 1024)


def test_the_recipe_trains_at_the_widest_size_whose_fp16_weights_fit_the_package():
    size = train_default_gpu.widest_hidden_size()
    limit = train_default_gpu.SIZE_LIMIT - train_default_gpu.JSON_ROOM
    assert size == 362 and 4 * train_default_gpu.fp16_bytes(size) <= limit < 4 * train_default_gpu.fp16_bytes(size + 2)
    assert train_default_gpu.fp16_bytes(256) == 2 * 3_152_808  # the bundled vocals model's floats, halved


def test_a_session_folder_is_read_back_as_a_model_and_logs(tmp_path, model_dir):
    files = tmp_path / "files"
    files.mkdir()
    source = model_dir("m")
    for target in train_default_gpu.TARGETS:
        (files / f"{target}.safetensors").write_bytes((source / f"{target}.safetensors").read_bytes())
    with tarfile.open(files / "meta.tar.gz", "w:gz") as tar:
        for path in source.glob("*.json"):
            tar.add(path, arcname=f"model/{path.name}")
        settings = tmp_path / "settings.json"
        settings.write_text(json.dumps({"throughput": {}}))
        tar.add(settings, arcname="logs/settings.json")
    model = train_default_gpu.store_session(files, tmp_path / "session")
    kept = sorted(p.name for p in source.iterdir() if p.suffix in (".json", ".safetensors"))
    assert sorted(p.name for p in model.iterdir()) == kept
    assert (tmp_path / "session" / "logs" / "settings.json").is_file()
