"""What a catalogue run remembers: per-track ``_done.json`` records and ``_failures.csv``.

A track is finished when its ``OUT/<track>/_done.json`` exists and describes
the same input (path and size), the same model (a hash of its weights) and the
same output settings as this run, and every stem it lists exists. The record
is written after all stems, so a run killed at any point leaves each track
either finished or to be redone.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from .. import storage
from ..fileio import sha256_of as file_sha256  # noqa: F401 - the stems' checksums

if TYPE_CHECKING:
    import torch

DONE_NAME = "_done.json"
FAILURES_NAME = "_failures.csv"
RECORD_FORMAT = "openunmix-like/catalogue-done/1"
# Options that change what is written; the others (device, batch size, engine, workers) only change speed.
OUTPUT_SETTINGS = ("targets", "residual", "niter", "softmask", "wiener_win_len", "segment", "overlap", "aggregate",
                   "start", "duration", "filename", "ext", "bits", "clip", "keep_model_rate")


def settings_of(args: argparse.Namespace) -> Dict[str, object]:
    """The options a finished track's outputs depend on, as JSON values."""
    settings = {name: getattr(args, name) for name in OUTPUT_SETTINGS}
    if args.ext == "mp3":  # only then: records of wav and flac runs stay as they were
        settings["mp3_bitrate"] = args.mp3_bitrate
    # Level matching (the level the model's tracks were brought to), only where on: records of models
    # that match no level stay as they were, those of the bundled model before matching are redone.
    if isinstance(getattr(args, "input_level", None), float):
        settings["input_level"] = args.input_level
    return settings


def model_fingerprint(separator: torch.nn.Module) -> str:
    """sha256 of the separator's weights and buffers (names, shapes, dtypes and values)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(separator.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def make_record(source: str, input_size: int, model: str, model_sha256: str, settings: dict,
                stems: Dict[str, dict], duration: float, sample_rate: int, rescaled_db: float = 0.0) -> dict:
    """``rescaled_db``: how far ``--clip rescale`` turned every stem down (0 for not at all)."""
    from .. import __version__

    return {"format": RECORD_FORMAT, "input": source, "input_size": input_size, "model": model,
            "model_sha256": model_sha256, "settings": settings, "stems": stems, "duration": duration,
            "sample_rate": sample_rate, "rescaled_db": rescaled_db, "version": __version__,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def read_record(url: str, storage_options=None) -> Optional[dict]:
    """The ``_done.json`` at ``url``, or ``None`` when missing or unreadable (the track is redone)."""
    try:
        record = json.loads(storage.read_bytes(url, storage_options))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def is_finished(record: Optional[dict], source: str, input_size: int, model_sha256: str, settings: dict,
                stem_urls: Dict[str, str], storage_options=None) -> bool:
    """Whether ``record`` shows this very track, model and settings done, with every stem still there."""
    if record is None:
        return False
    same = (record.get("input") == source and record.get("input_size") == input_size
            and record.get("model_sha256") == model_sha256 and record.get("settings") == settings
            and sorted(record.get("stems", {})) == sorted(stem_urls))
    return same and all(storage.exists(url, storage_options) for url in stem_urls.values())


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def failures_csv(rows: Sequence[Sequence[str]]) -> bytes:
    """``path,stage,reason`` rows as CSV bytes (reasons on one line); UTF-8, where a path's bytes that are not
    (a local file name of another encoding) are written as they are, so that the path names the file."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "stage", "reason"])
    for path, stage, reason in rows:
        writer.writerow([path, stage, one_line(reason)])
    return buffer.getvalue().encode("utf-8", "surrogateescape")


def read_failures(data: bytes) -> List[Dict[str, str]]:
    """The rows of :func:`failures_csv`, each path as it was written."""
    return list(csv.DictReader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline="")))
