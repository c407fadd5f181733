#!/usr/bin/env bash
# The whole GPU session in one command (issue 2's two H100 figures), for the device tool's `run`:
#   (A) bench/throughput.py, BERT-base seq 128 bf16: keras_jax vs torch_eager vs torch_compile -> $OUT/throughput.json
#   (B) the trainer's wall time, process start -> metrics.json: random-init BERT-base made on the box, 4 epochs on
#       the PhraseBank train split (3,488 sentences), --precision auto, JAX, in a few variants of batch size and
#       --buckets (compile count vs padding) -> $OUT/trainer_<variant>.log, figures in summary.json
# Needs the git-ignored .whl/ and .gpudata/ made by bench/gpu_prepare.sh, carried:
#   run(command="bash bench/gpu_session.sh", carry=[".whl", ".gpudata"], timeout_s=540)
# Every part has its own `timeout`, capped so the script ends within FINSENT_GPU_BUDGET_S (470 s); a part that
# fails or times out is reported and the next one still runs. Files under $OUT (at most 8 come back):
# session.log, throughput.json, trainer_<variant>.log, summary.json.
#
# Local CPU dry run (tiny everything): FINSENT_GPU_SESSION_DRYRUN=1 PY=/path/to/python bash bench/gpu_session.sh
#   A venv like the box's (Python 3.12, no keras): /root/.pyenv/versions/3.12.1/bin/python -m venv /tmp/gpu312 &&
#   /tmp/gpu312/bin/pip install 'jax[cpu]==0.11.2' numpy==2.5.2 huggingface_hub==1.33.0 tokenizers==0.23.2 h5py \
#     rich absl-py ml-dtypes safetensors scikit-learn regex sentencepiece      (then PY=/tmp/gpu312/bin/python)
# Knobs: PY (python3), FINSENT_GPU_VARIANTS ("b32 b32-128 b32-64 b64-128": b<batch>[-<buckets, _ for commas>];
#        the first, the trainer's defaults, is the headline; later ones run only while >= 100 s are left),
#        FINSENT_THROUGHPUT_ONLY (throughput.py --only), FINSENT_GPU_BUDGET_S.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
START=$(date +%s)
DRY=${FINSENT_GPU_SESSION_DRYRUN:-0}
PY=${PY:-python3}
OUT=${OUT:-/tmp/finsent-gpu-out}
SCR=/tmp/finsent-gpu-scratch  # checkpoint, data subset, trainer outputs, per-run walls: fresh every run
rm -rf "$SCR"; mkdir -p "$OUT" "$SCR"
if [ "$DRY" = 1 ]; then BUDGET=${FINSENT_GPU_BUDGET_S:-900}; else BUDGET=${FINSENT_GPU_BUDGET_S:-470}; fi
left() { echo $((BUDGET - ($(date +%s) - START))); }
cap() { local c=$1 l; l=$(($(left) - 8)); ((l < c)) && c=$l; ((c < 5)) && c=5; echo "$c"; }
now() { date +%s.%N; }
stamp() { echo "=== [t+$(($(date +%s) - START))s] $*"; }

main() {
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax WANDB_MODE=disabled TF_CPP_MIN_LOG_LEVEL=2 HF_HUB_OFFLINE=1
SEQ=128
if [ "$DRY" = 1 ]; then
  A_ARGS=(--small --batch-size 8 --seq-len 32 --steps 2 --warmup 1 --timeout 240)
  A_CAP=300; CKPT_ARGS=(--tiny); EPOCHS=1; VARIANTS=${FINSENT_GPU_VARIANTS:-"b16 b16-128"}; B_CAP=240
else
  A_ARGS=(--timeout 150)  # BERT-base, batch 256, seq 128, 50 timed steps after 3 warm-up steps, per contender
  A_CAP=290; CKPT_ARGS=(); EPOCHS=4; VARIANTS=${FINSENT_GPU_VARIANTS:-"b32 b32-128 b32-64 b64-128"}; B_CAP=150
fi
[ -n "${FINSENT_THROUGHPUT_ONLY:-}" ] && A_ARGS+=(--only "$FINSENT_THROUGHPUT_ONLY")

stamp "setup: dryrun=$DRY python=$($PY -c 'import sys; print(sys.version.split()[0], sys.executable)' 2>&1)"
SITE=/tmp/site
if ls .whl/*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
     --upgrade --target "$SITE" .whl/*.whl; then
  export PYTHONPATH=$SITE
  echo "installed: $(cd .whl && ls *.whl | tr '\n' ' ')"
else
  echo "WARNING: wheel install from .whl/ failed or .whl/ missing; using $PY's own packages"
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | sed 's/^/GPU: /'
else
  echo "GPU: none (no nvidia-smi)"
fi
timeout 90 $PY -c '
import jax, keras, keras_hub
print("versions: jax", jax.__version__, "keras", keras.__version__, "keras_hub", keras_hub.__version__,
      "devices", jax.devices())' 2>&1 | grep -v "^WARNING" | tail -5

# ---------------- (A) throughput ----------------
c=$(cap $A_CAP); stamp "(A) bench/throughput.py ${A_ARGS[*]} (cap ${c}s)"
timeout -k 10 "$c" $PY bench/throughput.py "${A_ARGS[@]}" > "$OUT/throughput.json"
echo "(A) exit $?"

# ---------------- (B) trainer wall time ----------------
DATA=.gpudata
if [ "$DRY" = 1 ]; then  # 200 / 60 / 60 sentences (PhraseBank lines hold no newlines, so head is safe)
  DATA=$SCR/data; mkdir -p $DATA
  head -n 201 .gpudata/train.csv > $DATA/train.csv
  head -n 61 .gpudata/validation.csv > $DATA/validation.csv
  head -n 61 .gpudata/test.csv > $DATA/test.csv
fi
CKPT=$SCR/bert-random
c=$(cap 90); stamp "(B) checkpoint: bench/make_bert_checkpoint.py ${CKPT_ARGS[*]} (cap ${c}s)"
timeout "$c" $PY bench/make_bert_checkpoint.py $CKPT --vocab .gpudata/vocab.txt "${CKPT_ARGS[@]}"
echo "(B) checkpoint exit $?"

first=1
for V in $VARIANTS; do
  if [ $first = 0 ] && [ "$(left)" -lt 100 ]; then stamp "(B) $V skipped: only $(left)s left"; continue; fi
  first=0
  case $V in  # <batch>[-<buckets>]: b32 = batch 32, default buckets; b32-128 = batch 32, --buckets 128
    *-*) B=${V%%-*}; B=${B#b}; BK=${V#*-}; BK=${BK//_/,} ;;
    *) B=${V#b}; BK=auto ;;
  esac
  c=$(cap $B_CAP); stamp "(B) trainer $V: bert, batch $B, --buckets $BK, $EPOCHS epochs (cap ${c}s)"
  o=$SCR/train-$V
  t0=$(now)
  PYTHONPATH="$REPO/trainer/src${PYTHONPATH:+:$PYTHONPATH}" timeout -k 10 "$c" $PY -m trainer.task --model bert \
    --pretrained $CKPT --train-data $DATA/train.csv --validation-data $DATA/validation.csv \
    --test-data $DATA/test.csv --output-dir $o --epochs $EPOCHS --patience $EPOCHS --batch-size "$B" \
    --buckets "$BK" --max-seq-len $SEQ --precision auto --wandb-project '' > "$OUT/trainer_$V.log" 2>&1
  rc=$?; t1=$(now)
  wall=$($PY -c "print(round($t1 - $t0, 1))")
  echo "(B) $V: exit $rc, wall from outside ${wall}s"
  echo "{\"variant\": \"$V\", \"batch_size\": $B, \"buckets\": \"$BK\", \"exit\": $rc, \"wall_seconds_outside\": $wall}" > $SCR/wall-$V.json
  if [ $rc = 0 ]; then grep -E "trainer: backend|buckets|epoch [0-9]+/|wall time" "$OUT/trainer_$V.log" | cut -c25-
  else tail -25 "$OUT/trainer_$V.log"; fi
  [ -f $o/metrics.json ] && cp $o/metrics.json $SCR/metrics-$V.json
  [ -f $o/history.json ] && cp $o/history.json $SCR/history-$V.json
done

# ---------------- summary ----------------
stamp "summary"
OUT="$OUT" SCR="$SCR" DRY="$DRY" VARIANTS="$VARIANTS" timeout 30 $PY - <<'PY'
import json, os, re
out, scr = os.environ["OUT"], os.environ["SCR"]
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return None
s = {"dryrun": os.environ["DRY"] == "1", "throughput": None, "trainer": {}}
tp = load(f"{out}/throughput.json")
if tp:
    s["throughput"] = {"config": tp.get("config"), "batch_size": tp.get("batch_size"), "seq_len": tp.get("seq_len"),
                       **{k: v.get("samples_per_second", v.get("error", v.get("skipped")))
                          for k, v in tp["results"].items()},
                       "first_step_seconds": {k: v.get("first_step_seconds") for k, v in tp["results"].items()},
                       "keras_jax_faster_than_every_reference": tp.get("keras_jax_faster_than_every_reference")}
    kj = tp["results"].get("keras_jax", {}).get("samples_per_second")
    s["throughput"]["target_5500_met"] = (kj >= 5500) if kj else None
    s["throughput"]["device"] = tp["results"].get("keras_jax", {}).get("device")
for v in os.environ["VARIANTS"].split():
    w = load(f"{scr}/wall-{v}.json")
    if w is None:
        continue
    m = load(f"{scr}/metrics-{v}.json") or {}
    h = load(f"{scr}/history-{v}.json") or {}
    inside = None
    try:
        inside = float(re.findall(r"wall time since process start ([0-9.]+)s", open(f"{out}/trainer_{v}.log").read())[-1])
    except Exception:
        pass
    s["trainer"][v] = {**w, "wall_seconds_inside": inside,
                             "target_45s_met": (w["wall_seconds_outside"] <= 45) if w["exit"] == 0 else None,
                             "train_seconds": m.get("train", {}).get("seconds"),
                             "epochs_run": m.get("train", {}).get("epochs_run"),
                             "epoch_seconds": [e.get("seconds") for e in h.get("epochs", [])],
                             "train_samples_per_second": m.get("train", {}).get("samples_per_second"),
                             "test_accuracy": m.get("test", {}).get("accuracy"),
                             "precision": m.get("hyperparameters", {}).get("precision"),
                             "buckets_used": m.get("hyperparameters", {}).get("buckets"),
                             "environment": m.get("environment")}
json.dump(s, open(f"{out}/summary.json", "w"), indent=1)
t = s["throughput"] or {}
print("(A) throughput samples/s:", {k: t.get(k) for k in ("keras_jax", "torch_eager", "torch_compile")},
      "| first step s:", t.get("first_step_seconds"), "| keras_jax >= 5500:", t.get("target_5500_met"),
      "| keras_jax fastest:", t.get("keras_jax_faster_than_every_reference"), "| device:", t.get("device"))
for k, v in s["trainer"].items():
    print(f"(B) {k}: exit {v['exit']}, wall outside {v['wall_seconds_outside']} s, inside {v['wall_seconds_inside']} s,"
          f" <= 45 s: {v['target_45s_met']}, train {v['train_seconds']} s, epochs {v['epoch_seconds']},"
          f" precision {v['precision']}, test acc {v['test_accuracy']},"
          f" versions {(v.get('environment') or {}).get('versions')}")
print("dry run (tiny configs, CPU figures are no evidence)" if s["dryrun"] else "full run")
PY
stamp "done ($(left)s of the ${BUDGET}s budget left); files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
}

main 2>&1 | tee -a "$OUT/session.log"
