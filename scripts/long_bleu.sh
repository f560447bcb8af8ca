#!/usr/bin/env bash
# BLEU of the long-input variants at one budget (issue 31, docs/long_inputs.md): on Multi30k pseudo-documents of K
# sentence pairs, train model=small per attention preset for the same STEPS updates, schedule, seed and batches, then
# evaluate the exported model (best validation BLEU) with beam 5 on the test_2016_flickr documents (raw, cased
# sacreBLEU 13a).
#
#   scripts/long_bleu.sh [VARIANT…]     VARIANT ∈ mha gqa-2 window-16 window-64 sparse-16+8 (default: all, in order)
#   scripts/long_bleu.sh report         nmt report over every variant folder under OUT: OUT/report
#
#   K=64 STEPS=600 OUT=outputs/long_bleu/k64 OMP_NUM_THREADS=1 scripts/long_bleu.sh mha window-16 &
#
# The variant names are nmt bench long's (nmt/bench/long.py VARIANTS), one per preset: mha, gqa-2 (attention=gqa),
# window-16 and window-64 (sliding_window_16/_64), sparse-16+8 (sparse_long).
#
# Run with no VARIANT, the script trains and evaluates all five and then writes OUT/report. Run with VARIANTs (e.g.
# two copies in parallel, one core each), it writes no report: each copy would overwrite OUT/report with only its own
# runs. Once every copy has finished, `scripts/long_bleu.sh report` (same K / OUT) writes the one table of all of them.
#
# The budget is STEPS updates of ≤ 4,096-token batches (default 600: ~5 epochs of the 453 k=64 training documents),
# lr 0.001 after 200 warmup updates (a schedule that learns within the budget; the default 4,000 warmup updates would
# end inside warmup). Validation (every 200 updates, greedy) uses all the validation documents of K (15 at K=64, 126 at
# K=8). EXTRA is appended to every `nmt train`. Each run resumes (resume=true), so a stopped run continues; OUT/
# wall_times.txt gets one line per invocation with that invocation's wall and CPU seconds of training, so after a
# restart it holds the resumed part on a line of its own (add a variant's lines for its total; a killed invocation
# writes none). With OMP_NUM_THREADS=1 the CPU seconds are the one-thread training time even when the run was paused.
set -euo pipefail
K=${K:-64}
STEPS=${STEPS:-600}
OUT=${OUT:-outputs/long_bleu/k$K}
DOCS=${DOCS:-data/multi30k_docs}
EXTRA=${EXTRA:-}
ALL=(mha gqa-2 window-16 window-64 sparse-16+8)
runs=("$@")
report=false
if [ ${#runs[@]} -eq 0 ]; then
  runs=("${ALL[@]}")
  report=true
elif [ "${runs[*]}" = report ]; then
  runs=()
  report=true
fi

preset() {
  case $1 in
    mha) echo mha ;;
    gqa-2) echo gqa ;;
    window-16) echo sliding_window_16 ;;
    window-64) echo sliding_window_64 ;;
    sparse-16+8) echo sparse_long ;;
    *) echo "long_bleu.sh: unknown variant '$1' (${ALL[*]}, or report alone)" >&2; return 2 ;;
  esac
}
# CPU=user + system CPU seconds of every finished child so far (bash's `times`, second line; it must run in this
# shell, not in a $(…) subshell, which has its own): a paused (SIGSTOP) or crowded one-thread run's CPU time is still
# its one-thread run time, where its wall time is not.
cpu_seconds() {
  local tmp
  tmp=$(mktemp)
  times > "$tmp"
  CPU=$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$tmp")
  rm -f "$tmp"
}
for run in "${runs[@]}"; do preset "$run" >/dev/null || exit 2; done  # every name checked before any work

if [ ${#runs[@]} -gt 0 ]; then
  # A few seconds when the folder is missing; left alone when it is complete (another copy may be reading it).
  python scripts/pseudo_documents.py --k "$K" --out "$DOCS" --vocab-size 0 --if-missing >/dev/null
  mkdir -p "$OUT"
fi
for run in "${runs[@]}"; do
  attention=$(preset "$run")
  dir=$OUT/$run
  start=$(date +%s)
  cpu_seconds
  cpu0=$CPU
  # shellcheck disable=SC2086
  nmt train data=multi30k_docs data.path="$DOCS/k$K" model=small attention=$attention \
    optim.lr=0.001 optim.warmup_steps=200 trainer.max_steps="$STEPS" trainer.val_every_n_steps=200 \
    trainer.val_max_sentences=null trainer.enable_progress_bar=false resume=true hydra.run.dir="$dir" $EXTRA
  cpu_seconds
  echo "$run: $(( $(date +%s) - start )) s of training to step $STEPS (this invocation only), CPU $(( CPU - cpu0 )) s" \
    | tee -a "$OUT/wall_times.txt"
  # Documents reach ~1,150 source subwords: --max-source-len above nmt evaluate's default 1,024 never truncates one.
  nmt evaluate --model "$dir/model" --beam 5 --max-source-len 2048 --report "$dir/eval" \
    --src "$DOCS/k$K/test_2016_flickr.en.gz" --ref "$DOCS/k$K/test_2016_flickr.de.gz"
done
if $report; then
  folders=()
  for run in "${ALL[@]}"; do
    [ -d "$OUT/$run" ] && folders+=("$OUT/$run")
  done
  [ ${#folders[@]} -eq 0 ] && { echo "long_bleu.sh: no variant folder under $OUT yet" >&2; exit 2; }
  nmt report "${folders[@]}" --out "$OUT/report"  # BLEU, KV-cache bytes and sizes side by side
fi
