"""METER image processor and processor.

Copied into every converted METER folder: it imports only numpy, PIL and transformers (torch and torchvision, when
installed, for `MeterImageProcessorFast`).
The tokenizer is the RoBERTa / BERT tokenizer METER was trained with (saved beside this file).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from transformers import BatchFeature
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available, logging

if is_torchvision_available():
    import torch
    from transformers.models.clip.image_processing_clip import CLIPImageProcessor

logger = logging.get_logger(__name__)

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


def _meter_kwargs(transform: str, size, image_mean, image_std, crop_size) -> dict:
    """Stock CLIP processor arguments for METER's transform: shorter side to `size`, a `size` square crop."""
    spec = TRANSFORMS[transform]
    if isinstance(size, dict) and "shortest_edge" not in size:  # tolerate the {"height", "width"} form
        size = size.get("height")
    edge = size["shortest_edge"] if isinstance(size, dict) else int(size)
    return {
        "size": {"shortest_edge": int(edge)},
        "crop_size": crop_size if crop_size is not None else {"height": int(edge), "width": int(edge)},
        "image_mean": list(image_mean if image_mean is not None else spec["mean"]),
        "image_std": list(image_std if image_std is not None else spec["std"]),
    }


class MeterImageProcessor(CLIPImageProcessorPil):
    """METER's evaluation transform (meter/transforms/transform.py), e.g. for "clip":
    RGBA -> Resize(size, BICUBIC) of the shorter side -> CenterCrop(size) -> RGB -> ToTensor -> Normalize(CLIP).

    transformers' `CLIPImageProcessorPil` does these steps with PIL (shorter side to `size`, the longer one
    int(size * long / short), as torchvision). Two things differ and are overridden here:
    - alpha: transformers composites transparent pixels onto white first; METER drops the alpha with PIL's
      `convert("RGB")`, for "clip" only after resizing and cropping the RGBA image (PIL resizes RGBA with its alpha);
    - crop offsets: transformers floors (side - size) / 2, torchvision rounds it (halves to the even offset), which
      moves the crop by a pixel whenever side - size is odd and (side - size) / 2 rounds up.
    """

    model_input_names = ["pixel_values"]
    size = {"shortest_edge": 384}
    crop_size = {"height": 384, "width": 384}

    def __init__(self, size=384, transform: str = "clip", image_mean=None, image_std=None, crop_size=None, **kwargs):
        self.transform = transform_name(transform)
        super().__init__(**_meter_kwargs(self.transform, size, image_mean, image_std, crop_size), **kwargs)

    def fetch_images(self, images):
        return _open_local_paths(images, super().fetch_images)

    def process_image(self, image, *args, **kwargs):
        return super().process_image(_as_pil(image), *args, **kwargs)

    def convert_to_rgb(self, image, input_data_format=None):
        if isinstance(image, Image.Image):  # alpha kept for "clip" (dropped after the crop), else dropped now
            return np.asarray(image.convert("RGBA" if TRANSFORMS[self.transform]["rgba"] else "RGB"))
        return super().convert_to_rgb(image, input_data_format=input_data_format)

    def center_crop(self, image: np.ndarray, size, **kwargs) -> np.ndarray:
        """torchvision's CenterCrop offsets on a channels-first array, then the colour channels only (METER's
        `convert("RGB")` right after the crop)."""
        height, width = image.shape[-2:]
        if height < size.height or width < size.width:  # cannot happen after the shorter-side resize
            raise ValueError(f"image {width}x{height} is smaller than the crop {size.width}x{size.height}")
        top = int(round((height - size.height) / 2.0))
        left = int(round((width - size.width) / 2.0))
        return image[:3, top : top + size.height, left : left + size.width]

    def _preprocess(self, images, *args, return_tensors=None, **kwargs) -> BatchFeature:
        pixels = super()._preprocess(images, *args, return_tensors="np", **kwargs)["pixel_values"]
        return BatchFeature({"pixel_values": pixels}, tensor_type=return_tensors)

    def transform_image(self, image, size: int | None = None) -> np.ndarray:
        """One image -> float32 [3, size, size]."""
        kwargs = {"size": {"shortest_edge": int(size)}, "crop_size": int(size)} if size else {}
        return self.preprocess(image, **kwargs)["pixel_values"][0]


if is_torchvision_available():

    class MeterImageProcessorFast(CLIPImageProcessor):
        """`MeterImageProcessor` on transformers' torchvision backend (`CLIPImageProcessor`): batched, any device.

        The same overrides as the PIL class: alpha dropped as METER does (for "clip" after resizing the RGBA image,
        its colours premultiplied by alpha during the resize like PIL's), torchvision's crop offsets. Not
        bit-exact: torchvision's bicubic resize rounds differently from PIL's, so some pixels are one grey level
        off METER's (at most 1/255 / std after normalising); the PIL class stays the default.
        """

        model_input_names = ["pixel_values"]
        size = {"shortest_edge": 384}
        crop_size = {"height": 384, "width": 384}

        def __init__(self, size=384, transform: str = "clip", image_mean=None, image_std=None, crop_size=None,
                     **kwargs):
            self.transform = transform_name(transform)
            super().__init__(**_meter_kwargs(self.transform, size, image_mean, image_std, crop_size), **kwargs)

        def fetch_images(self, images):
            return _open_local_paths(images, super().fetch_images)

        def process_image(self, image, *args, do_convert_rgb=None, **kwargs):
            if do_convert_rgb is not False:  # alpha kept for "clip" (dropped after the crop), else dropped now
                image = _as_pil(image).convert("RGBA" if TRANSFORMS[self.transform]["rgba"] else "RGB")
            return super().process_image(image, *args, do_convert_rgb=False, **kwargs)

        def resize(self, image, size, **kwargs):
            if image.shape[-3] != 4:
                return super().resize(image, size, **kwargs)
            # PIL resizes RGBA with premultiplied colours (its RGBa mode) and divides them back afterwards
            rgba = image.to(torch.int32)
            alpha = rgba[..., 3:, :, :]
            product = rgba[..., :3, :, :] * alpha + 128
            premultiplied = torch.cat([((product >> 8) + product) >> 8, alpha], dim=-3).to(torch.uint8)
            resized = super().resize(premultiplied, size, **kwargs).to(torch.int32)
            colour, alpha = resized[..., :3, :, :], resized[..., 3:, :, :]
            divided = torch.clamp(255 * colour // alpha.clamp(min=1), max=255)
            colour = torch.where((alpha == 0) | (alpha == 255), colour, divided)
            return torch.cat([colour, alpha], dim=-3).to(torch.uint8)

        def center_crop(self, image, size, **kwargs):
            """torchvision's CenterCrop offsets, then the colour channels only (METER's `convert("RGB")`)."""
            height, width = image.shape[-2:]
            if height < size.height or width < size.width:  # cannot happen after the shorter-side resize
                raise ValueError(f"image {width}x{height} is smaller than the crop {size.width}x{size.height}")
            top = int(round((height - size.height) / 2.0))
            left = int(round((width - size.width) / 2.0))
            return image[..., :3, top : top + size.height, left : left + size.width]

        def _preprocess(self, images, *args, return_tensors=None, **kwargs) -> BatchFeature:
            pixels = super()._preprocess(images, *args, return_tensors="pt", **kwargs)["pixel_values"]
            return BatchFeature({"pixel_values": pixels}, tensor_type=return_tensors)

        def transform_image(self, image, size: int | None = None):
            """One image -> float32 tensor [3, size, size]."""
            kwargs = {"size": {"shortest_edge": int(size)}, "crop_size": int(size)} if size else {}
            return self.preprocess(image, **kwargs)["pixel_values"][0]

else:

    def __getattr__(name):
        if name == "MeterImageProcessorFast":  # what auto_map's fast entry asks for (use_fast=True)
            logger.warning_once("torchvision is not installed: MeterImageProcessorFast falls back to the PIL "
                                "MeterImageProcessor")
            return MeterImageProcessor
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.dtype != np.uint8:
        raise ValueError("array images must be uint8 HWC (what PIL would load); pass PIL images otherwise")
    return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)


def _open_local_paths(images, fetch):
    """Local image paths opened as they are (no EXIF turn, no mode change), like METER's datasets; the rest
    (URLs, images, arrays) as transformers fetches them."""
    if isinstance(images, (list, tuple)):
        return [_open_local_paths(image, fetch) for image in images]
    if isinstance(images, (str, os.PathLike)) and not str(images).startswith(("http://", "https://")):
        return _as_pil(images)
    return fetch(images)


__all__ = ["MeterImageProcessor", "MeterProcessor"]
