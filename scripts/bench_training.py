#!/usr/bin/env python3
"""PyTorch peer of Mirante's training benchmark (tests/src/bin/train_bench.rs).

Writes a small CLIP checkpoint (random weights: ViT 4 layers x 256 wide on 96x96 images in
16-pixel patches, text tower 4 layers x 256 wide, CLIP's tokenizer from the tiny fixture) and a
batch (`batch.safetensors`: pixel values and token ids of 32 pairs) to <dir>, then times
training steps on that batch in PyTorch/transformers: forward with the CLIP loss, backward,
AdamW step. Prints JSON: samples per second and the settings, for the bench to compare with
Mirante's steps on the same checkpoint and batch in the same run. MIRANTE_DEVICE=cuda runs on
the GPU, MIRANTE_PRECISION=bf16 under torch.autocast(bfloat16), MIRANTE_BENCH_BATCH sets the
batch (the Rust side reads the same variables).

    pip install torch==2.15.0 transformers==5.23.0 safetensors
"""
import json
import os
import shutil
import sys
import time

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

BATCH = int(os.environ.get("MIRANTE_BENCH_BATCH", "32"))
DEVICE = "cuda" if os.environ.get("MIRANTE_DEVICE", "cpu").startswith("cuda") else "cpu"
# Timed steps (GPU steps take milliseconds: more of them); MIRANTE_BENCH_STEPS overrides, and
# the Rust side runs as many.
STEPS = int(os.environ.get("MIRANTE_BENCH_STEPS", "20" if DEVICE == "cuda" else "10"))
BF16 = os.environ.get("MIRANTE_PRECISION", "fp32") == "bf16"


def main():
    out = sys.argv[1]
    fixture = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training", "tests", "fixtures", "clip-tiny")
    os.makedirs(out, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(os.path.join(fixture, f), os.path.join(out, f))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                     "num_attention_heads": 4, "max_position_embeddings": 77},
        vision_config={"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                       "num_attention_heads": 4, "image_size": 96, "patch_size": 16},
        projection_dim=256,
    )
    model = CLIPModel(config)
    model.save_pretrained(out)
    pixels = torch.randn(BATCH, 3, 96, 96)
    ids = torch.randint(1, 49000, (BATCH, 20))
    ids[:, 0] = 49406
    ids[:, -1] = 49407
    save_file({"pixel_values": pixels, "input_ids": ids}, os.path.join(out, "batch.safetensors"))

    model.train()
    model, pixels, ids = model.to(DEVICE), pixels.to(DEVICE), ids.to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=BF16):
            out = model(input_ids=ids, pixel_values=pixels, return_loss=True)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def sync():
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    sync()
    # Each step timed on its own, and the median reported, as the Rust side does: one slow step
    # (another process, a page-cache flush) moves neither side's figure.
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    rates = sorted(BATCH / t for t in times)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": STEPS,
        "device": DEVICE,
        "precision": "bf16" if BF16 else "fp32",
        "batch": BATCH,
        "samples_per_second": rates[len(rates) // 2],
    }))


if __name__ == "__main__":
    main()
