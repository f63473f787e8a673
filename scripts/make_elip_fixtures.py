#!/usr/bin/env python3
"""Writes the ELIP parity fixtures: a reference of ELIP's prompted image encoder and loss, written
in PyTorch on top of transformers' CLIP and SigLIP vision models, for the tiny checkpoints in
training/tests/fixtures/.

For each (model, variant) it writes `elip-<model>[-deep]/`:
- `elip_config.json` and `model.safetensors`: a mapping network (per mapper: linear, GELU,
  linear, GELU, linear, from the backbone's embedding to m prompts of the vision width), random
  weights with std 0.5 so that the prompts move the embeddings a lot (the paper's 0.02 would let
  a forward pass that ignores them pass the test);
- `reference.safetensors`: the batch of training_step fixtures (`pixel_values`), the frozen
  text tower's L2-normalised embeddings of its captions (`texts`), image i's embedding under
  text i's prompts (`aligned`), the unprompted embeddings (`plain`), and the gradient of the
  loss for each mapper parameter (`grad.<name>`);
- `reference.json`: the loss of the batch (every image under every text's prompts; InfoNCE text
  to image at the frozen temperature for CLIP, the pairwise sigmoid loss for SigLIP).

Prompts enter after the first token: after CLIP's class token (after the pre-norm), among
SigLIP's patch tokens; the deep variant replaces them before every later layer.

    pip install torch==2.15.0 transformers==5.23.0 safetensors
    python3 scripts/make_training_fixtures.py   # the batches (train_step.safetensors)
    python3 scripts/make_elip_fixtures.py
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training", "tests", "fixtures")
PROMPTS = 3
HIDDEN = 8
DROPOUT = 0.1


def mapper(d, width, count, prompts=PROMPTS, hidden=HIDDEN):
    return torch.nn.ModuleList(
        torch.nn.Sequential(
            torch.nn.Linear(d, hidden * prompts),
            torch.nn.GELU(),
            torch.nn.Linear(hidden * prompts, hidden * prompts),
            torch.nn.GELU(),
            torch.nn.Linear(hidden * prompts, width * prompts),
        )
        for _ in range(count)
    )


def prompted(model, family, generators, pixels, texts, m=PROMPTS):
    """Image i's embedding under the prompts of text i (m prompts per mapper)."""
    vision = model.vision_model
    b, width = pixels.shape[0], vision.config.hidden_size
    prompts = [g(texts).reshape(b, m, width) for g in generators]
    h = vision.embeddings(pixels)
    if family == "clip":
        h = vision.pre_layrnorm(h)
    h = torch.cat([h[:, :1], prompts[0], h[:, 1:]], dim=1)
    for i, layer in enumerate(vision.encoder.layers):
        if 0 < i < len(prompts):
            h = torch.cat([h[:, :1], prompts[i], h[:, 1 + m:]], dim=1)
        h = layer(h, attention_mask=None)
        if isinstance(h, tuple):
            h = h[0]
    if family == "clip":
        out = model.visual_projection(vision.post_layernorm(h[:, 0]))
    else:
        out = vision.head(vision.post_layernorm(h))
    return F.normalize(out, dim=-1)


def reference(name, family, deep):
    folder = os.path.join(ROOT, name)
    out = os.path.join(ROOT, f"elip-{name}" + ("-deep" if deep else ""))
    os.makedirs(out, exist_ok=True)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    batch = load_file(os.path.join(folder, "train_step.safetensors"))
    pixels, ids = batch["pixel_values"], batch["input_ids"]
    with torch.no_grad():
        texts = model.get_text_features(input_ids=ids)
        texts = getattr(texts, "pooler_output", texts)
        texts = F.normalize(texts, dim=-1)
        plain = model.get_image_features(pixel_values=pixels)
        plain = F.normalize(getattr(plain, "pooler_output", plain), dim=-1)
    width, layers = model.vision_model.config.hidden_size, model.vision_model.config.num_hidden_layers
    d = texts.shape[1]
    torch.manual_seed(1)
    generators = mapper(d, width, layers if deep else 1)
    for module in generators.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.5)
            torch.nn.init.normal_(module.bias, std=0.5)

    aligned = prompted(model, family, generators, pixels, texts)
    b = pixels.shape[0]
    # Row t: every image under text t's prompts.
    every = prompted(model, family, generators, pixels.repeat(b, 1, 1, 1), texts.repeat_interleave(b, 0))
    logits = (every.reshape(b, b, -1) * texts[:, None, :]).sum(-1) * model.logit_scale.exp()
    if family == "clip":
        loss = F.cross_entropy(logits, torch.arange(b))
    else:
        labels = 2 * torch.eye(b) - 1
        loss = -F.logsigmoid(labels * (logits + model.logit_bias)).sum() / b
    loss.backward()

    state = {f"generators.{k}": v.contiguous() for k, v in generators.state_dict().items()}
    save_file(state, os.path.join(out, "model.safetensors"))
    config = {
        "prompts": PROMPTS, "hidden": HIDDEN, "deep": deep, "dropout": DROPOUT,
        "embedding_dim": d, "vision_width": width, "vision_layers": layers, "family": family,
    }
    with open(os.path.join(out, "elip_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    tensors = {
        "pixel_values": pixels.contiguous(),
        "texts": texts.contiguous(),
        "aligned": aligned.detach().contiguous(),
        "plain": plain.contiguous(),
    }
    for k, p in generators.named_parameters():
        tensors[f"grad.generators.{k}"] = p.grad.contiguous()
    save_file(tensors, os.path.join(out, "reference.safetensors"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"loss": loss.item(), "backbone": name}, f, indent=1)
    print(out, "loss", loss.item())


def main():
    for name, family in (("clip-tiny", "clip"), ("siglip-tiny", "siglip")):
        for deep in (False, True):
            reference(name, family, deep)


if __name__ == "__main__":
    main()
