#!/usr/bin/env bash
# Does training on an Opus copy of the default model's corpus (scripts/pack_corpus.py) cost anything on
# validation? Short fine-tunes of the bundled model's four targets together (one process, the way
# scripts/train_default_gpu.py trains them on the GPU), all from the same float32 weights, on the CPU:
#   lossless-s42:  the lossless corpus, seed 42;
#   lossless-s43, lossless-s44: the lossless corpus, seeds 43 and 44: how far runs differ by their draws
#                  alone;
#   lossy-NAME-s42 for each pack folder NAME given: its decoded Opus corpus, seed 42: the same excerpts,
#                  gains and track mixes as lossless-s42 (the track names, lengths and order are the
#                  same), only the audio differs by the codec.
# All validate on the same lossless 14 MUSDB18 validation excerpts; each is then scored with umx-evaluate
# on them (the model card's command) and compared track by track with umx-compare against lossless-s42.
#
#   scripts/lossy_corpus_experiment.sh LOSSLESS_ROOT FP32_MODEL WORK MUSDB_ROOT PACK_DIR [PACK_DIR ...]
#
# LOSSLESS_ROOT: scripts/prepare_default_corpus.py SYNTH MUSDB LOSSLESS_ROOT (train: the 150 generated songs
# and the 80 MUSDB18 training excerpts twice; valid: the 14 MUSDB18 validation excerpts). PACK_DIR: the
# parts written by scripts/pack_corpus.py pack. FP32_MODEL: the bundled model in float32. Runs go two at a
# time (one thread each); each step is skipped when its output is there.
set -euo pipefail
lossless=$1 init=$2 work=$3 musdb=$4
shift 4
mkdir -p "$work"

# finetune NAME ROOT SEED: two epochs of 310 excerpts of 6 s (one per training track folder), batch 16,
# Adam at 5e-4, one thread.
finetune() {
  [ -f "$work/$1/other.chkpnt" ] && return
  OMP_NUM_THREADS=1 umx-train --dataset trackfolder_fix --root "$2" \
    --targets vocals drums bass other --random-track-mix --source-augmentations gain channelswap \
    --model "$init" --output "$work/$1" --batch-size 16 --seq-dur 6 --epochs 2 --lr 0.0005 --seed "$3" \
    --device cpu > "$work/$1.log" 2>&1
}

# lossy_root NAME PACK_DIR: the decoded corpus, with the lossless validation excerpts.
lossy_root() {
  [ -L "$work/lossy-$1/valid" ] && return
  python scripts/pack_corpus.py unpack "$work/lossy-$1" "$2"/corpus-part*.tar --jobs 2 --musdb-repeat 2
  rm -rf "$work/lossy-$1/valid"
  ln -s "$(realpath "$lossless/valid")" "$work/lossy-$1/valid"
}

runs=(lossless-s42 lossless-s43 lossless-s44)
for pack in "$@"; do
  name=$(basename "$pack")
  lossy_root "$name" "$pack"
  runs+=("lossy-$name-s42")
done
for ((k = 0; k < ${#runs[@]}; k += 2)); do
  for run in "${runs[@]:k:2}"; do
    root=$lossless
    [[ $run == lossy-* ]] && root=$work/${run%-s*}
    finetune "$run" "$root" "${run##*-s}" &
  done
  wait
done

for run in "${runs[@]}"; do
  umx-evaluate --root "$musdb" --subset train --split valid --mixture-from-sources --model "$work/$run" \
    --evaldir "$work/eval" --cores 2 --quiet > "$work/eval-$run.log" 2>&1
done
for run in "${runs[@]:1}"; do
  umx-compare "$work/eval/$run" "$work/eval/lossless-s42" > "$work/compare-$run.md"
done

# The validation losses of every run after each epoch, and their difference to lossless-s42's.
python - "$work" "${runs[@]}" > "$work/valid-loss.md" <<'PY'
import json
import sys
from pathlib import Path

work, runs = Path(sys.argv[1]), sys.argv[2:]
targets = ("vocals", "drums", "bass", "other")
history = {run: {t: json.loads((work / run / f"{t}.json").read_text())["valid_loss_history"] for t in targets}
           for run in runs}
print("| run | " + " | ".join(f"{t}, epoch {e}" for t in targets for e in (1, 2)) + " |")
print("|---|" + "---|" * 8)
for run in runs:
    cells = [f"{v:.3f} ({v - history[runs[0]][t][e]:+.3f})" for t in targets for e, v in enumerate(history[run][t])]
    print(f"| {run} | " + " | ".join(cells) + " |")
PY
