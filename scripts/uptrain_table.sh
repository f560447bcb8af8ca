#!/usr/bin/env bash
# Issue 26's finding (docs/results.md): a full-recipe MHA model converted to GQA-2 and MQA, at every site and at the
# decoder sites only (decoder self-attention and cross-attention: the sites whose K/V are cached), by mean-pooling each
# group's K/V heads (`nmt convert`, Ainslie et al. 2023), then uptrained with `nmt train init_from=…` for 5% (400)
# and 10% (800) of the recipe's 8,000 updates. Each model is scored with beam 5 on test_2016_flickr (tokenized
# lowercased BLEU) right after conversion, after 400 and after 800 updates (and on test_2017_flickr after 800), beside
# the MHA model — and beside the MHA model uptrained the same way (the control: what the extra updates alone give) —
# with the KV-cache bytes of `nmt report`'s reference sentence. Beam-5 sentences/s come from one interleaved run of
# every model afterwards, on a quiet machine (the evaluations here run beside training):
#   python scripts/decode_speed.py --beams 5 --repeats 5 --src "$DATA/tok/test_2016_flickr.lc.norm.tok.en.gz" \
#     --model "$MHA_RUN/model_avg10" "$OUT"/*/run/checkpoints/step-0000800.ckpt
#
#   scripts/uptrain_table.sh                       # everything: trains the MHA model first if MHA_RUN has none
#   MHA_RUN=outputs/multi30k_batch2/mha scripts/uptrain_table.sh    # start from an existing recipe run
#
# MHA_RUN (default $OUT/mha) is a run of `scripts/multi30k_table.sh mha` with the published doubled batch; its
# model_avg10 is the model converted. If it is missing, the run is made (or resumed: every step of this script resumes
# or skips what is done, so rerun it after an interruption) with
#   OMP_NUM_THREADS=2 STEPS=8000 EVERY=50 VAL_EVERY=500 OUT=$OUT EXTRA="$EXTRA" scripts/multi30k_table.sh mha
# (~4–5 h on the 2-core CPU; add trainer=gpu to EXTRA on a GPU). Uptraining keeps the recipe (experiment=wu_tiny_en_de,
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
evaluate "$MHA_RUN/model_avg10" "$OUT/mha_eval_2017" test_2017_flickr

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
"""The table: tokenized BLEU after conversion and uptraining beside the MHA model's and the control's (the MHA model
uptrained the same way), test_2017 after the last update, and the KV-cache bytes of `nmt report`'s reference
sentence at beam 5, counted from each model's cache tensors (the architectures' ratios, not the hypotheses'
lengths). Beam-5 sentences/s are measured apart, all models in one interleaved run (scripts/decode_speed.py): each
evaluation here ran beside training."""
import json
import sys
from pathlib import Path

from nmt.decoding.loading import load_model
from nmt.evaluation.report import REFERENCE
from nmt.model import kv_cache_bytes

out, half, full, mha_model = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
bleu = lambda path: json.loads((path / "metrics.json").read_text())["scores"]["bleu_tokenized"]  # noqa: E731
src_ids, tgt_len = [5] * (REFERENCE["source_subwords"] - 1), REFERENCE["target_subwords"]
kv = lambda path: kv_cache_bytes(load_model(path)[0], src_ids, tgt_len, REFERENCE["beam"])["total"]  # noqa: E731
base, base_2017, base_kv = bleu(out / "mha_eval"), bleu(out / "mha_eval_2017"), kv(mha_model)
control = out / "mha-control" / f"eval_{full}"
control_bleu = bleu(control) if (control / "metrics.json").is_file() else None
delta = lambda value, reference: f"{value:.2f} ({value - reference:+.2f})"  # noqa: E731
heads = lambda path: " / ".join(str(load_model(path)[0].cfg.site(site).n_kv_heads)  # noqa: E731
                                for site in ("encoder_self", "decoder_self", "cross"))
rows = [f"| MHA (model_avg10) | {heads(mha_model)} | {base:.2f} | | | | {base_2017:.2f} | {base_kv:,} | 1 |"]
for name in ("mha-control", "gqa2-all", "mqa-all", "gqa2-decoder", "mqa-decoder"):
    evals = [out / name / f"eval_{s}" for s in ("0", half, full, f"{full}_2017")]
    if not all((e / "metrics.json").is_file() for e in evals):
        continue
    scores = [bleu(e) for e in evals]
    size = kv(out / name / "converted")
    vs_control = "" if control_bleu is None else f"{scores[2] - control_bleu:+.2f}"
    bleu_cells = " | ".join(delta(s, base) for s in scores[:3])
    rows.append(f"| {name} | {heads(out / name / 'converted')} | {bleu_cells} | {vs_control} | "
                f"{delta(scores[3], base_2017)} | {size:,} | 1/{base_kv / size:g} |")
header = (f"| model | K/V heads (encoder self / decoder self / cross) | BLEU converted (Δ MHA) | "
          f"after {half} updates | "
          f"after {full} updates | Δ control after {full} | test_2017 after {full} (Δ MHA) | KV-cache bytes "
          f"(beam {REFERENCE['beam']}, {REFERENCE['source_subwords']} → {tgt_len} subwords) | ÷ MHA |\n"
          "|---|---|---|---|---|---|---|---|---|")
table = header + "\n" + "\n".join(rows) + "\n"
(out / "table.md").write_text(table)
print(table)
EOF
