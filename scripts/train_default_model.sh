#!/usr/bin/env bash
# Rebuilds the bundled default model from nothing but this repository and the
# MUSDB18 7-second preview. Every step resumes where it stopped, so the script
# can be run again after an interruption (a session stop, a reboot).
#
#   scripts/train_default_model.sh [MUSDB_ROOT] [WORK_DIR]
#
# MUSDB_ROOT is the MUSDB18 7-second preview (musdb.DB(root=..., download=True)
# fetches it), WORK_DIR the folder for the corpus, the stages and their logs
# (default: default-model). The last step writes the chosen weights of stages 9
# and 8 into openunmix_like/models/default/, the bundled model.
#
# 1. umx-synth: 150 training, 5 validation and 10 test songs of 30 s (seed 2026).
# 2. One trackfolder_fix root: the generated training songs plus the 80 MUSDB18
#    training excerpts in train/, the 14 MUSDB18 validation excerpts in valid/.
# 3. Stage 1 (skipped when WORK_DIR/stage1 holds weights): four hidden-128
#    Open-Unmix targets, 25 epochs on the 80 MUSDB18 training excerpts only
#    (the recipe of the earlier interim bundled model).
# 4. Stage 2: each target fine-tuned from stage 1 on the combined root at lr
#    2e-4 for 46 epochs (drums, bass and other were stopped after 45),
#    validated on the 14 MUSDB18 excerpts.
# 5. Stage 3: each target continues from the last epoch of stage 2 at lr 5e-4
#    for 65 minutes of training, validated on the 14 MUSDB18 excerpts plus the
#    5 generated validation songs (a second root, combined-sv, whose train/ is
#    the same), so that the kept epoch serves real and generated music.
# 6. Stage 4: each target continues from the last epoch of stage 3 at lr 3e-4
#    on the same root, 26 epochs, then 10 more (11 for bass, which was
#    stopped one epoch later) with an exponential moving average of the
#    weights (--ema 0.99) that is validated and kept.
# 7. Stage 5: from stage 4's last weight average, on a root with every
#    generated song twice and every MUSDB18 excerpt once (79 % generated), the
#    same validation tracks, lr 3e-4 annealed to 0 over 36 epochs (cosine),
#    --ema 0.99.
# 8. Stage 6: from stage 5's last weight average, on the same root, lr 6e-4
#    annealed to 0 over 56 epochs (cosine), --ema 0.99.
# 9. Stage 7: vocals, drums and bass from stage 6's last weight average, on
#    the same root, lr 6e-4 annealed to 0 (cosine), --ema 0.99: started with
#    --epochs 90, resumed with --epochs 64 after epoch 7 and with --epochs 76
#    after epoch 17, each re-targeting the cosine to end there (the lines
#    below do the same with --stop-after). (The original run trained other too,
#    for 36 epochs: other's validation loss rose from 4.584 at epoch 5 to
#    4.80, never near stage 4's 4.520, so it was stopped to give its core time
#    to the other three.)
# 10. The stage-7 bundle: per target, the best-validation weights of stage 4,
#    5, 6 or 7 (whichever validation loss is lowest; all validated on the same
#    19 tracks): vocals, drums and bass from stage 7, other from stage 4.
# 11. Stage 8, from the stage-7 bundle: vocals, drums and bass on the same root
#    at lr 8e-4 annealed to 0 over 36 epochs (cosine); other on the root with
#    real music half of each epoch (combined-sv, as in stages 3 and 4) at lr
#    4e-4 over 42 epochs; --ema 0.99. (Started with --epochs 60 for all four,
#    resumed after epoch 3 with 40 (other 44) and after epoch 13 (other 15)
#    with these lengths; other was stopped after epoch 35, and its best
#    weights are those of epoch 22. The lines below do the same.)
# 12. The stage-8 bundle: per target, the best-validation weights of stage 8
#    or the stage-7 bundle: vocals, bass and other from stage 8, drums from
#    stage 7.
# 13. Stage 9, from the stage-8 bundle, 30 epochs annealed to 0 (cosine),
#    --ema 0.99: vocals (lr 8e-4, the root of stages 5 to 8) and other (lr
#    4e-4, combined-sv) widened to hidden size 256; drums at hidden size 128
#    from lr 4e-4, stopped after epoch 6 as its validation loss rose; and, for
#    comparison, vocals at hidden size 128 with LSTM dropout 0.1 for 36 epochs
#    (stage9d). Bass is not trained again.
# 14. The bundled model: per target, the best-validation weights of stage 9,
#    stage9d or the stage-8 bundle (vocals, drums and other from stage 9, bass
#    from stage 8), written into openunmix_like/models/default/ as float16
#    (--half; first bundled in float32, whose scores the float16 files match:
#    docs/models.md).
# The lengths and schedules are those the bundled model was trained with:
# where a run ended early or was resumed with another --epochs, the lines
# below use --stop-after to end at the same epoch on the same schedule.
# Each stage resumes from its checkpoints.
set -euo pipefail
musdb=${1:-../shared/data/musdb18-7s}
work=${2:-default-model}
mkdir -p "$work"

umx-synth "$work/synth" --train 150 --valid 5 --test 10 --duration 30 --seed 2026 --jobs 2 \
  --cache-dir "$work/speech-cache" > "$work/synth.log" 2>&1
python scripts/prepare_default_corpus.py "$work/synth" "$musdb" "$work/combined" >> "$work/synth.log" 2>&1
python scripts/prepare_default_corpus.py "$work/synth" "$musdb" "$work/combined-sv" --synth-valid >> "$work/synth.log" 2>&1
python scripts/prepare_default_corpus.py "$work/synth" "$musdb" "$work/combined-synthx2" --synth-valid \
  --synth-repeat 2 --musdb-repeat 1 >> "$work/synth.log" 2>&1

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

# finetune STAGE ROOT INIT [umx-train flags]: the four targets of one stage
# (or those in $only) at once, one thread each (the two cores stay busy and the
# targets finish together), on ROOT with random track mixing, starting from the
# weights in INIT.
finetune() {
  local stage=$1 root=$2 init=$3
  shift 3
  for target in ${only:-${targets[@]}}; do
    OMP_NUM_THREADS=1 umx-train --dataset trackfolder_fix --root "$root" --target "$target" \
      --target-file "$target.wav" --interferer-files $(for t in "${targets[@]}"; do [ "$t" != "$target" ] && echo "$t.wav"; done) \
      --random-track-mix --source-augmentations gain channelswap --model "$init" --output "$work/$stage" \
      --batch-size 16 --seq-dur 6.0 --lr-decay-gamma 0.3 --resume auto --quiet "$@" \
      >> "$work/$stage-$target.log" 2>&1 &
  done
  wait
}

stage2=(--epochs 46 --lr 0.0002 --patience 40 --lr-decay-patience 12 --seed 42)
only=vocals finetune stage2 "$work/combined" "$work/stage1" "${stage2[@]}" &
only="drums bass other" finetune stage2 "$work/combined" "$work/stage1" "${stage2[@]}" --stop-after 45 &
wait
python scripts/bundle_model.py --last "$work/stage2" "$work/stage2-last"
finetune stage3 "$work/combined-sv" "$work/stage2-last" \
  --epochs 1000 --lr 0.0005 --patience 1000 --max-minutes 65 --lr-decay-patience 6 --seed 43
python scripts/bundle_model.py --last "$work/stage3" "$work/stage3-last"
stage4=(--lr 0.0003 --patience 1000 --lr-decay-patience 6 --seed 44)
finetune stage4 "$work/combined-sv" "$work/stage3-last" --epochs 26 "${stage4[@]}"
finetune stage4 "$work/combined-sv" "$work/stage3-last" --epochs 36 "${stage4[@]}" --ema 0.99
python scripts/bundle_model.py --last --average "$work/stage4" "$work/stage4-last"
finetune stage5 "$work/combined-synthx2" "$work/stage4-last" \
  --epochs 36 --lr 0.0003 --lr-scheduler cosine --patience 1000 --seed 45 --ema 0.99
python scripts/bundle_model.py --last --average "$work/stage5" "$work/stage5-last"
finetune stage6 "$work/combined-synthx2" "$work/stage5-last" \
  --epochs 56 --lr 0.0006 --lr-scheduler cosine --patience 1000 --seed 46 --ema 0.99
python scripts/bundle_model.py --last --average "$work/stage6" "$work/stage6-last"
stage7=(--lr 0.0006 --lr-scheduler cosine --patience 1000 --seed 47 --ema 0.99)
export only="vocals drums bass"
finetune stage7 "$work/combined-synthx2" "$work/stage6-last" --epochs 90 --stop-after 7 "${stage7[@]}"
finetune stage7 "$work/combined-synthx2" "$work/stage6-last" --epochs 64 --stop-after 17 "${stage7[@]}"
finetune stage7 "$work/combined-synthx2" "$work/stage6-last" --epochs 76 "${stage7[@]}"
unset only

python scripts/bundle_model.py "$work/stage7" --best-of "$work/stage6" --best-of "$work/stage5" \
  --best-of "$work/stage4" "$work/stage7-best"
stage8=(--lr-scheduler cosine --patience 1000 --seed 48 --ema 0.99)
(
  export only="vocals drums bass"
  finetune stage8 "$work/combined-synthx2" "$work/stage7-best" --lr 0.0008 --epochs 60 --stop-after 3 "${stage8[@]}"
  finetune stage8 "$work/combined-synthx2" "$work/stage7-best" --lr 0.0008 --epochs 40 --stop-after 13 "${stage8[@]}"
  finetune stage8 "$work/combined-synthx2" "$work/stage7-best" --lr 0.0008 --epochs 36 "${stage8[@]}"
) &
(
  export only=other
  finetune stage8 "$work/combined-sv" "$work/stage7-best" --lr 0.0004 --epochs 60 --stop-after 3 "${stage8[@]}"
  finetune stage8 "$work/combined-sv" "$work/stage7-best" --lr 0.0004 --epochs 44 --stop-after 15 "${stage8[@]}"
  finetune stage8 "$work/combined-sv" "$work/stage7-best" --lr 0.0004 --epochs 42 --stop-after 35 "${stage8[@]}"
) &
wait

python scripts/bundle_model.py "$work/stage8" --best-of "$work/stage7-best" "$work/stage8-best"
# Stage 9: vocals and other widened to hidden size 256 (--hidden-size with --model keeps their output at
# first); drums at 128 from 4e-4 (stopped after epoch 6 as its loss rose again; best epoch 2); vocals also at
# 128 with LSTM dropout 0.1 into stage9d, the better of the two chosen below by validation loss.
stage9=(--epochs 30 --lr-scheduler cosine --patience 1000 --seed 49 --ema 0.99)
only=vocals finetune stage9 "$work/combined-synthx2" "$work/stage8-best" --hidden-size 256 --lr 0.0008 "${stage9[@]}" &
only=other finetune stage9 "$work/combined-sv" "$work/stage8-best" --hidden-size 256 --lr 0.0004 "${stage9[@]}" &
only=drums finetune stage9 "$work/combined-synthx2" "$work/stage8-best" --lr 0.0004 "${stage9[@]}" --stop-after 6 &
only=vocals finetune stage9d "$work/combined-synthx2" "$work/stage8-best" --lstm-dropout 0.1 --lr 0.0008 \
  --epochs 36 --lr-scheduler cosine --patience 1000 --seed 49 --ema 0.99 &
wait

python scripts/bundle_model.py --half "$work/stage9" --best-of "$work/stage9d" --best-of "$work/stage8-best" \
  openunmix_like/models/default
