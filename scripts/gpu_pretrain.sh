#!/usr/bin/env bash
# Trains candidate default models side by side on one GPU (`mirante pretrain` from a CUDA build,
# docs/gpu.md), each with its own arguments and a time limit:
#
#   scripts/gpu_pretrain.sh BIN_DIR OUT_DIR SECONDS 'NAME ARGS...' ['NAME ARGS...' ...]
#   e.g. scripts/gpu_pretrain.sh target-cuda/release /tmp/out 400 \
#          'plain --rows 25000 --epochs 20' 'hard --rows 25000 --epochs 20 --hard-negatives'
#
# OUT_DIR/NAME.tgz holds each run's output (NAME.log) and checkpoint: NAME-model, the f16 one,
# when the run finished; else NAME-partial, its best epoch so far (f32, as FINETUNE saved it
# after that epoch's validation).
#
# Then each candidate goes through what the demo does with the default model, and ELIP over the
# result (NAME-demo.log in the archive; at most CHAIN_LIMIT seconds, default 150): the demo's
# dataset (DEMO_ROWS, default 3,000, seed 1, half Portuguese), zero-shot evaluation, the demo's
# FINETUNE, REEMBED, evaluation, TRAIN ELIP over the fine-tuned model, and the test split
# re-ranked by it.
set -u
BIN=$(realpath "$1")
OUT=$(realpath -m "$2")
LIMIT=$3
CHAIN_LIMIT=${CHAIN_LIMIT:-150}
shift 3
mkdir -p "$OUT"
WORK=$(mktemp -d)
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

METRICS="recall@1, recall@5, recall@10, mrr, ndcg@10"
TEST="ON shapes WHERE split = 'test' DIRECTION text_to_image"
# The lines of the summary printed at the end (each archive has the whole logs).
SUMMARY=${SUMMARY:-text_to_image}
"$BIN/mirante" dataset shapes --out "$WORK/demo-data" --rows "${DEMO_ROWS:-3000}" --seed 1 >/dev/null 2>&1 &

# The demo's statements over checkpoint $1.
demo_sql() {
  echo "CREATE COLLECTION shapes WITH (model = '$1');
    IMPORT INTO shapes FROM '$WORK/demo-data';
    EVALUATE $METRICS $TEST;
    FINETUNE MODEL '$1' ON shapes WHERE split = 'train' VALIDATE WHERE split = 'validation'
      WITH (epochs = 5, batch_size = 64, lr = 2e-4, warmup_steps = 20, hard_negatives = true,
      seed = 0) AS 'shapes-finetuned';
    REEMBED shapes USING MODEL 'shapes-finetuned';
    EVALUATE $METRICS $TEST;
    TRAIN ELIP ON shapes USING MODEL 'shapes-finetuned' WHERE split = 'train'
      VALIDATE WHERE split = 'validation'
      WITH (epochs = 5, batch_size = 16, top = 10, patience = 5) AS 'elip';
    EVALUATE $METRICS $TEST RERANK WITH ELIP 'elip' TOP 10;
    EVALUATE $METRICS $TEST RERANK WITH ELIP 'elip' TOP 10 FUSION 1"
}

names=()
for run in "$@"; do
  read -r name args <<<"$run"
  names+=("$name")
  # shellcheck disable=SC2086 # ARGS are meant to split into arguments
  (
    start=$(date +%s)
    MIRANTE_DEVICE=cuda timeout "$LIMIT" "$BIN/mirante" pretrain --out "$WORK/$name" \
      --work "$WORK/$name.work" $args >"$WORK/$name.log" 2>&1
    echo "exit $? after $(($(date +%s) - start)) s" >>"$WORK/$name.log"
    model="$WORK/$name"
    [ -f "$model/model.safetensors" ] || model="$WORK/$name.work/db/models/.partial-pretrained"
    if [ -f "$model/model.safetensors" ]; then
      wait_for_data=0
      while [ ! -f "$WORK/demo-data/metadata.jsonl" ] && [ $wait_for_data -lt 60 ]; do
        sleep 1; wait_for_data=$((wait_for_data + 1))
      done
      start=$(date +%s)
      MIRANTE_DEVICE=cuda timeout "$CHAIN_LIMIT" "$BIN/mirante" sql "$WORK/$name-demo.db" \
        "$(demo_sql "$model")" >"$WORK/$name-demo.log" 2>&1
      echo "exit $? after $(($(date +%s) - start)) s" >>"$WORK/$name-demo.log"
    fi
  ) &
done
wait

# One archive per candidate (the device machine returns few files): its logs and checkpoint.
for name in "${names[@]}"; do
  if [ -f "$WORK/$name/model.safetensors" ]; then
    mv "$WORK/$name" "$WORK/$name-model"
  elif [ -f "$WORK/$name.work/db/models/.partial-pretrained/model.safetensors" ]; then
    mv "$WORK/$name.work/db/models/.partial-pretrained" "$WORK/$name-partial"
  fi
  (cd "$WORK" && tar czf "$OUT/$name.tgz" $(ls -d "$name"-model "$name"-partial "$name".log \
    "$name"-demo.log 2>/dev/null))
  echo "== $name: $(tail -1 "$WORK/$name.log")"
  grep -v '^\s*$' "$WORK/$name.log" | tail -8
  echo "== $name, demo and ELIP: $(tail -1 "$WORK/$name-demo.log" 2>/dev/null)"
  grep -E "$SUMMARY" "$WORK/$name-demo.log" 2>/dev/null
done
rm -rf "$WORK"
