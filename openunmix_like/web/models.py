"""The models ``umx-web`` offers: the bundled one, published models already in the cache, folders given."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

from ..errors import ModelError
from ..modeldir import default_target_order, find_weight_files
from ..pretrained import bundled_model_dir, cache_dir, is_bundled_name, pretrained_table

BUNDLED = "default"  # the bundled model's name in the list


def bundled_entry() -> dict:
    return {"arg": None, "targets": folder_targets(bundled_model_dir()), "label": "bundled model"}


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

    The first entry is the default: the first folder given (``default`` names the bundled model),
    else the bundled model.
    A folder whose name is taken (by another folder, the bundled model or a published model offered)
    gets ``+`` appended until it is free, so every model stays selectable.

    Raises:
        ModelError: a given folder is missing or holds no model.
    """
    published = pretrained_table()
    given = [text for text in folders if text in published and not Path(text).expanduser().exists()]
    cached = [name for name, entry in published.items()
              if all((cache_dir() / name / f).is_file() for f in entry["files"].values())]
    taken = {BUNDLED, *given, *cached}
    models: Dict[str, dict] = {}
    for text in folders:
        if is_bundled_name(text):  # --model default: the bundled model, first if named first
            models.setdefault(BUNDLED, bundled_entry())
            continue
        if text in given:
            models[text] = {"arg": text, "targets": list(published[text]["files"]), "label": "published"}
            continue
        folder = Path(text).expanduser()
        if not folder.is_dir() or not find_weight_files(folder):
            raise ModelError(f"--model {text}: not a model folder (no weight files found); give a folder "
                             "written by umx-train or a published model name")
        name = folder.resolve().name or "model"
        while name in models or name in taken:
            name += "+"
        models[name] = {"arg": str(folder.resolve()), "targets": folder_targets(folder), "label": "model folder"}
    models.setdefault(BUNDLED, bundled_entry())
    for name in cached:
        models.setdefault(name, {"arg": name, "targets": list(published[name]["files"]),
                                 "label": "published, downloaded"})
    return models
