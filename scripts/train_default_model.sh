#!/usr/bin/env bash
# Rebuilds the bundled default model from nothing but this repository and the
# MUSDB18 7-second preview. Every step resumes where it stopped, so the script
# can be run again after an interruption (a session stop, a reboot).
#
#   scripts/train_default_model.sh [MUSDB_ROOT] [WORK_DIR]
#
# 1. umx-synth: 150 training, 5 validation and 10 test songs of 30 s (seed 2026).
# 2. One trackfolder_fix root: the generated training songs plus the 80 MUSDB18
#    training excerpts in train/, the 14 MUSDB18 validation excerpts in valid/.
# 3. Stage 1 (skipped when WORK_DIR/stage1 holds weights): four hidden-128
#    Open-Unmix targets, 25 epochs on the 80 MUSDB18 training excerpts only
#    (the recipe of the earlier interim bundled model).
# 4. Stage 2: each target fine-tuned from stage 1 on the combined root.
# 5. The best-validation weights of stage 2 are copied into the package.
set -euo pipefail
musdb=${1:-../shared/data/musdb18-7s}
work=${2:-default-model}
epochs=${EPOCHS:-100}
mkdir -p "$work"

umx-synth "$work/synth" --train 150 --valid 5 --test 10 --duration 30 --seed 2026 --jobs 2 \
  --cache-dir "$work/speech-cache" > "$work/synth.log" 2>&1
python scripts/prepare_default_corpus.py "$work/synth" "$musdb" "$work/combined" >> "$work/synth.log" 2>&1

targets=(vocals drums bass other)
model=(--hidden-size 128 --nfft 4096 --nhop 1024 --seed 42 --resume auto --quiet)
if [ ! -f "$work/stage1/other.safetensors" ]; then
  for target in "${targets[@]}"; do
    OMP_NUM_THREADS=1 umx-train --dataset musdb --root "$musdb" --output "$work/stage1" --target "$target" \
      --batch-size 16 --seq-dur 6.0 --samples-per-track 4 --epochs 25 --patience 20 \
      --lr-decay-patience 8 --lr-decay-gamma 0.3 "${model[@]}" > "$work/stage1-$target.log" 2>&1 &
  done
  wait
fi

# All four targets at once, one thread each: the two cores stay busy and the
# targets finish together.
for target in "${targets[@]}"; do
  OMP_NUM_THREADS=1 umx-train --dataset trackfolder_fix --root "$work/combined" --target "$target" \
    --target-file "$target.wav" --interferer-files $(for t in "${targets[@]}"; do [ "$t" != "$target" ] && echo "$t.wav"; done) \
    --random-track-mix --source-augmentations gain channelswap --model "$work/stage1" --output "$work/stage2" \
    --batch-size 16 --seq-dur 6.0 --epochs "$epochs" --lr 0.0002 --patience 40 \
    --lr-decay-patience 12 --lr-decay-gamma 0.3 --seed 42 --resume auto --quiet \
    > "$work/stage2-$target.log" 2>&1 &
done
wait

python scripts/bundle_model.py "$work/stage2" openunmix_like/models/default
