"""The models ``umx-web`` offers: the bundled one, published models already in the cache, folders given."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import ModelError
from ..modeldir import default_target_order, find_weight_files
from ..pretrained import bundled_model_dir, cache_dir, pretrained_table


def folder_targets(folder: Path) -> List[str]:
    """Targets of a model folder, in the order the separator uses, without loading weights."""
    files = find_weight_files(folder)
    try:
        listed = json.loads((folder / "separator.json").read_text()).get("targets")
    except (OSError, ValueError, AttributeError):
        listed = None
    order = listed or default_target_order(files)
    return [t for t in order if t in files]


def discover_models(folders: Sequence[str] = ()) -> Dict[str, dict]:
    """Name -> ``{"arg": argument of Separator.from_pretrained, "targets": [...], "label": ...}``.

    The first entry is the default: the first folder given, else the bundled model.

    Raises:
        ModelError: a given folder is missing or holds no model.
    """
    models: Dict[str, dict] = {}
    for text in folders:
        folder = Path(text).expanduser()
        if text in pretrained_table() and not folder.exists():
            models[text] = {"arg": text, "targets": list(pretrained_table()[text]["files"]), "label": "published"}
            continue
        if not folder.is_dir() or not find_weight_files(folder):
            raise ModelError(f"--model {text}: not a model folder (no weight files found); give a folder "
                             "written by umx-train or a published model name")
        name = folder.name
        while name in models:
            name += "+"
        models[name] = {"arg": str(folder.resolve()), "targets": folder_targets(folder), "label": "model folder"}
    models.setdefault("default", {"arg": None, "targets": folder_targets(bundled_model_dir()),
                                  "label": "bundled model"})
    for name, entry in pretrained_table().items():
        cached = cache_dir() / name
        if name not in models and all((cached / f).is_file() for f in entry["files"].values()):
            models[name] = {"arg": name, "targets": list(entry["files"]), "label": "published, downloaded"}
    return models


def model_args(models: Dict[str, dict]) -> Dict[str, Optional[str]]:
    return {name: entry["arg"] for name, entry in models.items()}
