"""METER image processor and processor.

Copied into every converted METER folder: it imports only numpy, PIL and transformers.
The tokenizer is the RoBERTa / BERT tokenizer METER was trained with (saved beside this file).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

# METER's meter/transforms: which normalisation each transform key uses, and whether the image is converted to
# RGB after the crop ("clip": the dataset opens images as RGBA, resizes them with their alpha, drops it last)
# or before everything (every other key: the dataset opens images as RGB).
TRANSFORMS = {
    "clip": {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711), "rgba": True},
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "rgba": False},
    "vit": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "rgba": False},
}


def transform_name(key: str) -> str:
    """METER's transform key -> its evaluation transform ("clip_randaug" evaluates as "clip")."""
    base = str(key).removesuffix("_randaug")
    if base not in TRANSFORMS:
        raise ValueError(f"METER transform {key!r} is not supported; expected one of {', '.join(TRANSFORMS)}")
    return base


class MeterImageProcessor(BaseImageProcessor):
    """METER's evaluation transform (meter/transforms/transform.py), e.g. for "clip":
    RGBA -> Resize(size, BICUBIC) of the shorter side -> CenterCrop(size) -> RGB -> ToTensor -> Normalize(CLIP).

    The resize and crop follow torchvision's rules for PIL images (new long side = int(size * long / short);
    crop offsets = round((side - size) / 2)); torchvision resizes PIL images with PIL itself.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int = 384,
        transform: str = "clip",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        resample: int = int(Image.Resampling.BICUBIC),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(size, dict):
            size = int(size.get("shortest_edge") or size.get("height"))
        self.size = int(size)
        self.transform = transform_name(transform)
        spec = TRANSFORMS[self.transform]
        self.image_mean = [float(m) for m in (image_mean if image_mean is not None else spec["mean"])]
        self.image_std = [float(s) for s in (image_std if image_std is not None else spec["std"])]
        self.resample = int(resample)

    def transform_image(self, image, size: int | None = None) -> np.ndarray:
        """One image -> float32 [3, size, size]."""
        size = int(size or self.size)
        image = _as_pil(image)
        image = image.convert("RGBA") if TRANSFORMS[self.transform]["rgba"] else image.convert("RGB")
        image = _resize_shorter_side(image, size, Image.Resampling(self.resample))
        image = _center_crop(image, size)
        image = image.convert("RGB")
        return _to_normalized_chw(image, self.image_mean, self.image_std)

    def preprocess(self, images, return_tensors=None, size: int | None = None, **kwargs) -> BatchFeature:
        images = images if isinstance(images, (list, tuple)) else [images]
        pixels = np.stack([self.transform_image(image, size) for image in images])
        return BatchFeature({"pixel_values": pixels}, tensor_type=return_tensors)

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def to_dict(self):
        output = super().to_dict()
        output.pop("_valid_kwargs_names", None)
        return output


class MeterProcessor(ProcessorMixin):
    """Image(s) + text -> `input_ids`, `attention_mask`, `pixel_values` for the `MeterFor*` models.

    Text is tokenized like METER's datasets: padded to `max_text_len` and truncated to it. For NLVR2 pass
    `images` as a list of (left, right) pairs: `pixel_values` is then [batch, 2, 3, size, size].
    """

    def __init__(self, image_processor, tokenizer, max_text_len: int = 40):
        super().__init__(image_processor, tokenizer)
        self.max_text_len = int(max_text_len)

    def __call__(self, images=None, text=None, return_tensors=None, **tokenizer_kwargs) -> BatchFeature:
        data = {}
        if text is not None:
            tokenizer_kwargs.setdefault("padding", "max_length")
            tokenizer_kwargs.setdefault("truncation", True)
            tokenizer_kwargs.setdefault("max_length", self.max_text_len)
            tokenizer_kwargs.setdefault("return_token_type_ids", False)  # METER feeds input_ids and the mask only
            if isinstance(text, str):  # one question is a batch of one, as for every transformers processor
                text = [text]
            data.update(self.tokenizer(text, **tokenizer_kwargs))
        if images is not None:
            items = images if isinstance(images, list) else [images]
            if items and isinstance(items[0], tuple):
                pairs = [self.image_processor(list(pair))["pixel_values"] for pair in items]
                data["pixel_values"] = np.stack(pairs)
            else:
                data.update(self.image_processor(items))
        return BatchFeature(data, tensor_type=return_tensors)


def _as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, str):
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        raise ValueError("array images must be uint8 HWC (what PIL would load); pass PIL images otherwise")
    return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)


def _resize_shorter_side(image: Image.Image, size: int, resample) -> Image.Image:
    """torchvision Resize(int) on a PIL image: the shorter side becomes `size`, the longer one int(size*long/short)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), resample=resample)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision CenterCrop on a PIL image (Python's round: halves go to the even offset)."""
    width, height = image.size
    if width < size or height < size:  # cannot happen after _resize_shorter_side; torchvision would pad
        raise ValueError(f"image {width}x{height} is smaller than the crop {size}")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _to_normalized_chw(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """torchvision's ToTensor + Normalize in float32: (x / 255 - mean) / std, channels first."""
    pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
    pixels = pixels.reshape(image.size[1], image.size[0], -1).transpose(2, 0, 1)
    mean_ = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_ = np.asarray(std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((pixels - mean_) / std_, dtype=np.float32)


__all__ = ["MeterImageProcessor", "MeterProcessor"]
