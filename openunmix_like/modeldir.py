"""Model folders on disk: reading the reference layout and ours, writing ours.

A model folder holds, per target, a state dict (``<target>.safetensors`` as we
write it, or ``<target>.pth`` / ``<target>-<sha256 prefix>.pth`` as the
reference writes and publishes it) and optionally ``<target>.json``; plus a
``separator.json`` with the STFT settings shared by all targets, and optionally the
EM iterations of the model's own Wiener filter (``niter``, see :func:`model_niter`)::

    separator.json     {"sample_rate": 44100, "nfft": 4096, "nhop": 1024, "nb_channels": 2, ...}
    vocals.safetensors plain state dict (no pickle)
    vocals.json        {"architecture": "umx", "model_args": {...}, ...}
    vocals.pth         the same state dict for the reference package (optional, umx only)

``architecture`` names an entry of :mod:`openunmix_like.architectures`
(``umx`` when the key or the file is absent). An architecture that reads its
arguments off a state dict (Open-Unmix) is rebuilt from the weights and
``model_args`` must agree with them; the others are rebuilt from ``model_args``,
their exact constructor arguments.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import ModelError
from .fileio import held_lock, write_bytes_atomic, write_json_atomic

# torch and the architectures are imported where weights are read, built or written: what only lists a folder's
# targets and settings (umx-web's model list) runs without them.
if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

HASHED_NAME = re.compile(r"^(?P<target>.+?)[-_](?P<hash>[0-9a-f]{8,64})$")
FORMAT = "openunmix-like/1"


@dataclasses.dataclass(frozen=True)
class AudioSettings:
    """STFT and audio settings shared by all targets of a separator."""

    sample_rate: float = 44100.0
    n_fft: int = 4096
    n_hop: int = 1024
    nb_channels: int = 2

    def to_json(self) -> dict:
        # Key names of the reference separator.json, so the reference can read ours.
        return {"sample_rate": self.sample_rate, "nfft": self.n_fft, "nhop": self.n_hop,
                "nb_channels": self.nb_channels}

    @classmethod
    def from_json(cls, data: Mapping, source: Optional[Path] = None) -> "AudioSettings":
        """Settings from a ``separator.json`` or reference ``args`` record (either key spelling).

        Raises:
            ModelError: a value is not a positive number (an integer for the
                STFT sizes and channels); the message names ``source``.
        """
        def value(keys: Tuple[str, ...], default, kind):
            key = next((k for k in keys if k in data), None)
            if key is None:
                return default
            v = data[key]
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                    and (kind is float or float(v).is_integer())):
                what = "number" if kind is float else "integer"
                raise ModelError(f"{str(source) + ': ' if source else ''}{key} must be a positive {what}, "
                                 f"not {_shown(v)}; fix or delete the file")
            return kind(v)

        return cls(
            sample_rate=value(("sample_rate", "rate"), 44100.0, float),
            n_fft=value(("n_fft", "nfft"), 4096, int),
            n_hop=value(("n_hop", "nhop"), 1024, int),
            nb_channels=value(("nb_channels",), 2, int),
        )


def _shown(value) -> str:
    """A JSON value as the file spells it, shortened for a one-line message."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def target_of(path: Path) -> str:
    """Target name of a weight file: ``vocals-b62c91ce.pth`` -> ``vocals``."""
    m = HASHED_NAME.match(path.stem)
    return m.group("target") if m else path.stem


def find_weight_files(folder: Path) -> Dict[str, Path]:
    """Map each target in ``folder`` to its weight file.

    ``<target>.safetensors`` wins over ``.pth``; ``<target>.pth`` wins over a
    hashed ``<target>-<hash>.pth``.

    Raises:
        ModelError: several hashed ``.pth`` files claim the same target.
    """
    candidates: Dict[str, list] = {}
    for path in sorted(folder.glob("*.pth")) + sorted(folder.glob("*.safetensors")):
        candidates.setdefault(target_of(path), []).append(path)
    found = {}
    for target, paths in candidates.items():
        exact = [p for p in paths if p.stem == target]
        chosen = sorted(exact, key=lambda p: p.suffix != ".safetensors") or paths
        if not exact and len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise ModelError(f"{folder}: {names} all hold target {target!r}; remove all but one")
        found[target] = chosen[0]
    return found


def read_state_dict(path: Path) -> Dict[str, Tensor]:
    """Load a state dict without ever unpickling arbitrary objects.

    Raises:
        ModelError: the file is truncated, damaged, not a state dict, or holds
            pickled code; one line naming the file.
    """
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: not a loadable safetensors file ({first}); it may be truncated or "
                             "damaged: re-download or re-export the weights") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        finding, advice = load_failure(exc)
        raise ModelError(f"{path}: not a loadable state dict ({finding}); {advice}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a reference training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: does not hold a state dict of tensors")
    return state


def load_failure(exc: BaseException) -> Tuple[str, str]:
    """Why ``torch.load(..., weights_only=True)`` failed, and what to do, each in a few words.

    torch's own message is several sentences, some of them advice (load with ``weights_only=False``)
    that would run whatever code a damaged or hostile file holds; only its finding is kept.
    """
    text = " ".join(str(exc).split())
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    finding = found.group(1) if found else text
    finding = finding.split(". ")[0].strip().rstrip(".") or type(exc).__name__
    if found and "global" in finding.lower():  # a class or function pickled in the file
        return finding, "files holding pickled code objects are refused: re-export the weights as a state dict"
    return finding, "it may be truncated or damaged: re-download or re-export the weights"


def check_state_dict(model: torch.nn.Module, state: Mapping[str, Tensor], target: str, path: Path) -> None:
    """Raise a :class:`ModelError` naming target, key and shapes on any mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ModelError(
            f"{path}: weights of target {target!r} do not fit the model: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}; re-export them from the model they "
            f"were trained with, or name its architecture in {target}.json"
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelError(
                f"{path}: weights of target {target!r}: {key} has shape "
                f"{tuple(state[key].shape)}, expected {tuple(value.shape)}; fix model_args in {target}.json "
                "or re-export the weights"
            )


def load_target(path: Path, target: str) -> nn.Module:
    """Build a model from one weight file (and its ``<target>.json`` if present).

    ``<target>.json`` names the architecture (``umx`` when absent). An
    architecture that can read its arguments off the state dict (Open-Unmix) is
    rebuilt from the weights, and ``model_args``, if given, must agree; the
    others are rebuilt from the exact ``model_args``.

    A training run saving the target meanwhile replaces the two files one after the other: where they
    disagree because one was replaced while they were read, they are read again.
    """
    json_path = path.parent / f"{target}.json"
    for _ in range(3):
        before = _versions(path, json_path)
        try:
            return _load_target(path, json_path, target)
        except ModelError:
            if _versions(path, json_path) == before:
                raise
    return _load_target(path, json_path, target)


def _versions(*paths: Path) -> tuple:
    """Which version of each file is there (inode, size, modification time; None where there is none)."""
    versions = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            versions.append(None)
        else:
            versions.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(versions)


def _load_target(path: Path, json_path: Path, target: str) -> nn.Module:
    import torch

    from . import architectures

    meta = read_target_json(json_path)
    name = meta.get("architecture", architectures.DEFAULT_ARCHITECTURE)
    try:
        arch = architectures.get(name)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{json_path}: {exc}; is this package too old for the model?") from None
    declared = meta.get("model_args")
    if declared is not None and not isinstance(declared, dict):
        raise ModelError(f"{json_path}: model_args must be an object of constructor arguments; fix or delete it")
    state = arch.clean_state(read_state_dict(path))
    try:
        config = arch.config.from_dict(declared) if declared else None
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{json_path}: model_args do not build a {name!r} model ({exc})") from exc
    if arch.config_from_state is not None:
        try:
            weights_config = arch.config_from_state(state)
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{path}: weights of target {target!r} are not an {arch.title} state dict "
                             f"({exc})") from exc
        if config is not None and config != weights_config:
            raise ModelError(f"{path} and {json_path.name} disagree on target {target!r}: the weights are "
                             f"{weights_config}, model_args say {config}; fix or delete {json_path.name}")
        config = weights_config
    elif config is None:
        raise ModelError(f"{json_path}: architecture {name!r} needs its model_args (the constructor arguments) "
                         "to be rebuilt; the file has none")
    try:
        # Its random initial weights are replaced below: torch's generator is put back as it was, so that
        # loading a model does not change the caller's later draws (the models are built on the CPU).
        with torch.random.fork_rng(devices=[]):
            model = arch.build(**config.to_dict())
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{json_path}: model_args do not build a {name!r} model ({exc})") from exc
    check_state_dict(model, state, target, path)
    model.load_state_dict(state)
    return model.eval()


# Fields of separator.json and <target>.json whose type the loader relies on
# (the STFT settings are checked by AudioSettings.from_json).
JSON_FIELDS = {
    "architecture": (lambda v: isinstance(v, str), "a string (an architecture name)"),
    "model_args": (lambda v: v is None or isinstance(v, dict), "an object of constructor arguments"),
    "args": (lambda v: isinstance(v, dict), "an object"),
    "targets": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v), "a list of target names"),
}


def read_target_json(path: Path) -> dict:
    """A model folder's JSON file (``{}`` if absent), its structural fields type-checked.

    Raises:
        ModelError: unreadable JSON, not an object, or a field of the wrong type; one line naming the file.
    """
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable JSON ({exc}); fix or delete it") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: must hold a JSON object, not {_shown(meta)}; fix or delete it")
    for key, (valid, what) in JSON_FIELDS.items():
        if key in meta and not valid(meta[key]):
            raise ModelError(f"{path}: {key} must be {what}, not {_shown(meta[key])}; fix or delete it")
    return meta


def read_settings(
    folder: Path, first_target: str, model: nn.Module, known: Mapping[str, AudioSettings]
) -> AudioSettings:
    """STFT settings: ``separator.json``, else the reference ``<target>.json``, else inferred."""
    sep_json = folder / "separator.json"
    if sep_json.is_file():
        return AudioSettings.from_json(read_target_json(sep_json), sep_json)
    target_json = folder / f"{first_target}.json"
    meta = read_target_json(target_json)
    if "args" in meta or "sample_rate" in meta:
        merged = {**meta.get("args", {}), **{k: v for k, v in meta.items() if k in ("sample_rate", "rate")}}
        return AudioSettings.from_json(merged, target_json)
    for path in folder.iterdir():
        if path.name in known:
            return known[path.name]
    if not hasattr(model, "nb_bins"):
        return AudioSettings(nb_channels=model.nb_channels)
    n_fft = (model.nb_bins - 1) * 2
    return AudioSettings(44100.0, n_fft, n_fft // 4, model.nb_channels)


def model_niter(folder: Path) -> Optional[int]:
    """The EM iterations a model folder's own Wiener filter uses: ``niter`` in its ``separator.json``
    (``umx-train --dataset aligned`` writes 0), or ``None`` where it says none (the default, 1, applies).

    Raises:
        ModelError: ``niter`` is not a whole number of at least 0; one line naming the file.
    """
    path = Path(folder) / "separator.json"
    held = read_target_json(path)
    if "niter" not in held:
        return None
    value = held["niter"]
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
            and float(value).is_integer()):
        raise ModelError(f"{path}: niter must be a whole number of Wiener EM iterations, 0 or more, not "
                         f"{_shown(value)}; fix it, or delete the key for the default (1)")
    return int(value)


def model_input_level(folder: Path) -> Optional[float]:
    """The level a model folder's models were trained at (dBFS RMS, :mod:`openunmix_like.level`):
    ``input_level`` in its ``separator.json``, or ``None`` where it says none (no level matching).

    Raises:
        ModelError: ``input_level`` is not a level from -60 to 0 dBFS; one line naming the file.
    """
    from .level import check_input_level

    path = Path(folder) / "separator.json"
    held = read_target_json(path)
    if held.get("input_level") is None:
        return None
    try:
        return check_input_level(held["input_level"])
    except ValueError:
        raise ModelError(f"{path}: input_level must be the training mixtures' level in dBFS RMS, from -60 to 0, "
                         f"not {_shown(held['input_level'])}; fix it, or delete the key to separate tracks at "
                         "their own level") from None


# The published four-target models' order: separator(audio)[:, j] means the same for every folder.
TARGET_ORDER = ("vocals", "drums", "bass", "other")


def default_target_order(files: Mapping[str, Path], known: Mapping[str, AudioSettings] = {}) -> List[str]:
    """Order of a folder's targets when ``separator.json`` lists none.

    Vocals, drums, bass, other first (those present); then published weight
    files in the order of the table ``known`` comes from (umxse: speech, noise);
    then any other targets by name.
    """
    published = {name: i for i, name in enumerate(known)}

    def rank(target: str) -> Tuple[int, int, str]:
        if target in TARGET_ORDER:
            return 0, TARGET_ORDER.index(target), ""
        if files[target].name in published:
            return 1, published[files[target].name], ""
        return 2, 0, target

    return sorted(files, key=rank)


def load_model_dir(
    folder: Path,
    targets: Optional[Sequence[str]] = None,
    known: Mapping[str, AudioSettings] = {},
    weights: Optional[Mapping[str, Path]] = None,
) -> Tuple[Dict[str, nn.Module], AudioSettings]:
    """Load every (or the named) target of a model folder.

    Args:
        folder: the model folder.
        targets: targets to load, in this order; default those ``separator.json``
            lists, in its order, or else all in :func:`default_target_order`.
        known: settings of published weight files by file name, used when the
            folder has no JSON describing them.
        weights: target -> weight file, instead of those found in ``folder``
            (the files of a published model, checked against their hashes).

    Returns:
        target -> model, and the shared :class:`AudioSettings`.

    Raises:
        ModelError: no weights, no target to load (``targets=[]``, or none of those ``separator.json``
            lists has weights), a target named twice, a target without weights, weights that do not load,
            or a ``niter`` in ``separator.json`` that is not a whole number of at least 0.
    """
    folder = Path(folder)
    if folder.is_file():  # a target's weights, given for the model (as some other tools take them)
        raise ModelError(f"{folder}: is a file, and a model is a folder; give the folder that holds it "
                         f"({folder.parent}), with its other targets and separator.json")
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder not found")
    files = dict(weights) if weights is not None else find_weight_files(folder)
    if not files:
        raise ModelError(f"{folder}: no weight files (<target>.safetensors or <target>.pth) in this folder")
    available = ", ".join(sorted(files))
    if targets is None:
        listed = read_target_json(folder / "separator.json").get("targets")
        targets = [t for t in listed or default_target_order(files, known) if t in files]
        if not targets:
            raise ModelError(f"{folder / 'separator.json'}: none of its targets ({', '.join(listed)}) has weights "
                             f"in this folder (available: {available}); fix its targets list or name the targets")
    if not targets:
        raise ModelError(f"{folder}: targets=[] asks for no target; name at least one of {available}, "
                         "or pass None for all")
    twice = sorted({t for t in targets if list(targets).count(t) > 1})
    if twice:
        raise ModelError(f"{folder}: target(s) {', '.join(twice)} asked for more than once; name each target once")
    missing = [t for t in targets if t not in files]
    if missing:
        raise ModelError(
            f"{folder}: no weights for target(s) {', '.join(missing)} "
            f"(expected {missing[0]}.safetensors or {missing[0]}.pth); available: {available}"
        )
    models = {t: load_target(files[t], t) for t in targets}
    settings = read_settings(folder, targets[0], models[targets[0]], known)
    check_consistent(folder, models, settings)
    model_niter(folder)  # a bad value is refused on every load, not only where no niter is given
    return models, settings


def check_consistent(folder: Path, models: Mapping[str, nn.Module], settings: AudioSettings) -> None:
    nb_bins = settings.n_fft // 2 + 1
    for target, model in models.items():
        bins = getattr(model, "nb_bins", nb_bins)  # waveform models have no bins
        if bins != nb_bins or model.nb_channels != settings.nb_channels:
            raise ModelError(
                f"{folder}: target {target!r} has {bins} bins and {model.nb_channels} "
                f"channels but the folder's settings say n_fft={settings.n_fft} "
                f"({nb_bins} bins) and {settings.nb_channels} channels; fix nfft and nb_channels in "
                "separator.json, or keep only weights trained with the same settings in one folder"
            )


def save_target(
    folder: Path,
    target: str,
    model: nn.Module,
    settings: AudioSettings,
    extra: Optional[Mapping] = None,
    write_pth: bool = True,
    niter: Optional[int] = None,
    input_level: Optional[float] = None,
) -> None:
    """Write one target in our layout (and the reference's), atomically.

    Writes ``<target>.safetensors``, ``<target>.json`` (architecture, model
    arguments, settings, plus ``extra`` such as a training history),
    optionally ``<target>.pth`` (Open-Unmix models only: the reference package
    cannot build the other architectures), and updates ``separator.json``
    (``niter``, ``input_level``: see :func:`update_separator_json`).
    """
    import torch
    from safetensors.torch import save

    from . import architectures

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(folder / f"{target}.safetensors", save(state, metadata={"format": FORMAT}))
    if write_pth and architectures.architecture_of(model).reference_format:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes_atomic(folder / f"{target}.pth", buffer.getvalue())
    save_metadata(folder, target, model, settings, extra, niter, input_level)


def save_metadata(folder: Path, target: str, model: nn.Module, settings: AudioSettings,
                  extra: Optional[Mapping] = None, niter: Optional[int] = None,
                  input_level: Optional[float] = None) -> None:
    """Write ``<target>.json`` and update ``separator.json`` (the weights untouched), atomically."""
    write_json_atomic(Path(folder) / f"{target}.json", target_metadata(model, settings, extra))
    update_separator_json(Path(folder), target, settings, niter, input_level)


def target_metadata(model: nn.Module, settings: AudioSettings, extra: Optional[Mapping] = None) -> dict:
    """The ``<target>.json`` record: architecture, exact model arguments, settings, plus ``extra``."""
    from . import architectures

    arch = architectures.architecture_of(model)
    cfg = model.config
    args = {"nfft": settings.n_fft, "nhop": settings.n_hop, "nb_channels": model.nb_channels}
    if arch.reference_format:
        # The reference loader rebuilds models from these.
        args.update(hidden_size=cfg.hidden_size, unidirectional=cfg.unidirectional)
    return {
        "architecture": arch.name,
        "model_args": cfg.to_dict(),
        "sample_rate": settings.sample_rate,
        "args": args,
        **(extra or {}),
    }


# The keys of separator.json this code writes; any other key a file holds (a note written by hand, a key of a
# newer version) is kept as it was. Both spellings of the settings count: they are one value.
OWN_SEPARATOR_KEYS = ("format", "sample_rate", "rate", "nfft", "n_fft", "nhop", "n_hop", "nb_channels", "targets",
                      "niter", "input_level")


def update_separator_json(folder: Path, target: str, settings: AudioSettings, niter: Optional[int] = None,
                          input_level: Optional[float] = None) -> None:
    """Add ``target`` to ``separator.json``; the settings of all targets must agree.

    ``input_level`` (the training mixtures' level, for level matching: :mod:`openunmix_like.level`) is
    one value for the folder too: a number is written, ``None`` keeps what the file says.

    ``niter`` is one value for the whole folder (the Wiener filter treats its targets together): a
    whole number is written, ``None`` keeps what the file says (nothing: the default, 1). The keys this
    code does not write (:data:`OWN_SEPARATOR_KEYS`) are kept, after its own. The settings never change:
    where the file's differ, nothing is written; where they agree, they are written in the reference's
    spelling (``nfft``, ``nhop``), replacing any other spelling of the same value.

    Raises:
        ModelError: the file holds other settings, is not a JSON object, or holds a bad ``niter``.
    """
    path = folder / "separator.json"
    # Runs training other targets into the folder update it too: one at a time, each reading the other's.
    with held_lock(folder / ".separator.json.lock"):
        _update_separator_json(path, target, settings, niter, input_level)


def _update_separator_json(path: Path, target: str, settings: AudioSettings, niter: Optional[int],
                           input_level: Optional[float] = None) -> None:
    folder = path.parent
    current = read_target_json(path)
    held = AudioSettings.from_json(current, path) if current else None
    if held is not None and held != settings:
        raise ModelError(
            f"{path}: folder holds models with {held}; "
            f"cannot add {target!r} with {settings}; use another output folder"
        )
    targets = list(current.get("targets", []))
    if target not in targets:
        targets.append(target)
    niter = model_niter(folder) if niter is None else niter
    wiener = {} if niter is None else {"niter": niter}
    level = current.get("input_level") if input_level is None else input_level
    level = {} if level is None else {"input_level": level}
    others = {key: value for key, value in current.items() if key not in OWN_SEPARATOR_KEYS}
    write_json_atomic(path, {"format": FORMAT, **settings.to_json(), "targets": targets, **wiener, **level,
                             **others})
