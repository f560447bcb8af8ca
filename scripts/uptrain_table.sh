#!/usr/bin/env bash
# Issue 26's finding (docs/results.md): a full-recipe MHA model converted to GQA-2 and MQA, at every site and at the
# decoder sites only (decoder self-attention and cross-attention: the sites whose K/V are cached), by mean-pooling each
# group's K/V heads (`nmt convert`, Ainslie et al. 2023), then uptrained with `nmt train init_from=…` for 5% (400)
# and 10% (800) of the recipe's 8,000 updates. Each model is scored with beam 5 on test_2016_flickr (tokenized
# lowercased BLEU) with its KV-cache bytes and sentences/s: right after conversion, after 400 and after 800 updates,
# beside the MHA model — and beside the MHA model uptrained the same way (the control: what the extra updates alone
# give).
#
#   scripts/uptrain_table.sh                       # everything: trains the MHA model first if MHA_RUN has none
#   MHA_RUN=outputs/multi30k_batch2/mha scripts/uptrain_table.sh    # start from an existing recipe run
#
# MHA_RUN (default $OUT/mha) is a run of `scripts/multi30k_table.sh mha` with the published doubled batch; its
# model_avg10 is the model converted. If it is missing, the run is made (or resumed: every step of this script resumes
# or skips what is done, so rerun it after an interruption) with
#   OMP_NUM_THREADS=2 STEPS=8000 EVERY=50 VAL_EVERY=500 OUT=$OUT EXTRA="$EXTRA" scripts/multi30k_table.sh mha
# (~5 h on the 2-core CPU; add trainer=gpu to EXTRA on a GPU). Uptraining keeps the recipe (experiment=wu_tiny_en_de,
# EXTRA's doubled batch) with a fresh optimizer: peak lr 0.0025 — the recipe's lr at its last update,
# 0.005·√(2000/8000) — after 50 warmup updates for the new Adam moments, then the recipe's inverse-√ decay. One
# 800-update run per variant keeps its step-400 checkpoint: inverse-√ does not depend on max_steps and the data order
# is seeded, so that checkpoint is what a 400-update run gives. UP_EXTRA is appended to every uptraining run.
# OUT (default outputs/uptrain) holds one folder per variant; the table is printed and written to $OUT/table.md.
set -euo pipefail
OUT=${OUT:-outputs/uptrain}
MHA_RUN=${MHA_RUN:-$OUT/mha}
EXTRA=${EXTRA:-trainer.accumulate_grad_batches=2}
UP_EXTRA=${UP_EXTRA:-}
UP_STEPS=${UP_STEPS:-800}  # the checkpoint at UP_STEPS / 2 is the 5% point
DATA=${DATA:-$(python -c 'from nmt.data.corpora import corpus_dir; print(corpus_dir("multi30k"))')}
TEST=${TEST:-test_2016_flickr}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
half=$((UP_STEPS / 2))

evaluate() {  # evaluate MODEL REPORT_DIR [TEST]: beam 5, tokenized BLEU on TEST (default $TEST); skipped when done
  local test=${3:-$TEST}
  [ -f "$2/metrics.json" ] || nmt evaluate --model "$1" --beam 5 --tokenized --report "$2" \
    --src "$DATA/tok/$test.lc.norm.tok.en.gz" --ref "$DATA/tok/$test.lc.norm.tok.de.gz"
}

if [ ! -f "$MHA_RUN/model_avg10/config.json" ]; then
  [ "$MHA_RUN" = "$OUT/mha" ] || { echo "uptrain_table.sh: $MHA_RUN/model_avg10 is missing" >&2; exit 2; }
  STEPS=8000 EVERY=50 VAL_EVERY=500 OUT="$OUT" EXTRA="$EXTRA" scripts/multi30k_table.sh mha
fi
evaluate "$MHA_RUN/model_avg10" "$OUT/mha_eval"

# name | nmt convert's SITE=N | the run's attention overrides that give the converted model's config
# The control runs last: the conversions are the finding, the control what it is measured against.
variants=(
  "gqa2-all|all=2|attention=gqa"
  "mqa-all|all=1|attention=mqa"
  "gqa2-decoder|decoder=2|model.attention.decoder_self.n_kv_heads=2 model.attention.cross.n_kv_heads=2"
  "mqa-decoder|decoder=1|model.attention.decoder_self.n_kv_heads=1 model.attention.cross.n_kv_heads=1"
  "mha-control|all=0|attention=mha"
)
for entry in "${variants[@]}"; do
  IFS='|' read -r name sites attention <<< "$entry"
  dir=$OUT/$name
  mkdir -p "$dir"
  if [ ! -f "$dir/converted/config.json" ]; then
    if [ "$sites" = "all=0" ]; then  # the control: the MHA model itself (a conversion to as many heads as it has)
      heads=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['model']['n_heads'])" \
        "$MHA_RUN/model_avg10/config.json")
      sites="all=$heads"
    fi
    nmt convert "$MHA_RUN/model_avg10" --out "$dir/converted" "$sites"
  fi
  evaluate "$dir/converted" "$dir/eval_0"
  ckpt=$dir/run/checkpoints
  if [ ! -f "$ckpt/step-$(printf %07d "$UP_STEPS").ckpt" ]; then
    start=$(date +%s)
    # shellcheck disable=SC2086
    nmt train experiment=wu_tiny_en_de $attention init_from="$dir/converted" trainer.max_steps="$UP_STEPS" \
      trainer.val_every_n_steps="$half" trainer.checkpoint_every_n_steps="$half" trainer.keep_checkpoints=2 \
      optim.lr=0.0025 optim.warmup_steps=50 trainer.enable_progress_bar=false resume=true hydra.run.dir="$dir/run" \
      $EXTRA $UP_EXTRA
    echo "$name: uptrained $UP_STEPS updates in $(( $(date +%s) - start )) s" | tee -a "$OUT/wall_times.txt"
  fi
  for steps in "$half" "$UP_STEPS"; do
    evaluate "$ckpt/step-$(printf %07d "$steps").ckpt" "$dir/eval_$steps"
  done
  # The final model's row in issue 31's full-budget table: `nmt report` reads RUN/eval (test_2016), the table also
  # test_2017 (RUN/eval_2017, as scripts/multi30k_table.sh writes them).
  evaluate "$ckpt/step-$(printf %07d "$UP_STEPS").ckpt" "$dir/eval_${UP_STEPS}_2017" test_2017_flickr
  ln -sfn "../eval_$UP_STEPS" "$dir/run/eval"
  ln -sfn "../eval_${UP_STEPS}_2017" "$dir/run/eval_2017"
done

python - "$OUT" "$half" "$UP_STEPS" "$MHA_RUN/model_avg10" <<'EOF'
"""The table: tokenized BLEU after conversion and uptraining beside the MHA model's, beam-5 sentences/s, and the
KV-cache bytes of one sentence at beam 5 — counted from the cache tensors of each model decoding the same lengths
(the MHA evaluation's median sentence), so the ratios are the architectures', not the hypotheses' lengths."""
import json
import sys
from pathlib import Path

from nmt.model import kv_cache_bytes
from nmt.decoding.loading import load_model

out, half, full, mha_model = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
read = lambda path: json.loads((path / "metrics.json").read_text())  # noqa: E731
mha = read(out / "mha_eval")
lengths = mha["kv_cache_bytes_per_sentence"]
src_ids, hyp_len = [5] * (lengths["source_subwords"] - 1), lengths["target_subwords"]
kv = lambda path: kv_cache_bytes(load_model(path)[0], src_ids, hyp_len, beam=5)["total"]  # noqa: E731
base_bleu, base_kv = mha["scores"]["bleu_tokenized"], kv(mha_model)
rows = [f"| MHA (model_avg10) | — | {base_bleu:.2f} | | | {base_kv:,} | 1 | {mha['speed']['sentences_per_s']} |"]
for name in ("mha-control", "gqa2-all", "mqa-all", "gqa2-decoder", "mqa-decoder"):
    evals = [out / name / f"eval_{s}" for s in ("0", half, full)]
    if not all((e / "metrics.json").is_file() for e in evals):
        continue
    metrics = [read(e) for e in evals]
    cells = [f"{b:.2f} ({b - base_bleu:+.2f})" for b in (m["scores"]["bleu_tokenized"] for m in metrics)]
    sites = ", ".join(f"{site} {v}" for site, v in metrics[-1]["model"]["attention"].items())
    size = kv(out / name / "converted")
    rows.append(f"| {name} | {sites} | {' | '.join(cells)} | {size:,} | 1/{base_kv / size:g} | "
                f"{metrics[-1]['speed']['sentences_per_s']} |")
header = (f"| model | attention per site | BLEU converted (Δ MHA) | after {half} updates | after {full} updates | "
          f"KV-cache bytes (beam 5, {lengths['source_subwords']} → {hyp_len} subwords) | ÷ MHA | "
          "sentences/s (beam 5) |\n|---|---|---|---|---|---|---|---|")
table = header + "\n" + "\n".join(rows) + "\n"
(out / "table.md").write_text(table)
print(table)
EOF
