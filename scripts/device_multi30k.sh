#!/usr/bin/env bash
# The Multi30k runs that need a GPU (docs/results.md), for a session lent one, in one or two calls that
# fit its 15 minutes of device time with the machine's start (a minute or two):
#
#   here:   scripts/device_pack.sh
#   there:  run(command="scripts/device_multi30k.sh 420", carry=[".whl"], timeout_s=480)
#           if it reports runs still going, at once (a warm machine waits ~30 s for the next call):
#           run(command="scripts/device_multi30k.sh 150", timeout_s=200)
#   here:   tar xzf <files_at>/results.tgz          # outputs/device/<group>/<run>/…, as multi30k_table.sh leaves them
#
# The first call installs .whl into /tmp/site and starts every run below at once, and `pytest -m gpu` beside them,
# each in its own session (setsid) so that it outlives the call: a Transformer-tiny uses a sliver of the GPU, so the
# runs share it. Until SECONDS after the script started it repacks, every 30 s and at the end, what there is into
# $OUT: results.tgz (metrics, evaluations, logs; no checkpoints or models), summary.txt and gpu_tests.log, so a call
# cut off at its limit still returns the last pack. A later call on the same machine starts nothing, waits and packs
# again. A run unfinished when the machine goes back is lost but for its metrics so far (validation BLEU every 500
# updates): the machine keeps nothing. RUNS is in order of priority; RUNS_LIMIT=N keeps the first N.
# To try it without a GPU: TRAINER=cpu STEPS=10 EVERY=1 RUNS_LIMIT=3 scripts/device_multi30k.sh 300.
set -uo pipefail
cd "$(dirname "$0")/.."
BEGIN=$(date +%s)
WAIT=${1:-420}
ROOT=outputs/device
STEPS=${STEPS:-8000}
TRAINER=${TRAINER:-gpu}
PRECISION=${PRECISION:-32-true}  # the CPU rows' precision, so that the rows compare
DATA=$PWD/data/multi30k
OUT=${OUT:-$ROOT/out}

if [ ! -e /tmp/nmt_site_ready ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "device_multi30k.sh: installing .whl failed (run scripts/device_pack.sh here and carry .whl)"; exit 1; }
  touch /tmp/nmt_site_ready
fi
if [ ! -e /tmp/bin/nmt ]; then  # written once: running jobs exec it
  mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m nmt.cli "$@"\n' > /tmp/bin/nmt.tmp && chmod +x /tmp/bin/nmt.tmp
  mv /tmp/bin/nmt.tmp /tmp/bin/nmt
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/bin:$PATH OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1

# group, multi30k_table.sh run, checkpoint spacing (updates), overrides. Accumulating 2 batches per update is the
# published run's ~8,192 tokens per update (two GPUs); its averaged epoch checkpoints were ~50 updates apart.
RUNS="de_batch2 mha 50 trainer.accumulate_grad_batches=2
fr_batch2 en_fr 50 trainer.accumulate_grad_batches=2
variants raw_en_de 100
de_batch2_seed2 mha 50 trainer.accumulate_grad_batches=2 seed=2
fr_batch2_seed2 en_fr 50 trainer.accumulate_grad_batches=2 seed=2
recipe_seed3 mha 100 seed=3
recipe_seed3 en_fr 100 seed=3
variants mha 100
variants gqa 100
variants mqa 100
variants window 100
variants sparse 100"
RUNS=$(head -n "${RUNS_LIMIT:-100}" <<< "$RUNS")

launch() {  # GROUP RUN EVERY [OVERRIDE…]
  local group=$1 run=$2 every=${EVERY:-$3}
  shift 3
  mkdir -p "$ROOT/$group"
  OUT=$ROOT/$group STEPS=$STEPS EVERY=$every VAL_EVERY=500 DATA=$DATA \
    EXTRA="trainer=$TRAINER trainer.precision=$PRECISION data.path=$DATA $*" \
    setsid nohup scripts/multi30k_table.sh "$run" > "$ROOT/$group/$run.log" 2>&1 < /dev/null &
}

started() { grep -qs "auto picked" "$ROOT/$1/$2/train.log"; }  # data cached, tokenizer trained, training under way

if [ ! -e $ROOT/started ]; then
  mkdir -p $ROOT && date +%s > $ROOT/started
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c "import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda)") > $ROOT/machine.txt 2>&1
  [ "$TRAINER" = gpu ] && setsid nohup timeout 900 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py \
    > $ROOT/gpu_tests.log 2>&1 < /dev/null &
  # The first three runs are one per corpus: they build the datasets caches and sentencepiece models that the others
  # then reuse, instead of twelve processes building three of them at once.
  first=$(head -3 <<< "$RUNS")
  while read -r group run every extra; do launch "$group" "$run" "$every" $extra; done <<< "$first"
  for _ in $(seq 180); do
    waiting=0
    while read -r group run _; do started "$group" "$run" || waiting=1; done <<< "$first"
    [ $waiting -eq 0 ] && break
    sleep 1
  done
  tail -n +4 <<< "$RUNS" | while read -r group run every extra; do launch "$group" "$run" "$every" $extra; done
fi

pending() {
  local count=0
  while read -r group run _; do
    [ -e "$ROOT/$group/$run/eval_2017/metrics.json" ] || count=$((count + 1))
  done <<< "$RUNS"
  echo $count
}
pack() {  # summary.txt, results.tgz and gpu_tests.log into $OUT; `nmt report` of the variants finished so far
  variants=()
  for run in mha gqa mqa window sparse; do
    [ -e "$ROOT/variants/$run/eval_2017/metrics.json" ] && variants+=("$ROOT/variants/$run")
  done
  if [ ${#variants[@]} -gt 0 ] && [ "${variants[*]}" != "$(cat $ROOT/report.runs 2> /dev/null)" ]; then  # new ones only
    nmt report "${variants[@]}" --out $ROOT/report > $ROOT/report.log 2>&1 && echo "${variants[*]}" > $ROOT/report.runs
  fi

  mkdir -p "$OUT"
  python3 - "$ROOT" "$RUNS" "$(cat $ROOT/started)" > "$OUT/summary.txt" <<'PY'
import csv, glob, json, sys, time
from pathlib import Path

root, runs, started = Path(sys.argv[1]), sys.argv[2].splitlines(), int(sys.argv[3])
print(f"{time.time() - started:.0f} s since the runs started")
for line in runs:
    group, run = line.split()[:2]
    run_dir = root / group / run
    steps = [int(r["step"]) + 1 for f in sorted(glob.glob(f"{run_dir}/logs/version_*/metrics.csv"))
             for r in csv.DictReader(open(f)) if r.get("step")]
    scores = []
    for name in ("eval", "eval_2017"):
        metrics = run_dir / name / "metrics.json"
        if metrics.exists():
            s = json.loads(metrics.read_text())["scores"]
            scores.append(f"{name}: BLEU {s.get('bleu_tokenized', s['bleu']):.2f} chrF {s['chrf']:.2f}")
    print(f"{group}/{run}: {max(steps, default=0)} updates; {'; '.join(scores) or 'not evaluated yet'}")
PY
  tar czf "$OUT/results.tgz" --exclude=checkpoints --exclude=model --exclude=model_avg10 --exclude=tb \
    --exclude='attention_*.png' --exclude=alignment.png --exclude=out $ROOT
  cp $ROOT/gpu_tests.log "$OUT/" 2> /dev/null
  cat "$OUT/summary.txt"
  tail -3 $ROOT/gpu_tests.log 2> /dev/null
  echo "pending runs: $(pending)"
}

deadline=$((BEGIN + WAIT))
last_pack=0
while [ "$(date +%s)" -lt $deadline ] && { [ "$(pending)" -gt 0 ] || pgrep -f "pytest -m gpu" > /dev/null; }; do
  if [ $(($(date +%s) - last_pack)) -ge 30 ]; then pack > /dev/null 2>&1; last_pack=$(date +%s); fi
  sleep 5
done
pack
