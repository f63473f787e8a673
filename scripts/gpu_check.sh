#!/usr/bin/env bash
# GPU checks of a CUDA build, run from the repository root on a machine with an NVIDIA GPU,
# PyTorch and transformers (docs/gpu.md says how to build the binaries without a GPU):
#
#   scripts/gpu_check.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds `mirante`, `train_bench` and `encoder_bench` built with `--features mirante/cuda`.
# 1. The same binary embeds the fixture images and texts on the CPU and on the GPU; the largest
#    difference between the two is printed per model (the CPU path is tested against
#    transformers by the test suite).
# 2. train_bench on the GPU: fp32 and bf16 mixed precision, each against PyTorch in the same
#    precision on the same GPU.
# 3. encoder_bench on the GPU against PyTorch on the GPU.
# 4. `mirante demo` end to end on the GPU (FINETUNE in bf16 mixed precision).
set -u
BIN=$(realpath "$1")
OUT=$(realpath "$2")
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

source "$(dirname "$0")/gpu_env.sh"

step() { echo; echo "=== $* ($(date +%T))"; }

step "1. embeddings, CPU against GPU"
FIX=training/tests/fixtures
IMAGES=()
for f in "$FIX"/images/*; do IMAGES+=(--image "$f"); done
TEXTS=(--text "a photo of a cat" --text "a red circle left of a blue square" --text "um gato")
for model in $FIX/clip-tiny $FIX/siglip-tiny $FIX/siglip2-tiny engine/assets/mirante-shapes-clip; do
  name=$(basename "$model")
  for dev in cpu cuda; do
    MIRANTE_DEVICE=$dev timeout 120 "$BIN/mirante" embed --model "$model" \
      "${IMAGES[@]}" "${TEXTS[@]}" >"$OUT/embed-$name-$dev.jsonl" 2>"$OUT/embed-$name-$dev.err"
    echo "$name on $dev: exit $?, $(wc -l <"$OUT/embed-$name-$dev.jsonl") vectors"
    head -c 600 "$OUT/embed-$name-$dev.err"
  done
  python3 - "$OUT/embed-$name-cpu.jsonl" "$OUT/embed-$name-cuda.jsonl" "$name" <<'EOF'
import json, sys
rows = [[json.loads(l) for l in open(p)] for p in sys.argv[1:3]]
pairs = [(a, b) for a, b in zip(*rows) if a is not None and b is not None]
worst = max((abs(x - y) for a, b in pairs for x, y in zip(a, b)), default=float("nan"))
print(f"{sys.argv[3]}: {len(pairs)} vectors, max |cpu - gpu| = {worst:.2e}")
EOF
done

step "2. training steps on the GPU"
for precision in fp32 bf16; do
  for batch in 32 256; do
    MIRANTE_DEVICE=cuda MIRANTE_PRECISION=$precision MIRANTE_BENCH_BATCH=$batch \
      timeout 120 "$BIN/train_bench" 2>&1 | grep -v '^\s*$'
  done
done

step "3. encoders on the GPU"
MIRANTE_DEVICE=cuda MIRANTE_BENCH_BATCH=128 timeout 150 "$BIN/encoder_bench" "$OUT/encoders" 2>&1
rm -rf "$OUT/encoders"

step "4. mirante demo on the GPU"
start=$(date +%s)
MIRANTE_DEVICE=cuda timeout 200 "$BIN/mirante" demo --out /tmp/mirante-demo >"$OUT/demo.txt" 2>&1
echo "demo exit $? in $(( $(date +%s) - start )) s"
tail -40 "$OUT/demo.txt"
