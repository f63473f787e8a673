#!/usr/bin/env python3
"""PyTorch/transformers side of Mirante's encoder benchmark (tests/src/bin/encoder_bench.rs).

Writes full-size random-weight checkpoints (CLIPConfig() = ViT-B/32, SiglipConfig() = base
patch16 224) to <out>/clip-b32 and <out>/siglip-base in Hugging Face layout (with the tiny
fixtures' tokenizer and preprocessor files), then times transformers on them: fp32, batch 32,
random pixels and random token ids, as ../shared/anchors/cpu_anchor.py does. Prints JSON.
MIRANTE_DEVICE=cuda times the GPU instead (the Rust side reads the same variable), and
MIRANTE_BENCH_BATCH changes the batch.

    pip install torch==2.15.0 transformers==5.23.0
"""
import json
import os
import shutil
import sys
import time

import torch
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training", "tests", "fixtures")


DEVICE = "cuda" if os.environ.get("MIRANTE_DEVICE", "cpu").startswith("cuda") else "cpu"
BATCH = int(os.environ.get("MIRANTE_BENCH_BATCH", "32"))


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timeit(fn, iters=10 if DEVICE == "cuda" else 3, warm=1):
    for _ in range(warm):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t) / iters


def decode_preprocess():
    """Decode + preprocess (RGB, bicubic shortest-edge 224, center crop, normalise) with Pillow,
    as transformers' PIL backend does it, on the same JPEG the Rust side reads (CPU work: only
    measured in CPU runs)."""
    from transformers import CLIPImageProcessorPil
    from PIL import Image
    processor = CLIPImageProcessorPil()
    jpeg = os.path.join(FIXTURES, "images", "rocket.jpg")
    n = 50
    t = timeit(lambda: [processor(images=Image.open(jpeg), return_tensors="np") for _ in range(n)], iters=2)
    return {"file": "rocket.jpg", "images_per_s": n / t}


def main():
    out_dir = sys.argv[1]
    torch.manual_seed(0)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": DEVICE,
              "batch": BATCH}
    for name, cls, cfg, seqlen, tiny in [
        ("clip-b32", CLIPModel, CLIPConfig(), 77, "clip-tiny"),
        ("siglip-base", SiglipModel, SiglipConfig(), 64, "siglip-tiny"),
    ]:
        model = cls(cfg).eval()
        folder = os.path.join(out_dir, name)
        model.save_pretrained(folder)
        for f in os.listdir(os.path.join(FIXTURES, tiny)):
            if f.startswith(("tokenizer", "spiece")):
                shutil.copy(os.path.join(FIXTURES, tiny, f), folder)
        bs = BATCH
        px = torch.randn(bs, 3, 224, 224)
        ids = torch.randint(0, 200, (bs, seqlen))
        model, px, ids = model.to(DEVICE), px.to(DEVICE), ids.to(DEVICE)
        with torch.inference_mode():
            ti = timeit(lambda: model.get_image_features(pixel_values=px))
            tt = timeit(lambda: model.get_text_features(input_ids=ids))
        result[name] = {"images_per_s": bs / ti, "texts_per_s": bs / tt, "seq_len": seqlen}
        del model
    if DEVICE == "cpu":
        result["decode_preprocess"] = decode_preprocess()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
