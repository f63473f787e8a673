#!/usr/bin/env python3
"""Generates the encoder parity fixtures in training/tests/fixtures/ (committed; CI needs no Python).

For each model family: a tiny random-weight checkpoint written by transformers in the exact
Hugging Face layout, and reference outputs computed by transformers on real photographs (from the
scikit-image wheel) and English/Portuguese captions: token ids, pixel values, L2-normalised
embeddings.

    pip install torch==2.15.0 transformers==5.23.0 open-clip-torch==3.3.0 \
        scikit-image==0.26.0 sentencepiece==0.2.3 pillow
    python3 scripts/make_encoder_fixtures.py
"""
import gzip
import json
import os
import shutil
import tempfile

import numpy as np
import open_clip
import skimage
import torch
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training", "tests", "fixtures")
SKIMAGE = os.path.join(os.path.dirname(skimage.__file__), "data")

# Real photographs in several modes and formats.
IMAGES = {
    "chelsea.png": "RGB PNG, 451x300",
    "camera.png": "L (grayscale) PNG, 512x512",
    "logo.png": "RGBA PNG, 500x500",
    "horse.png": "RGBA PNG with transparency, 400x328",
    "rocket.jpg": "RGB JPEG, 640x427",
    "no_time_for_that_tiny.gif": "P (palette) GIF, 14x25",
    "chelsea.webp": "RGB WebP (lossy, made from chelsea.png), 451x300",
}

CAPTIONS = [
    "A cat sitting on a wooden floor.",
    "a photo of an astronaut",
    "Um gato laranja deitado no chão de madeira!",
    "Fotografia de um foguete na plataforma de lançamento, ao pôr do sol.",
    "  Café   com leite  e pão de queijo  ",
    "An AMAZING rocket launch -- 3, 2, 1... lift-off!!",
    "A long caption that goes on and on about a small red triangle to the left of a blue circle "
    "above a green square next to a yellow star under a purple hexagon beside an orange pentagon "
    "near a white diamond and a black ellipse, which is far longer than seventy-seven tokens allow; "
    "uma legenda longa demais, que continua sem parar sobre formas coloridas, até ser cortada.",
    "",
    "rocket 🚀 launch ▁ test\tTAB\u00a0nbsp",
    "日本語のキャプション, Ελληνικά ΣΟΦΟΣ and ﬁ ligature",
]


def write_images():
    folder = os.path.join(ROOT, "images")
    os.makedirs(folder, exist_ok=True)
    for name in IMAGES:
        if name == "chelsea.webp":
            Image.open(os.path.join(SKIMAGE, "chelsea.png")).save(os.path.join(folder, name), quality=80)
        else:
            shutil.copy(os.path.join(SKIMAGE, name), os.path.join(folder, name))
    return folder


def clip_vocab():
    """Rebuilds OpenAI's CLIP BPE vocabulary and merges from open_clip's copy of the merges."""
    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def save_reference(folder, model, processor, images_dir, family):
    images = [Image.open(os.path.join(images_dir, n)) for n in IMAGES]
    with torch.no_grad():
        pix = processor(images=images, return_tensors="pt")["pixel_values"]
        padding = "max_length" if family != "clip" else True
        tok = processor(text=CAPTIONS, return_tensors="pt", padding=padding, truncation=True)
        img_emb = model.get_image_features(pixel_values=pix)
        if not torch.is_tensor(img_emb):
            img_emb = img_emb.pooler_output
        kwargs = {"input_ids": tok["input_ids"]}
        if family == "clip":
            kwargs["attention_mask"] = tok["attention_mask"]
        txt_emb = model.get_text_features(**kwargs)
        if not torch.is_tensor(txt_emb):
            txt_emb = txt_emb.pooler_output
    img_emb = torch.nn.functional.normalize(img_emb, dim=-1)
    txt_emb = torch.nn.functional.normalize(txt_emb, dim=-1)
    pix.numpy().astype("<f4").tofile(os.path.join(folder, "reference_pixels.f32"))
    ids = tok["input_ids"].tolist()
    mask = tok["attention_mask"].tolist() if "attention_mask" in tok else None
    ref = {
        "family": family,
        "images": list(IMAGES),
        "pixel_shape": list(pix.shape),
        "captions": CAPTIONS,
        "input_ids": [
            [t for t, m in zip(row, mrow) if m] if (mask and family == "clip") else row
            for row, mrow in zip(ids, mask or ids)
        ],
        "image_embeddings": img_emb.tolist(),
        "text_embeddings": txt_emb.tolist(),
    }
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(ref, f)


def new_checkpoint_folder(name, seed):
    """An empty fixtures/<name> folder, with torch seeded so the random weights are reproducible."""
    folder = os.path.join(ROOT, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    torch.manual_seed(seed)
    return folder


def perturb(model):
    """Random init leaves some parameters at exactly 0/1; perturb all so every tensor matters."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)


def save_checkpoint(folder, model, processor, image_processor):
    """Writes the Hugging Face layout. Hub checkpoints carry preprocessor_config.json (the older
    layout), so that one is kept instead of transformers 5's processor_config.json."""
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    os.remove(os.path.join(folder, "processor_config.json"))


def make_clip(images_dir):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    folder = new_checkpoint_folder("clip-tiny", seed=0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=dict(image_size=64, patch_size=16, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, hidden_act="quick_gelu"),
        projection_dim=24,
    )
    model = CLIPModel(config).eval()
    perturb(model)
    vocab, merges = clip_vocab()
    tokenizer = CLIPTokenizerFast(vocab=vocab, merges=merges, model_max_length=77)
    # The PIL backend is the reference (Pillow's resampling, as CLIP was trained with); the
    # torchvision backend that transformers 5 picks by default differs by a few 1e-3.
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    save_checkpoint(folder, model, processor, image_processor)
    for extra in ["vocab.json", "merges.txt"]:  # tokenizer.json holds both
        p = os.path.join(folder, extra)
        if os.path.exists(p):
            os.remove(p)
    save_reference(folder, model, processor, images_dir, "clip")


def train_spiece(path):
    """Trains a small SentencePiece unigram model laid out like SigLIP's (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm

    corpus = CAPTIONS + [
        "a photo of a cat", "a photo of a dog on the beach", "uma foto de um cachorro na praia",
        "a small red triangle left of a blue circle", "um pequeno triângulo vermelho à esquerda de um círculo azul",
        "the astronaut floats above the earth", "o astronauta flutua sobre a terra",
        "a rocket on the launch pad at sunset", "um foguete na plataforma ao pôr do sol",
        "coffee with milk and cheese bread", "café com leite e pão de queijo",
        "a grayscale photo of a cameraman", "uma fotografia em tons de cinza de um cinegrafista",
    ]
    colours = [("red", "vermelho"), ("blue", "azul"), ("green", "verde"), ("yellow", "amarelo"), ("white", "branco")]
    shapes = [("triangle", "triângulo"), ("circle", "círculo"), ("square", "quadrado"), ("star", "estrela")]
    for ce, cp in colours:
        for se, sp in shapes:
            for ce2, cp2 in colours:
                corpus.append(f"a {ce} {se} left of a {ce2} circle")
                corpus.append(f"um {sp} {cp} à esquerda de um círculo {cp2}")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(c.lower() for c in corpus if c))
        corpus_path = f.name
    prefix = path[: -len(".model")]
    spm.SentencePieceTrainer.train(
        input=corpus_path, model_prefix=prefix, vocab_size=250, model_type="unigram", hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, minloglevel=2,
    )
    os.remove(prefix + ".vocab")
    os.remove(corpus_path)


def make_siglip(images_dir):
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor, SiglipTokenizer

    folder = new_checkpoint_folder("siglip-tiny", seed=1)
    config = SiglipConfig(
        text_config=dict(vocab_size=250, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, projection_size=24),
        vision_config=dict(image_size=48, patch_size=16, hidden_size=24, intermediate_size=40,
                           num_hidden_layers=2, num_attention_heads=2),
    )
    model = SiglipModel(config).eval()
    perturb(model)
    spiece = os.path.join(folder, "spiece.model")
    train_spiece(spiece)
    tokenizer = SiglipTokenizer(vocab_file=spiece, model_max_length=64)
    image_processor = SiglipImageProcessorPil(size={"height": 48, "width": 48})
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    save_checkpoint(folder, model, processor, image_processor)
    save_reference(folder, model, processor, images_dir, "siglip")


def gemma_style_bpe():
    """A small BPE vocabulary laid out like Gemma's (pad 0, eos 1, bos 2, unk 3, mask 4, byte
    fallback pieces), trained with the tokenizers library on the fixture corpus."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    corpus = [c.lower() for c in CAPTIONS if c] * 5 + [
        "a photo of a cat", "uma foto de um gato", "a rocket at sunset", "um foguete ao pôr do sol",
    ] * 10
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False))
    data = json.loads(tok.to_str())
    return data["model"]["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]


def make_siglip2(images_dir):
    """A fixed-resolution SigLIP 2 checkpoint: SigLIP architecture, Gemma-style tokenizer.json."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    folder = new_checkpoint_folder("siglip2-tiny", seed=2)
    vocab, merges = gemma_style_bpe()
    config = SiglipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, projection_size=24),
        vision_config=dict(image_size=32, patch_size=16, hidden_size=24, intermediate_size=40,
                           num_hidden_layers=2, num_attention_heads=2),
    )
    model = SiglipModel(config).eval()
    perturb(model)
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=merges, model_max_length=64)
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32}, resample=2)
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    save_checkpoint(folder, model, processor, image_processor)
    save_reference(folder, model, processor, images_dir, "siglip2")


def main():
    images_dir = write_images()
    make_clip(images_dir)
    make_siglip(images_dir)
    make_siglip2(images_dir)
    print("fixtures written to", os.path.abspath(ROOT))


if __name__ == "__main__":
    main()
