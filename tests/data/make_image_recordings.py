"""Record the pixels OFA's and METER's own image transforms produce, for tests/test_image_processors.py.

Run with an interpreter that has torchvision (the transforms are torchvision Compose pipelines on PIL images;
torchvision does not install beside the project's torch, so use a throwaway venv, e.g.
`python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.9.1 torchvision==0.24.1 pillow numpy`):

    /tmp/tv/bin/python tests/data/make_image_recordings.py --meter-root METER --out tests/data

* writes the source images `images/*.png` (generated, odd sizes and modes: RGB, RGBA with varying alpha,
  grayscale L, palette P, LA, 1-bit) and `image_recordings.npz` (float32 arrays) + `image_recordings.json` (meta);
* OFA: the evaluation transform of data/mm_data/caption_dataset.py (also vqa_gen / snli_ve), written out here
  because those modules import fairseq: Compose([convert("RGB"), Resize((S, S), BICUBIC), ToTensor(),
  Normalize(0.5, 0.5)]);
* METER: the real `meter.transforms.keys_to_transforms` imported from a METER checkout, applied to the image
  opened the way meter/datasets/base_dataset.py `get_raw_image` opens it (RGBA for clip transforms, else RGB).

Sizes are tiny on purpose (the arrays are kept in the repository).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

OFA_SIZE = 16
METER_SIZES = {"clip": 16, "imagenet": 12}


def source_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(20240611)

    def noise(h, w, c):
        # smooth gradients + noise: bicubic ringing and clipping both show up
        y, x = np.mgrid[0:h, 0:w]
        base = (np.sin(x / 3.0)[..., None] * 90 + np.cos(y / 4.0)[..., None] * 90 + 128)
        return np.clip(base + rng.normal(0, 40, (h, w, c)), 0, 255).astype(np.uint8)

    images = {
        "rgb_37x23": Image.fromarray(noise(23, 37, 3), "RGB"),
        "rgba_19x41": Image.fromarray(noise(41, 19, 4), "RGBA"),
        "gray_33x33": Image.fromarray(noise(33, 33, 1)[..., 0], "L"),
        "palette_45x28": Image.fromarray(noise(28, 45, 3), "RGB").quantize(colors=23),
        "la_20x31": Image.fromarray(noise(31, 20, 2), "LA"),
        "bw_27x18": Image.fromarray(noise(18, 27, 1)[..., 0] > 128),
        "rgb_16x16": Image.fromarray(noise(16, 16, 3), "RGB"),
    }
    alpha = np.array(images["rgba_19x41"])
    alpha[..., 3] = np.where(np.arange(19)[None, :] < 6, 0, alpha[..., 3])  # fully transparent stripe
    images["rgba_19x41"] = Image.fromarray(alpha, "RGBA")
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meter-root", required=True, help="METER checkout (meter/transforms is imported)")
    parser.add_argument("--out", required=True, help="tests/data")
    args = parser.parse_args()

    import torch
    import torchvision
    from torchvision import transforms

    sys.path.insert(0, str(Path(args.meter_root).resolve()))
    from meter.transforms import keys_to_transforms

    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    ofa_transform = transforms.Compose([
        lambda image: image.convert("RGB"),
        transforms.Resize((OFA_SIZE, OFA_SIZE), interpolation=Image.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
    ])
    arrays, meta = {}, {}
    for name, image in source_images().items():
        path = out / "images" / f"{name}.png"
        image.save(path)
        with Image.open(path) as reopened:  # record from the file the tests read
            reopened.load()
            image = reopened.copy()
        arrays[f"ofa/{name}"] = ofa_transform(image).numpy()
        for key, size in METER_SIZES.items():
            meter_transform = keys_to_transforms([key], size=size)[0]
            opened = image.convert("RGBA") if "clip" in key else image.convert("RGB")
            arrays[f"meter_{key}/{name}"] = meter_transform(opened).numpy()
        meta[name] = {"mode": image.mode, "size": list(image.size)}
    np.savez_compressed(out / "image_recordings.npz", **arrays)
    (out / "image_recordings.json").write_text(json.dumps({
        "generator": "tests/data/make_image_recordings.py",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "pillow": Image.__version__, "numpy": np.__version__},
        "ofa_size": OFA_SIZE, "meter_sizes": METER_SIZES, "images": meta,
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
