"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/): every statement of the
golden files for `statement`; small images of every decoded format and shape for `image`
(colour types, bit depths, palettes, alpha, extreme aspect ratios, a truncated JPEG); the
manifests of the committed fixture databases (whole files and bodies) for `manifest`; and
their row archives, each after the 40-byte prefix of its segment's manifest entry, for `rows`.
Fuzzing adds its finds beside them; commit the interesting ones. Needs Pillow.

Usage: python3 scripts/make_fuzz_seeds.py
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def save(target: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)


def statements() -> None:
    for slt in sorted((ROOT / "tests" / "slt").glob("*.slt")):
        lines = slt.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith(("statement", "query")) and i + 1 < len(lines):
                body = []
                for following in lines[i + 1 :]:
                    if not following.strip() or following.startswith("----"):
                        break
                    body.append(following)
                save("statement", "\n".join(body).encode())
    save("statement", b"year > 3 AND (artist LIKE 'a%' OR text IN ('x', 'y')) AND NOT sold")


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def images() -> None:
    gradient = Image.linear_gradient("L").resize((24, 16))
    rgb = Image.merge("RGB", (gradient, gradient.rotate(90, expand=False), gradient))
    shapes = {
        "rgb": rgb,
        "rgba": rgb.convert("RGBA"),
        "grey": gradient,
        "grey-alpha": gradient.convert("LA"),
        "palette": rgb.convert("P"),
        "binary": gradient.convert("1"),
    }
    for name, img in shapes.items():
        for fmt in ("PNG", "GIF", "BMP", "TIFF", "WEBP"):
            try:
                save("image", encoded(img, fmt))
            except (OSError, ValueError):
                pass  # a mode the format cannot hold
        if img.mode in ("RGB", "L"):
            save("image", encoded(img, "JPEG", quality=80))
    save("image", encoded(Image.new("I;16", (8, 8), 40000), "PNG"))
    save("image", encoded(rgb.resize((200, 1)), "PNG"))
    save("image", encoded(rgb.resize((1, 200)), "PNG"))
    jpeg = encoded(rgb.resize((64, 64)), "JPEG")
    save("image", jpeg[: len(jpeg) * 3 // 4])
    frames = [rgb, rgb.rotate(180)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    save("image", out.getvalue())


HEADER_LEN = 64


def databases() -> None:
    for manifest in sorted((ROOT / "tests" / "fixtures").glob("*/_versions/*.manifest")):
        data = manifest.read_bytes()
        save("manifest", data)
        save("manifest", data[HEADER_LEN:])
        files = manifest.parent.parent / "files"
        for collection in json.loads(data[HEADER_LEN:])["collections"]:
            for seg in collection["segments"]:
                rows = files / seg["rows_file"]["name"]
                if not rows.exists():
                    continue  # vacuumed since
                shape = struct.pack(
                    "<5Q",
                    seg["rows"],
                    seg["texts"],
                    seg["min_row_id"],
                    seg["max_row_id"],
                    seg["blob_file"]["len"] - HEADER_LEN,
                )
                save("rows", shape + rows.read_bytes()[HEADER_LEN:])


if __name__ == "__main__":
    statements()
    images()
    databases()
