#!/usr/bin/env bash
# The Multi30k table (docs/results.md): train the Transformer-tiny recipe per attention variant, average the last 10
# checkpoints, evaluate with beam 5 on test_2016_flickr (run/eval, read by `nmt report`) and test_2017_flickr.
#
#   scripts/multi30k_table.sh [RUN…]        RUN ∈ mha gqa mqa window sparse en_fr raw_en_de (default: all, in order)
#   STEPS=8000 EVERY=100 scripts/multi30k_table.sh mha     # the full recipe (a GPU: add trainer=gpu to EXTRA)
#
# STEPS caps the updates (the recipe's schedule is unchanged, so a short run is the recipe's first STEPS updates);
# EVERY is the checkpoint spacing, so the average covers the last 10·EVERY updates. OUT (default outputs/multi30k)
# holds one run directory per RUN; EXTRA is appended to every `nmt train`.
set -euo pipefail
STEPS=${STEPS:-8000}
EVERY=${EVERY:-100}
VAL_EVERY=${VAL_EVERY:-500}
OUT=${OUT:-outputs/multi30k}
EXTRA=${EXTRA:-}
DATA=${DATA:-$(python -c 'from nmt.data.corpora import corpus_dir; print(corpus_dir("multi30k"))')}  # the shipped corpus
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(mha gqa mqa window sparse en_fr raw_en_de)

for run in "${runs[@]}"; do
  experiment=wu_tiny_en_de; attention=mha; tgt=de; files="tok/{}.lc.norm.tok"
  case $run in
    mha) ;;
    gqa) attention=gqa ;;
    mqa) attention=mqa ;;
    window) attention=sliding_window ;;
    sparse) attention=sparse ;;
    en_fr) experiment=wu_tiny_en_fr; tgt=fr ;;
    raw_en_de) experiment=wu_tiny_raw_en_de; files="{}" ;;
    *) echo "multi30k_table.sh: unknown run '$run' (mha gqa mqa window sparse en_fr raw_en_de)" >&2; exit 2 ;;
  esac
  dir=$OUT/$run
  start=$(date +%s)
  # shellcheck disable=SC2086
  nmt train experiment=$experiment attention=$attention trainer.max_steps="$STEPS" trainer.val_every_n_steps="$VAL_EVERY" \
    trainer.checkpoint_every_n_steps="$EVERY" trainer.enable_progress_bar=false resume=true hydra.run.dir="$dir" $EXTRA
  echo "$run: trained $STEPS steps in $(( $(date +%s) - start )) s" | tee -a "$OUT/wall_times.txt"
  nmt average "$dir" --last 10
  for test in test_2016_flickr test_2017_flickr; do
    report=$dir/eval; [ $test = test_2017_flickr ] && report=$dir/eval_2017
    nmt evaluate --model "$dir/model_avg10" --beam 5 --report "$report" \
      --src "$DATA/${files//\{\}/$test}.en.gz" --ref "$DATA/${files//\{\}/$test}.$tgt.gz"
  done
done
