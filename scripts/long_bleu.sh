#!/usr/bin/env bash
# BLEU of the long-input variants at one budget (issue 31, docs/long_inputs.md): on Multi30k pseudo-documents of K
# sentence pairs, train model=small per attention preset for the same STEPS updates, schedule, seed and batches, then
# evaluate the final model with beam 5 on the test_2016_flickr documents (raw, cased sacreBLEU 13a).
#
#   scripts/long_bleu.sh [VARIANT…]     VARIANT ∈ mha gqa window16 window64 sparse (default: all, in order)
#   K=64 STEPS=600 OUT=outputs/long_bleu OMP_NUM_THREADS=1 scripts/long_bleu.sh mha window16 &
#
# The budget is STEPS updates of ≤ 4,096-token batches (default 600: ~5 epochs of the 453 k=64 training documents),
# lr 0.001 after 200 warmup updates (a schedule that learns within the budget; the default 4,000 warmup updates would
# end inside warmup). EXTRA is appended to every `nmt train`. Each run resumes (resume=true), so a stopped run continues.
set -euo pipefail
K=${K:-64}
STEPS=${STEPS:-600}
OUT=${OUT:-outputs/long_bleu/k$K}
DOCS=${DOCS:-data/multi30k_docs}
EXTRA=${EXTRA:-}
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(mha gqa window16 window64 sparse)

python scripts/pseudo_documents.py --k "$K" --out "$DOCS" --vocab-size 0 >/dev/null  # a few seconds; same bytes
mkdir -p "$OUT"
for run in "${runs[@]}"; do
  case $run in
    mha) attention=mha ;;
    gqa) attention=gqa ;;
    window16) attention=sliding_window_16 ;;
    window64) attention=sliding_window_64 ;;
    sparse) attention=sparse_long ;;
    *) echo "long_bleu.sh: unknown variant '$run' (mha gqa window16 window64 sparse)" >&2; exit 2 ;;
  esac
  dir=$OUT/$run
  start=$(date +%s)
  # shellcheck disable=SC2086
  nmt train data=multi30k_docs data.path="$DOCS/k$K" model=small attention=$attention \
    optim.lr=0.001 optim.warmup_steps=200 trainer.max_steps="$STEPS" trainer.val_every_n_steps=200 \
    trainer.val_max_sentences=15 trainer.enable_progress_bar=false resume=true hydra.run.dir="$dir" $EXTRA
  echo "$run: trained $STEPS steps in $(( $(date +%s) - start )) s" | tee -a "$OUT/wall_times.txt"
  # Documents reach ~1,000 source subwords: --max-source-len above nmt evaluate's default 1,024 never truncates one.
  nmt evaluate --model "$dir/model" --beam 5 --max-source-len 2048 --report "$dir/eval" \
    --src "$DOCS/k$K/test_2016_flickr.en.gz" --ref "$DOCS/k$K/test_2016_flickr.de.gz"
done
nmt report "${runs[@]/#/$OUT/}" --out "$OUT/report"  # BLEU, KV-cache bytes and sizes side by side
