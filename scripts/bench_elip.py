#!/usr/bin/env python3
"""PyTorch peer of Mirante's ELIP benchmark (tests/src/bin/elip_bench.rs).

    python3 scripts/bench_elip.py <backbone folder> <work folder>

The work folder holds what the Rust side wrote: `mapper/` (an ELIP mapper, elip_config.json and
model.safetensors) and `inputs.safetensors` (`candidates`: pixels of K candidate images, `query`:
one L2-normalised text embedding, `pixels` and `texts`: a training batch of B pairs). With the
prompted forward pass of scripts/make_elip_fixtures.py (transformers' CLIP vision model with the
prompts after the class token), it times:
- re-ranking one query: the K candidates encoded under the query's prompts, for each K in
  `ks`, in batches of 64 as Mirante does (median of repeats);
- training steps: every image of the batch under every text's prompts (B x B passes), InfoNCE
  from text to image at the backbone's temperature, backward into the mapper only (the backbone
  frozen), gradient clipping at 1.0, AdamW.
Prints JSON with the times, the batch's loss (for the Rust side to check) and the settings.
Runs on the CPU with PyTorch's default threads.
"""
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_elip_fixtures import mapper, prompted  # noqa: E402

BATCH = 64


def main():
    backbone, work = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(backbone, dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    config = json.load(open(os.path.join(work, "mapper", "elip_config.json")))
    m = config["prompts"]
    generators = mapper(config["embedding_dim"], config["vision_width"],
                        config["vision_layers"] if config["deep"] else 1, m, config["hidden"])
    state = load_file(os.path.join(work, "mapper", "model.safetensors"))
    generators.load_state_dict({k[len("generators."):]: v for k, v in state.items()})
    inputs = load_file(os.path.join(work, "inputs.safetensors"))
    candidates, query = inputs["candidates"], inputs["query"]

    rerank = {}
    with torch.inference_mode():
        for k in json.loads(os.environ.get("ELIP_BENCH_KS", "[10, 50, 100]")):
            def once():
                scores = []
                for start in range(0, k, BATCH):
                    px = candidates[start:min(k, start + BATCH)]
                    emb = prompted(model, "clip", generators, px, query.expand(px.shape[0], -1), m)
                    scores.append(emb @ query[0])
                return torch.cat(scores)
            once()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                once()
                times.append(time.perf_counter() - t)
            rerank[str(k)] = statistics.median(times)

    pixels, texts = inputs["pixels"], inputs["texts"]
    b = pixels.shape[0]
    scale = model.logit_scale.exp()
    opt = torch.optim.AdamW(generators.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.2)

    def loss_of():
        every = prompted(model, "clip", generators, pixels.repeat(b, 1, 1, 1),
                         texts.repeat_interleave(b, 0), m)
        logits = (every.reshape(b, b, -1) * texts[:, None, :]).sum(-1) * scale
        return F.cross_entropy(logits, torch.arange(b))

    first_loss = loss_of().item()

    def step():
        loss = loss_of()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(generators.parameters(), 1.0)
        opt.step()

    step()
    steps = 5
    t = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rerank_seconds": rerank,
        "loss": first_loss,
        "batch": b,
        "steps": steps,
        "samples_per_second": steps * b / seconds,
    }))


if __name__ == "__main__":
    main()
