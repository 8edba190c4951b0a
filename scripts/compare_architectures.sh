#!/usr/bin/env bash
# Trains every architecture on the same data with the same budget, scores them
# on the 14 MUSDB18 validation excerpts and prints the table of
# docs/architectures.md. Every step resumes where it stopped (umx-train
# --resume auto, umx-evaluate keeps scored tracks), so the script can simply be
# run again after an interruption.
#
#   scripts/compare_architectures.sh COMBINED_ROOT MUSDB_ROOT [WORK_DIR]
#
# COMBINED_ROOT  the trackfolder_fix root of scripts/prepare_default_corpus.py
#                (generated songs plus the MUSDB18 training excerpts in train/,
#                the 14 MUSDB18 validation excerpts in valid/), e.g. the
#                combined/ folder scripts/train_default_model.sh makes.
# MUSDB_ROOT     the MUSDB18 7-second preview (../shared/data/musdb18-7s).
# WORK_DIR       models, logs, scores and the table (default arch-compare).
#
# The same budget for every model: MINUTES of training time per target on one
# thread (umx-train --max-minutes; the architectures differ up to fifty-fold
# in time per step, so a common epoch count would not be a common budget),
# over the same training tracks (random track mixing, gain and channelswap
# augmentation, seed 42), BATCH excerpts of SEQ_DUR seconds per step, Adam at
# lr 0.001 on the plateau schedule (a cosine schedule spans --epochs, so it
# could not anneal within a time budget), the best validation epoch kept. What
# differs is each architecture's own recipe: its loss, STFT and, for the
# presets, clipping (see MODELS).
# Environment: MINUTES (30), BATCH (8), SEQ_DUR (6.0), JOBS (2 targets trained
# at once, one thread each), MODELS (names below, default all), SPEED_CLIP
# (audio timed for the separation speed, default examples/synth-demo.flac).
set -euo pipefail
root=$1
musdb=$2
work=${3:-arch-compare}
minutes=${MINUTES:-30}
batch=${BATCH:-8}
seq_dur=${SEQ_DUR:-6.0}
jobs=${JOBS:-2}
speed_clip=${SPEED_CLIP:-examples/synth-demo.flac}

declare -A recipe=(
  [umx]="--arch umx --hidden-size 128"
  [unet2d]="--arch unet2d"
  [unet2d-8k]="--preset unet2d-8k"
  [unet1d]="--arch unet1d"
  [tfattn]="--preset tfattn-2048"
)
# A tfattn training used 9-12 GB of memory on this machine, so its
# targets train one at a time (two at once ran out of 24 GB).
declare -A max_jobs=([tfattn]=1)
models=(${MODELS:-umx unet2d unet2d-8k unet1d tfattn})
targets=(vocals drums bass other)
mkdir -p "$work/models" "$work/logs" "$work/eval"

train() {  # name target
  local name=$1 target=$2 others=()
  for t in "${targets[@]}"; do
    if [ "$t" != "$target" ]; then others+=("$t.wav"); fi
  done
  # shellcheck disable=SC2086 # the recipe is a list of flags
  OMP_NUM_THREADS=1 umx-train --dataset trackfolder_fix --root "$root" --target "$target" \
    --target-file "$target.wav" --interferer-files "${others[@]}" --random-track-mix \
    --source-augmentations gain channelswap --output "$work/models/$name" \
    --epochs 100000 --patience 100000 --max-minutes "$minutes" --lr-scheduler plateau --batch-size "$batch" --seq-dur "$seq_dur" \
    --seed 42 --ckpt-every 100 --resume auto --quiet ${recipe[$name]} \
    > "$work/logs/train-$name-$target.log" 2>&1
}

for name in "${models[@]}"; do
  [ -n "${recipe[$name]+set}" ] || { echo "unknown model $name; known: ${!recipe[*]}" >&2; exit 2; }
  cap=${max_jobs[$name]:-$jobs}
  for target in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$cap" ]; do wait -n; done
    train "$name" "$target" &
  done
done
wait

oracles=(--with-oracles irm2 mix)
for name in "${models[@]}"; do
  OMP_NUM_THREADS=1 umx-evaluate --root "$musdb" --subset train --split valid --model "$work/models/$name" \
    --evaldir "$work/eval" --cores "$jobs" --quiet "${oracles[@]}" > "$work/logs/eval-$name.log" 2>&1
  oracles=()  # the oracles' scores are kept in the evaldir after the first model
done

python scripts/architecture_table.py "$work" --speed "$speed_clip" | tee "$work/table.md"
