#!/usr/bin/env python
"""The default model's training corpus as compact Ogg Opus parts that travel to a GPU machine, and back to wav there.

    python scripts/pack_corpus.py pack SYNTH_ROOT MUSDB_ROOT OUT [--bitrate KBPS] [--stem-bitrate STEM=KBPS]
                                       [--part-mb MB | --parts N] [--jobs N]
    python scripts/pack_corpus.py unpack DEST PART.tar [PART.tar ...] [--jobs N] [--musdb-repeat R]
    python scripts/pack_corpus.py check ROOT DECODED [--jobs N]

``pack`` encodes the stems (vocals, drums, bass, other; no mixture:
trackfolder_fix mixes the stems itself) of the generated ``train/`` songs and,
unless ``--no-synth-valid``, the generated ``valid/`` songs of an ``umx-synth``
output, plus the 80 training and 14 validation excerpts of the MUSDB18
7-second preview (decoded once into the package cache, as ``umx-train
--dataset musdb`` does), with ffmpeg's libopus (VBR, ``--bitrate`` kbit/s per
stereo stem, or per stem with ``--stem-bitrate``; the encoded files are kept in
``OUT/opus-<bitrate>k/``, so packing again into other parts does not encode
again). It writes them as uncompressed tar files ``OUT/corpus-partK.tar`` of at
most ``--part-mb`` MB each (or ``--parts`` of about equal size), whole tracks
per part, each with a ``manifest.json``: its number and the number of parts,
and per file its split, track, stem, bitrate, frame count, rate and sha256.
Names: generated songs keep theirs, MUSDB18 excerpts become ``musdb-<name>``,
as in scripts/prepare_default_corpus.py.

``unpack`` (on the GPU machine: soundfile, numpy, scipy and this package, no
ffmpeg) checks every file against its hash, decodes the parts in ``--jobs``
processes into ``DEST/{train,valid}/<track>/<stem>.wav`` (float32 wav, so no
clipping) and links every MUSDB18 training excerpt ``--musdb-repeat`` times
(``musdb-<name>``, ``musdb-<name>-2``, ...) and every generated training song
``--synth-repeat`` times: the root ``umx-train --dataset trackfolder_fix``
reads. Each part, once decoded, leaves ``DEST/.part-K.json``, so that a later
``unpack`` of the remaining parts (another device call) and the training step
can check that all are there. libsndfile decodes Opus at 48 kHz whatever the
input rate was; each stem is resampled back to its original rate with the
package's resampler (:func:`openunmix_like.audio.resample`) and cut to its
original frame count.

``check`` measures the codec's damage: for every stem of DECODED (an unpacked
root) against the same stem under ROOT (a lossless root with the same track
names, e.g. one made by scripts/prepare_default_corpus.py), the waveform SDR
(energy of the original over that of the difference; median and worst per
group and stem), and per frequency band the same ratio for the STFT magnitudes
the models train on, pooled over the stems, with the decoded band's energy
over the original's.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

STEMS = ("vocals", "drums", "bass", "other")
BANDS_HZ = (0, 4000, 8000, 12000, 16000, 20000, 22050)


# ---------------------------------------------------------------- pack


def tracks_to_pack(synth_root: Path, musdb_root: str, synth_valid: bool, limit: int = 0) -> list:
    """``(split, name, folder)`` of every track (``limit``: at most that many per split and source):
    validation first, then training."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prepare_default_corpus import musdb_folders, songs

    musdb = musdb_folders(musdb_root)
    found = []
    for split in ("valid", "train"):
        groups = []
        if split == "train" or synth_valid:
            groups.append([(split, d.name, d) for d in songs(str(synth_root), split)])
        groups.append([(split, f"musdb-{d.name}", d) for d in musdb[split]])
        for group in groups:
            found += group[:limit] if limit else group
    return found


def encode(wav: Path, out: Path, bitrate: int) -> bytes:
    """One stem as Ogg Opus (ffmpeg, libopus VBR), kept at ``out`` so that a later pack with the same
    bitrate (other part sizes) reuses it; returns its bytes."""
    from openunmix_like.fileio import atomic_path

    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-map_metadata", "-1",
                            "-c:a", "libopus", "-b:a", f"{bitrate}k", "-vbr", "on", "-f", "ogg", str(tmp)],
                           check=True)
    return out.read_bytes()


def encode_track(split: str, name: str, folder: Path, bitrates: dict, out: Path) -> list:
    """``(manifest entry, opus bytes)`` for each stem of one track (``bitrates``: per stem)."""
    import soundfile as sf

    entries = []
    for stem in STEMS:
        info = sf.info(str(folder / f"{stem}.wav"))
        cached = out / f"opus-{bitrates[stem]}k" / split / name / f"{stem}.opus"
        data = encode(folder / f"{stem}.wav", cached, bitrates[stem])
        entries.append(({"path": f"{split}/{name}/{stem}.opus", "split": split, "track": name, "stem": stem,
                         "bitrate": bitrates[stem], "frames": int(info.frames), "sample_rate": int(info.samplerate),
                         "channels": int(info.channels), "sha256": hashlib.sha256(data).hexdigest()}, data))
    return entries


def stem_bitrates(default: int, given: list) -> dict:
    """``--bitrate`` for every stem but those ``--stem-bitrate NAME=KBPS`` names."""
    bitrates = dict.fromkeys(STEMS, default)
    for item in given:
        stem, _, value = item.partition("=")
        if stem not in STEMS or not value.isdigit():
            raise SystemExit(f"--stem-bitrate {item}: give STEM=KBPS with STEM one of {', '.join(STEMS)}")
        bitrates[stem] = int(value)
    return bitrates


def split_into_parts(tracks: list, limit: int) -> list:
    """Consecutive tracks (each a list of ``(entry, bytes)``) grouped into parts of at most ``limit`` bytes."""
    parts, current, size = [], [], 0
    for track in tracks:
        track_size = sum(len(data) + 1024 for _, data in track)  # a tar header and padding per file
        if track_size > limit:
            raise SystemExit(f"{track[0][0]['track']}: {track_size / 1e6:.1f} MB, over --part-mb on its own")
        if current and size + track_size > limit:
            parts.append(current)
            current, size = [], 0
        current.append(track)
        size += track_size
    return parts + ([current] if current else [])


def split_evenly(tracks: list, count: int) -> list:
    """Consecutive tracks grouped into ``count`` parts of about equal size (a track goes to the part
    its middle byte falls in)."""
    sizes = [sum(len(data) + 1024 for _, data in track) for track in tracks]
    share, before, parts = sum(sizes) / count, 0, [[] for _ in range(count)]
    for track, size in zip(tracks, sizes):
        parts[min(count - 1, int((before + size / 2) / share))].append(track)
        before += size
    return [part for part in parts if part]


def write_part(path: Path, tracks: list, part: int, parts: int) -> None:
    from openunmix_like.fileio import atomic_path

    entries = [entry for track in tracks for entry, _ in track]
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        manifest = {"part": part, "parts": parts, "files": entries}
        add_member(tar, "manifest.json", json.dumps(manifest, indent=1).encode())
        for track in tracks:
            for entry, data in track:
                add_member(tar, entry["path"], data)


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def pack(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("corpus-part*.tar"):
        old.unlink()
    bitrates = stem_bitrates(args.bitrate, args.stem_bitrate)
    tracks = tracks_to_pack(Path(args.synth_root), args.musdb_root, not args.no_synth_valid, args.limit)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # each encode is an ffmpeg process
        encoded = list(pool.map(lambda t: encode_track(*t, bitrates, out), tracks))
    parts = split_evenly(encoded, args.parts) if args.parts else split_into_parts(encoded, int(args.part_mb * 1e6))
    for k, part in enumerate(parts, start=1):
        write_part(out / f"corpus-part{k}.tar", part, k, len(parts))
    seconds = sum(e["frames"] / e["sample_rate"] for t in encoded for e, _ in t)
    opus = sum(len(d) for t in encoded for _, d in t)
    sizes = ", ".join(f"{(out / f'corpus-part{k}.tar').stat().st_size / 1e6:.1f}" for k in range(1, len(parts) + 1))
    per_stem = ", ".join(f"{stem} {sum(len(d) for t in encoded for e, d in t if e['stem'] == stem) / 1e6:.1f} MB "
                         f"({bitrates[stem]}k)" for stem in STEMS)
    print(f"{out}: {len(tracks)} tracks, {seconds / 3600:.2f} h of stereo stems, {opus / 1e6:.1f} MB of Opus "
          f"({8 * opus / seconds / 1000:.1f} kbit/s on average; {per_stem}), {len(parts)} parts of {sizes} MB; "
          f"encoded in {time.perf_counter() - start:.0f} s")


# ---------------------------------------------------------------- unpack


def decode(entry: dict, data: bytes, dest: str) -> float:
    """Decode one stem into ``dest``; returns its seconds."""
    import soundfile as sf
    import torch

    from openunmix_like.audio import resample
    from openunmix_like.fileio import atomic_path

    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise RuntimeError(f"{entry['path']}: sha256 mismatch; the part was damaged on the way, send it again")
    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    audio = resample(torch.from_numpy(np.ascontiguousarray(audio.T)), rate, entry["sample_rate"]).numpy()
    frames = entry["frames"]
    audio = np.pad(audio, ((0, 0), (0, max(0, frames - audio.shape[1]))))[:, :frames]
    path = Path(dest) / entry["split"] / entry["track"] / f"{entry['stem']}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio.T, entry["sample_rate"], subtype="FLOAT", format="WAV")
    return frames / entry["sample_rate"]


def read_part(path: Path) -> tuple:
    """A part's manifest, and ``(entry, bytes)`` of every file it lists."""
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        return manifest, [(entry, tar.extractfile(entry["path"]).read()) for entry in manifest["files"]]


def parts_unpacked(dest: Path) -> tuple:
    """``(parts unpacked into dest, parts the pack has)``; ``(set(), None)`` before the first."""
    marks = [json.loads(p.read_text()) for p in dest.glob(".part-*.json")]
    return {m["part"] for m in marks}, (marks[0]["parts"] if marks else None)


def link_repeats(dest: Path, prefix_repeats: dict) -> None:
    """Training tracks linked several times (``name-2``, ``name-3``, ...): weights within an epoch."""
    if not (dest / "train").is_dir():
        return
    for track in sorted(p for p in (dest / "train").iterdir() if p.is_dir() and not p.is_symlink()):
        repeats = prefix_repeats["musdb" if track.name.startswith("musdb-") else "synth"]
        for k in range(1, repeats):
            link = track.with_name(f"{track.name}-{k + 1}")
            if link.is_symlink():
                link.unlink()
            link.symlink_to(track.name, target_is_directory=True)


def unpack(args: argparse.Namespace) -> None:
    dest = Path(args.dest)
    start = time.perf_counter()
    seconds = 0.0
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        for part in args.parts:
            manifest, files = read_part(Path(part))
            jobs = [pool.submit(decode, entry, data, str(dest)) for entry, data in files]
            seconds += sum(job.result() for job in jobs)
            # Written once the part's stems are all there: what a later call checks before training.
            mark = {"part": manifest["part"], "parts": manifest["parts"], "file": Path(part).name}
            (dest / f".part-{manifest['part']}.json").write_text(json.dumps(mark))
    link_repeats(dest, {"musdb": args.musdb_repeat, "synth": args.synth_repeat})
    counts = {split: len([p for p in (dest / split).iterdir() if p.is_dir()]) for split in ("train", "valid")
              if (dest / split).is_dir()}
    done, total = parts_unpacked(dest)
    print(f"{dest}: {seconds / 3600:.2f} h of stems decoded in {time.perf_counter() - start:.1f} s "
          f"({args.jobs} processes); parts {sorted(done)} of {total} there; track folders {counts}")


# ---------------------------------------------------------------- check


def damage(original: str, decoded: str) -> dict:
    """Energies of one stem and of its coding error: of the waveform, and per band of
    :data:`BANDS_HZ` of the STFT magnitudes the models are trained on (n_fft 4096, hop 1024)."""
    import soundfile as sf
    import torch

    from openunmix_like.transforms import STFT

    ref, rate = sf.read(original, dtype="float32", always_2d=True)
    est, _ = sf.read(decoded, dtype="float32", always_2d=True)
    ref, est = torch.from_numpy(ref.T.copy()), torch.from_numpy(est.T[:, : ref.shape[0]].copy())
    stft = STFT(4096, 1024)
    with torch.no_grad():
        mag_ref, mag_est = stft(ref).abs().double(), stft(est).abs().double()
    freqs = torch.arange(mag_ref.shape[-2]) * rate / 4096
    bands = []
    for lo, hi in zip(BANDS_HZ[:-1], BANDS_HZ[1:]):
        keep = (freqs >= lo) & (freqs < hi)
        r, e = mag_ref[:, keep], mag_est[:, keep]
        bands.append((float(r.square().sum()), float((r - e).square().sum()), float(e.square().sum())))
    return {"signal": float(ref.double().square().sum()), "error": float((est - ref).double().square().sum()),
            "bands": bands}


def db(signal: float, error: float) -> float:
    return float(10 * np.log10((signal + 1e-20) / (error + 1e-20)))


def check(args: argparse.Namespace) -> None:
    root, decoded = Path(args.root), Path(args.decoded)
    pairs = [(split, track.name, stem) for split in ("train", "valid")
             for track in sorted(p for p in (decoded / split).iterdir() if p.is_dir() and not p.is_symlink())
             for stem in STEMS]
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(damage, [str(root / s / t / f"{stem}.wav") for s, t, stem in pairs],
                                [str(decoded / s / t / f"{stem}.wav") for s, t, stem in pairs]))
    print(f"{decoded} against {root}, stems whose original is silent left out. Waveform SDR: energy of the "
          "original over that of the difference (dB). Per band: the same for the STFT magnitudes (n_fft 4096), "
          "pooled over the stems, and in brackets the decoded band's energy over the original's (dB)")
    header = " | ".join(f"{lo / 1000:g}-{hi / 1000:g} kHz" for lo, hi in zip(BANDS_HZ[:-1], BANDS_HZ[1:]))
    print(f"| group | stems | waveform SDR median | worst | {header} |")
    print("|---|---|---|---|" + "---|" * (len(BANDS_HZ) - 1))
    for group in ("musdb", "synth"):
        for stem in STEMS:
            chosen = [r for (s, t, st), r in zip(pairs, results)
                      if st == stem and t.startswith("musdb-") == (group == "musdb") and r["signal"] > 1e-6]
            if not chosen:
                continue
            sdrs = [db(r["signal"], r["error"]) for r in chosen]
            cells = []
            for b in range(len(BANDS_HZ) - 1):
                signal, error, energy = (sum(r["bands"][b][i] for r in chosen) for i in range(3))
                cells.append(f"{db(signal, error):.1f} ({db(energy, signal):+.1f})")
            print(f"| {group} | {stem} ({len(chosen)}) | {np.median(sdrs):.1f} | {min(sdrs):.1f} | "
                  + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="encode a corpus into parts")
    a.add_argument("synth_root", help="umx-synth output (its train/ and valid/ songs)")
    a.add_argument("musdb_root", help="MUSDB18 7-second preview (../shared/data/musdb18-7s)")
    a.add_argument("out", help="folder for corpus-partK.tar")
    a.add_argument("--bitrate", type=int, default=48, help="Opus kbit/s per stereo stem, VBR (default 48)")
    a.add_argument("--stem-bitrate", action="append", default=[], metavar="STEM=KBPS",
                   help="another bitrate for one stem, e.g. vocals=96 (any number of times)")
    a.add_argument("--part-mb", type=float, default=40.0, help="largest part in MB of 10^6 bytes (default 40)")
    a.add_argument("--parts", type=int, default=0, help="this many parts of about equal size instead")
    a.add_argument("--no-synth-valid", action="store_true", help="leave the generated valid/ songs out")
    a.add_argument("--limit", type=int, default=0, help="at most N tracks per split and source (smoke tests)")
    a.add_argument("--jobs", type=int, default=os.cpu_count(), help="encoders at once (default: every core)")
    a = sub.add_parser("unpack", help="decode parts into a trackfolder_fix root")
    a.add_argument("dest", help="root to write (train/ and valid/)")
    a.add_argument("parts", nargs="+", help="corpus-partK.tar files")
    a.add_argument("--musdb-repeat", type=int, default=2, help="links per MUSDB18 training excerpt (default 2)")
    a.add_argument("--synth-repeat", type=int, default=1, help="links per generated training song (default 1)")
    a.add_argument("--jobs", type=int, default=os.cpu_count(), help="decoding processes (default: every core)")
    a = sub.add_parser("check", help="the codec's damage: decoded stems against the originals")
    a.add_argument("root", help="lossless root with the same track names")
    a.add_argument("decoded", help="root written by unpack")
    a.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes (default: every core)")
    args = p.parse_args()
    {"pack": pack, "unpack": unpack, "check": check}[args.command](args)


if __name__ == "__main__":
    main()
