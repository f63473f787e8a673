#!/usr/bin/env python3
"""Writes the training parity fixtures: for the tiny CLIP and SigLIP checkpoints in
training/tests/fixtures/, one optimisation step in PyTorch/transformers on a fixed batch of
four photographs and captions.

Each `<model>/train_step.safetensors` holds the batch (`pixel_values`, `input_ids`), the
gradient of the model's own loss (transformers' `return_loss=True`: CLIP's symmetric InfoNCE,
SigLIP's pairwise sigmoid loss) for every parameter (`grad.<name>`), and every parameter after
one AdamW step (`after.<name>`), with the token embedding restricted to the rows the batch uses
(`token_rows`) to keep the file small. `<model>/train_step.json` holds the loss and the optimiser
settings. AdamW: parameters of rank < 2 and the logit scale/bias without weight decay (as
OpenCLIP does); CLIP's logit scale clamped to [0, ln 100] after the step.

It also checks a checkpoint that Mirante saved: `cargo run -p mirante-training --example
finetuned_fixture` writes `siglip-tiny-finetuned/` (the tiny SigLIP after a few fine-tuning
steps in Mirante); this script loads it with transformers and records reference embeddings
there (the same `reference.json` the encoder parity tests read), so the tests prove that
transformers reads Mirante's checkpoints as Mirante does.

    pip install torch==2.15.0 transformers==5.23.0 safetensors pillow \
        open-clip-torch==3.3.0 scikit-image==0.26.0 sentencepiece==0.2.3
    cargo run -p mirante-training --example finetuned_fixture
    python3 scripts/make_training_fixtures.py
"""
import json
import math
import os

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModel, AutoProcessor

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training", "tests", "fixtures")
IMAGES = ["chelsea.png", "camera.png", "rocket.jpg", "horse.png"]
CAPTIONS = [
    "a cat lying on a wooden floor",
    "a man with a camera on a tripod",
    "um foguete na plataforma de lançamento",
    "the silhouette of a horse",
]
OPTIMISER = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6, "weight_decay": 0.2}


def no_decay(name, param):
    return param.ndim < 2 or name.startswith("logit_")


def step(folder, family):
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    model.train()
    processor = AutoProcessor.from_pretrained(folder)
    images = [Image.open(os.path.join(ROOT, "images", n)) for n in IMAGES]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    padding = True if family == "clip" else "max_length"
    ids = processor.tokenizer(CAPTIONS, padding=padding, return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, pixel_values=pixels, return_loss=True)
    out.loss.backward()

    rows = sorted(set(ids.flatten().tolist()))
    named = dict(model.named_parameters())

    def stored(name, tensor):
        if name.endswith("token_embedding.weight"):
            tensor = tensor[rows]
        return tensor.detach().contiguous().clone()

    tensors = {
        "pixel_values": pixels.contiguous(),
        "input_ids": ids.to(torch.int64).contiguous(),
        "token_rows": torch.tensor(rows, dtype=torch.int64),
    }
    for name, p in named.items():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        tensors["grad." + name] = stored(name, grad)
    o = OPTIMISER
    groups = [
        {"params": [p for n, p in named.items() if not no_decay(n, p)], "weight_decay": o["weight_decay"]},
        {"params": [p for n, p in named.items() if no_decay(n, p)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    opt.step()
    if family == "clip":
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    for name, p in named.items():
        tensors["after." + name] = stored(name, p)
    save_file(tensors, os.path.join(folder, "train_step.safetensors"))
    with open(os.path.join(folder, "train_step.json"), "w") as f:
        json.dump({"loss": out.loss.item(), "optimiser": o, "captions": CAPTIONS, "images": IMAGES}, f, indent=1)
    print(folder, "loss", out.loss.item(), "tensors", len(tensors))


def finetuned_reference():
    """transformers' embeddings of the checkpoint Mirante fine-tuned and saved."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_encoder_fixtures import save_reference

    folder = os.path.join(ROOT, "siglip-tiny-finetuned")
    if not os.path.isdir(folder):
        raise SystemExit(
            f"{folder} is missing: run `cargo run -p mirante-training --example finetuned_fixture` first"
        )
    from transformers import SiglipImageProcessorPil, SiglipProcessor, SiglipTokenizer

    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    # The PIL image processor, as the encoder fixtures use (Mirante reproduces Pillow).
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessorPil.from_pretrained(folder),
        tokenizer=SiglipTokenizer.from_pretrained(folder),
    )
    save_reference(folder, model, processor, os.path.join(ROOT, "images"), "siglip")
    print(folder, "reference written")


def default_model_reference():
    """transformers' reading of Mirante's default model (engine/assets/mirante-shapes-clip): a
    checkpoint Mirante trained from scratch, with a BPE tokenizer Mirante trained, in f16."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_encoder_fixtures import save_reference
    from transformers import CLIPImageProcessorPil, CLIPProcessor, CLIPTokenizer

    assets = os.path.join(ROOT, "..", "..", "..", "engine", "assets", "mirante-shapes-clip")
    out = os.path.join(ROOT, "mirante-shapes-clip-reference")
    os.makedirs(out, exist_ok=True)
    # Computed in float32 from the f16 weights, as Mirante does.
    model = AutoModel.from_pretrained(assets, dtype=torch.float32).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil.from_pretrained(assets),
        tokenizer=CLIPTokenizer.from_pretrained(assets),
    )
    save_reference(out, model, processor, os.path.join(ROOT, "images"), "clip")
    print(out, "reference written")


def main():
    for name, family in (("clip-tiny", "clip"), ("siglip-tiny", "siglip")):
        step(os.path.join(ROOT, name), family)
    finetuned_reference()
    default_model_reference()


if __name__ == "__main__":
    main()
