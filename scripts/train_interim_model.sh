#!/usr/bin/env bash
# Trains the interim bundled model: four small Open-Unmix targets on the 80
# training excerpts of the MUSDB18 7-second preview (the 14 validation excerpts
# are only validated on), then copies the weights into the package.
# Usage: scripts/train_interim_model.sh [MUSDB_ROOT] [WORK_DIR]
set -euo pipefail
root=${1:-../shared/data/musdb18-7s}
work=${2:-interim-model}
epochs=${EPOCHS:-60}
common=(--dataset musdb --root "$root" --output "$work" --hidden-size 128 --nfft 4096 --nhop 1024
        --batch-size 16 --seq-dur 6.0 --samples-per-track 4 --epochs "$epochs" --patience 20
        --lr-decay-patience 8 --lr-decay-gamma 0.3 --seed 42 --resume auto --quiet)
# Two targets at a time, one thread each: the two cores stay busy.
for pair in "vocals drums" "bass other"; do
  for target in $pair; do
    OMP_NUM_THREADS=1 umx-train "${common[@]}" --target "$target" > "$work-$target.log" 2>&1 &
  done
  wait
done
dest=openunmix_like/models/default
mkdir -p "$dest"
for target in vocals drums bass other; do
  cp "$work/$target.safetensors" "$work/$target.json" "$dest/"
done
python - "$dest" <<'PY'
import json, sys
from pathlib import Path
dest = Path(sys.argv[1])
meta = json.loads((dest / "vocals.json").read_text())
sep = {"format": "openunmix-like/1", "sample_rate": meta["sample_rate"], "nfft": meta["args"]["nfft"],
       "nhop": meta["args"]["nhop"], "nb_channels": meta["args"]["nb_channels"],
       "targets": ["vocals", "drums", "bass", "other"]}
(dest / "separator.json").write_text(json.dumps(sep, indent=2) + "\n")
PY
echo "bundled model written to $dest"
