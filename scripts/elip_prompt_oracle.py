#!/usr/bin/env python3
"""Can any visual prompts fix a query's ranking in this frozen vision tower?

ELIP trains one mapping network from text embeddings to prompts. When it does not raise
recall@1, either the mapper fails to find (or generalise) good prompts, or no prompts exist that
would put the right image first: the frozen tower cannot see the difference. This script tells
the two apart with an oracle: for each query it optimises free prompt vectors of its own (no
mapper, fitted and scored on the same query, as ELIP's prompts enter a CLIP tower: after the
class token and the pre-norm, the deep variant replacing them before every layer) to rank the
query's own first-stage top K with the right image first (cross-entropy at the model's
temperature, the ELIP training loss), and reports how many queries end with the right image
first. That is an upper bound on what any mapper can reach with the same prompts.

With `--mapper`, it asks the next question: do such fixes generalise? One mapping network (ELIP's
three linear layers with GELU, the last bias at the mean patch token, inputs standardised over
the split, no dropout) is trained on the queries of 65% of the split's images, against their
top K, and after each epoch the right-image-first rate is reported on those queries and on the
queries of the other 35% (images it never saw).

Usage: python3 scripts/elip_prompt_oracle.py --model <CLIP folder> --data <shapes folder>
       [--split validation] [--top 10] [--queries 64] [--prompts 10] [--deep]
       [--steps 100] [--lr 0.05] [--seed 0]
       [--mapper [--epochs 6] [--lr 1e-3]]
Needs torch, transformers, pillow and numpy.
"""

import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from make_elip_fixtures import prompted as reference_prompted


def load_split(data, split):
    with open(os.path.join(data, "metadata.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["split"] == split]


@torch.no_grad()
def first_stage(model, tokenizer, processor, data, rows):
    """Pixel tensors of the split's images, L2-normalised image embeddings, and every caption's
    embedding with the index of its image."""
    images = [Image.open(os.path.join(data, r["file_name"])).convert("RGB") for r in rows]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    image_vectors = model.get_image_features(pixel_values=pixels)
    image_vectors = F.normalize(getattr(image_vectors, "pooler_output", image_vectors), dim=-1)
    captions = [(t, i) for i, r in enumerate(rows) for t in r["text"]]
    tokens = tokenizer([t for t, _ in captions], padding=True, return_tensors="pt")
    texts = model.get_text_features(**tokens)
    texts = F.normalize(getattr(texts, "pooler_output", texts), dim=-1)
    gold = torch.tensor([i for _, i in captions])
    return pixels, image_vectors, texts, gold


def prompted(model, pixels, prompts):
    """Embeddings of `pixels` (Q, K, C, H, W) under per-query prompts (Q, layers, m, width),
    injected by the ELIP parity reference (the one Mirante's prompted encoder is checked
    against)."""
    q, k = pixels.shape[:2]
    layers, m = prompts.shape[1:3]
    per_image = prompts[:, None].expand(q, k, *prompts.shape[1:]).reshape(q * k, layers, -1)
    # The reference makes each layer's prompts from the texts; here they are given directly.
    generators = [lambda _, i=i: per_image[:, i] for i in range(layers)]
    out = reference_prompted(model, "clip", generators, pixels.flatten(0, 1), per_image, m)
    return out.reshape(q, k, -1)


@torch.no_grad()
def mean_tokens(model, pixels, layers):
    """Mean patch token entering each prompted layer (Mirante's `prompt_init = 'patch'`)."""
    vision = model.vision_model
    h = vision.pre_layrnorm(vision.embeddings(pixels))
    means = []
    for i, layer in enumerate(vision.encoder.layers[:layers]):
        means.append(h[:, 1:].mean(dim=(0, 1)))
        h = layer(h, attention_mask=None)
        h = h[0] if isinstance(h, tuple) else h
    return torch.stack(means)


def fit_prompts(args, model, pixels, texts, gold, ranked, chosen, init):
    """Free prompts per query, fitted to that query's own top K."""
    scale = model.logit_scale.exp()
    before = after = 0
    losses = []
    for start in range(0, len(chosen), args.batch):
        batch = torch.from_numpy(chosen[start : start + args.batch])
        candidates = ranked[batch]
        target = (candidates == gold[batch, None]).float().argmax(dim=1)
        query = texts[batch]
        prompts = init[None, :, None, :].repeat(len(batch), 1, args.prompts, 1).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([prompts], lr=args.lr)
        for step in range(args.steps + 1):
            logits = scale * (prompted(model, pixels[candidates], prompts) * query[:, None]).sum(-1)
            loss = F.cross_entropy(logits, target)
            if step == 0:
                before += (logits.argmax(dim=1) == target).sum().item()
                first_loss = loss.item()
            if step == args.steps:
                break
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        after += (logits.argmax(dim=1) == target).sum().item()
        losses.append((first_loss, loss.item()))
        done = start + len(batch)
        print(f"  {done}/{len(chosen)} queries: right image first {before}/{done} with the starting "
              f"prompts, {after}/{done} with prompts fitted to each query", flush=True)
    first, last = np.mean(losses, axis=0)
    print(f"{'deep' if args.deep else 'input'} prompts x {args.prompts}, {args.steps} Adam steps at lr {args.lr}: "
          f"right image first among the top {args.top} for {before / len(chosen):.4f} of {len(chosen)} "
          f"queries at the start, {after / len(chosen):.4f} fitted; loss {first:.3f} -> {last:.3f} "
          f"(log {args.top} = {np.log(args.top):.3f})")


def train_mapper(args, model, pixels, texts, gold, ranked, reachable, init):
    """One mapper trained on the queries of 65% of the images, scored on the rest's queries."""
    layers, width = init.shape
    seen = int(len(pixels) * 0.65)
    queries = np.flatnonzero(reachable.numpy())
    fit, held = queries[gold[queries].numpy() < seen], queries[gold[queries].numpy() >= seen]
    mean, std = texts.mean(0), texts.std(0)
    inner = args.prompts * min(width, 1024)
    mapper = torch.nn.Sequential(
        torch.nn.Linear(texts.shape[1], inner), torch.nn.GELU(),
        torch.nn.Linear(inner, inner), torch.nn.GELU(),
        torch.nn.Linear(inner, layers * args.prompts * width),
    )
    with torch.no_grad():
        mapper[-1].bias.copy_(init[:, None, :].expand(layers, args.prompts, width).reshape(-1))
        mapper[-1].weight.mul_(0.02 / mapper[-1].weight.std())
    optimiser = torch.optim.AdamW(mapper.parameters(), lr=args.lr, weight_decay=0.0)
    scale = model.logit_scale.exp()

    def scored(selection):
        selection = torch.from_numpy(selection)
        candidates = ranked[selection]
        target = (candidates == gold[selection, None]).float().argmax(dim=1)
        prompts = mapper((texts[selection] - mean) / std).reshape(len(selection), layers, args.prompts, width)
        logits = scale * (prompted(model, pixels[candidates], prompts) * texts[selection][:, None]).sum(-1)
        return F.cross_entropy(logits, target, reduction="sum"), (logits.argmax(dim=1) == target).sum().item()

    def first_rate(selection):
        with torch.no_grad():
            parts = [scored(selection[s : s + 64]) for s in range(0, len(selection), 64)]
        return sum(p[1] for p in parts) / len(selection), sum(p[0].item() for p in parts) / len(selection)

    print(f"mapper: {len(fit)} queries of {seen} images to fit, {len(held)} of {len(pixels) - seen} other images held out")
    report = lambda: "fitted %.4f (loss %.3f), held out %.4f (loss %.3f)" % (*first_rate(fit), *first_rate(held))
    print(f"  before training: right image first among the top {args.top}: {report()}", flush=True)
    rng = np.random.default_rng(args.seed)
    for epoch in range(args.epochs):
        order = rng.permutation(fit)
        for start in range(0, len(order), args.batch):
            loss, _ = scored(order[start : start + args.batch])
            optimiser.zero_grad()
            (loss / len(order[start : start + args.batch])).backward()
            optimiser.step()
        print(f"  epoch {epoch + 1}: {report()}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--queries", type=int, default=64, help="queries fitted by the oracle")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--deep", action="store_true")
    parser.add_argument("--steps", type=int, default=100, help="Adam steps per query of the oracle")
    parser.add_argument("--lr", type=float, default=None, help="0.05 for the oracle, 1e-3 for --mapper")
    parser.add_argument("--batch", type=int, default=32, help="queries optimised together")
    parser.add_argument("--mapper", action="store_true", help="train one mapper, report held-out queries")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of --mapper")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.lr is None:
        args.lr = 1e-3 if args.mapper else 0.05

    torch.manual_seed(args.seed)
    model = AutoModel.from_pretrained(args.model, dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    processor = AutoImageProcessor.from_pretrained(args.model)
    rows = load_split(args.data, args.split)
    pixels, images, texts, gold = first_stage(model, tokenizer, processor, args.data, rows)
    ranked = (texts @ images.T).argsort(dim=1, descending=True)[:, : args.top]
    reachable = (ranked == gold[:, None]).any(dim=1)
    print(f"{len(gold)} captions of {len(rows)} {args.split} images; first-stage recall@1 "
          f"{(ranked[:, 0] == gold).float().mean():.4f}, recall@{args.top} {reachable.float().mean():.4f}")
    layers = model.vision_model.config.num_hidden_layers if args.deep else 1
    init = mean_tokens(model, pixels[:256], layers)
    if args.mapper:
        train_mapper(args, model, pixels, texts, gold, ranked, reachable, init)
    else:
        chosen = np.random.default_rng(args.seed).permutation(np.flatnonzero(reachable.numpy()))[: args.queries]
        fit_prompts(args, model, pixels, texts, gold, ranked, chosen, init)


if __name__ == "__main__":
    main()
