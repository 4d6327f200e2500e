"""The torchvision-backed ("fast") OFA / METER image processors: built on transformers' stock torchvision
processors, offered through auto_map only when asked for, and absent-torchvision safe.

Pixels are compared with the same upstream recordings as tests/test_image_processors.py. The tests that need
torchvision skip without it (the project's CI has none); the others assert what a use_fast request gives there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfport.converters.meter_preprocessing import save_meter_preprocessing
from hfport.models.meter import processing_meter
from hfport.models.ofa import processing_ofa

try:
    import torchvision  # noqa: F401
    from transformers.utils import is_torchvision_available

    HAS_TORCHVISION = is_torchvision_available()
except Exception:  # PyPI's torchvision next to the project's torch fails to import
    HAS_TORCHVISION = False
needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed (CI has none)")
without_torchvision = pytest.mark.skipif(HAS_TORCHVISION, reason="checks the behaviour where torchvision is absent")

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "image_recordings.json").read_text())
RECORDED = dict(np.load(DATA / "image_recordings.npz"))
TOKENIZER = DATA / "meter_tokenizers" / "tiny-bert-uncased"
STDS = {"ofa": (0.5, 0.5, 0.5), "meter_clip": processing_meter.TRANSFORMS["clip"]["std"],
        "meter_imagenet": processing_meter.TRANSFORMS["imagenet"]["std"]}


def source(name: str) -> Image.Image:
    with Image.open(DATA / "images" / f"{name}.png") as image:
        image.load()
        return image.copy()


@pytest.fixture(scope="module")
def meter_folders(tmp_path_factory):
    """A METER folder as converted by default, and one converted with fast_image_processor=True."""
    folders = {}
    for fast in (False, True):
        folder = tmp_path_factory.mktemp(f"meter_fast_{fast}")
        save_meter_preprocessing(folder, tokenizer_source=TOKENIZER, max_text_len=8, image_size=16,
                                 fast_image_processor=fast)
        folders[fast] = folder
    return folders


def image_auto_map(folder: Path) -> tuple:
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]["AutoImageProcessor"]
    processor = json.loads((folder / "processor_config.json").read_text())["image_processor"]["auto_map"]
    return preprocessor, processor["AutoImageProcessor"]


def test_converted_folders_offer_the_fast_image_processor_only_when_asked(meter_folders):
    assert image_auto_map(meter_folders[False]) == ("processing_meter.MeterImageProcessor",) * 2
    offered = ["processing_meter.MeterImageProcessor", "processing_meter.MeterImageProcessorFast"]
    assert image_auto_map(meter_folders[True]) == (offered, offered)


@without_torchvision
def test_without_torchvision_use_fast_gets_the_pil_processor_and_its_recorded_pixels(meter_folders, caplog):
    from transformers import AutoImageProcessor, AutoProcessor
    from transformers.utils import logging

    logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            fast = AutoImageProcessor.from_pretrained(str(meter_folders[True]), trust_remote_code=True, use_fast=True)
    finally:
        logging.disable_propagation()
    assert type(fast).__name__ == "MeterImageProcessor"
    assert "torchvision is not installed: MeterImageProcessorFast falls back" in caplog.text
    default = AutoImageProcessor.from_pretrained(str(meter_folders[True]), trust_remote_code=True)
    assert type(default).__name__ == "MeterImageProcessor"
    processor = AutoProcessor.from_pretrained(str(meter_folders[True]), trust_remote_code=True, use_fast=True)
    batch = processor(images=source("rgba_19x41"), text="a cat", return_tensors="np")
    assert np.abs(batch["pixel_values"][0] - RECORDED["meter_clip/rgba_19x41"]).max() == 0.0
    # the copied modules import, and name the fast classes, without torchvision
    assert processing_ofa.OFAImageProcessorFast is processing_ofa.OFAImageProcessor
    assert processing_meter.MeterImageProcessorFast is processing_meter.MeterImageProcessor


# ---- with torchvision -------------------------------------------------------------------------------------------

def fast_pipelines():
    return {
        "ofa": processing_ofa.OFAImageProcessorFast(size=META["ofa_size"]),
        "meter_clip": processing_meter.MeterImageProcessorFast(size=META["meter_sizes"]["clip"], transform="clip"),
        "meter_imagenet": processing_meter.MeterImageProcessorFast(size=META["meter_sizes"]["imagenet"],
                                                                   transform="imagenet"),
    }


def grey_levels(pipeline: str, got, expected) -> np.ndarray:
    """|got - expected| per pixel in 0..255 input steps (the normalisation's std undone)."""
    std = np.asarray(STDS[pipeline], dtype=np.float64)[:, None, None]
    return (np.abs(np.asarray(got, dtype=np.float64) - expected) * std * 255).max(axis=0)


@needs_torchvision
def test_fast_processors_are_the_stock_torchvision_processors_with_only_ofa_and_meter_differences_overridden():
    from transformers import BlipImageProcessor, CLIPImageProcessor
    from transformers.image_processing_backends import TorchvisionBackend

    assert issubclass(processing_ofa.OFAImageProcessorFast, BlipImageProcessor)
    assert issubclass(processing_meter.MeterImageProcessorFast, CLIPImageProcessor)
    assert issubclass(BlipImageProcessor, TorchvisionBackend) and issubclass(CLIPImageProcessor, TorchvisionBackend)
    backend = {name for name, value in vars(TorchvisionBackend).items() if callable(value)}
    assert backend & set(vars(processing_ofa.OFAImageProcessorFast)) == {"fetch_images", "process_image",
                                                                          "_preprocess"}
    assert backend & set(vars(processing_meter.MeterImageProcessorFast)) == {
        "__init__", "fetch_images", "process_image", "resize", "center_crop", "_preprocess"}


@needs_torchvision
@pytest.mark.parametrize("pipeline", sorted(STDS))
def test_fast_pixels_are_within_torchvisions_bicubic_rounding_of_the_recordings(pipeline):
    # torchvision's uint8 bicubic rounds differently from PIL's fixed-point one: a few pixels move by up to 3 of
    # 255 steps (measured: at most 3, on the alpha images flattened before the resize; at most 1 on RGB / L / P / 1)
    processor = fast_pipelines()[pipeline]
    for name, meta in META["images"].items():
        got = processor(source(name))[processor.model_input_names[0]][0]
        assert got.dtype.is_floating_point and tuple(got.shape) == RECORDED[f"{pipeline}/{name}"].shape
        levels = grey_levels(pipeline, got.numpy(), RECORDED[f"{pipeline}/{name}"])
        if pipeline == "meter_clip" and "A" in meta["mode"]:
            continue  # premultiplied alpha amplifies them: see the next test
        assert levels.max() <= (1 if "A" not in meta["mode"] else 3) + 1e-3, (name, levels.max())
    # no resize at all (a 16x16 image to OFA's 16x16): only float rounding of the fused normalisation is left
    got = processor(source("rgb_16x16"))[processor.model_input_names[0]][0].numpy()
    if pipeline == "ofa":
        assert np.abs(got - RECORDED["ofa/rgb_16x16"]).max() <= 1e-6


@needs_torchvision
def test_meter_clip_fast_resizes_rgba_premultiplied_like_pil_unlike_the_stock_processor():
    from transformers import CLIPImageProcessor

    spec = processing_meter.TRANSFORMS["clip"]
    size = META["meter_sizes"]["clip"]
    expected = RECORDED["meter_clip/rgba_19x41"]
    ours = fast_pipelines()["meter_clip"](source("rgba_19x41"))["pixel_values"][0].numpy()
    stock = CLIPImageProcessor(size={"shortest_edge": size}, crop_size=size, image_mean=list(spec["mean"]),
                               image_std=list(spec["std"]))(source("rgba_19x41"), return_tensors="pt")
    ours_levels = grey_levels("meter_clip", ours, expected)
    stock_levels = grey_levels("meter_clip", stock["pixel_values"][0].numpy(), expected)
    # stock composites onto white: most pixels are wrong; ours differs where a rounding step is divided by a
    # tiny alpha (measured: 29 of 256 pixels above 3 steps, mean 4.6 steps, where stock's mean is 160)
    assert np.median(ours_levels) <= 1 and np.median(stock_levels) > 100
    assert ours_levels.mean() < stock_levels.mean() / 10


@needs_torchvision
def test_use_fast_loads_the_torchvision_class_where_the_folder_offers_it(meter_folders):
    import torch
    from transformers import AutoImageProcessor, AutoProcessor

    def loaded(folder, **kwargs):
        return type(AutoImageProcessor.from_pretrained(str(folder), trust_remote_code=True, **kwargs)).__name__

    assert loaded(meter_folders[True], use_fast=True) == "MeterImageProcessorFast"
    assert loaded(meter_folders[True], backend="torchvision") == "MeterImageProcessorFast"
    assert loaded(meter_folders[True], use_fast=False) == "MeterImageProcessor"
    assert loaded(meter_folders[True]) == "MeterImageProcessorFast"  # transformers 5.23 defaults to torchvision
    assert loaded(meter_folders[False], use_fast=True) == "MeterImageProcessor"  # not offered: PIL stays
    processor = AutoProcessor.from_pretrained(str(meter_folders[True]), trust_remote_code=True, use_fast=True)
    assert type(processor.image_processor).__name__ == "MeterImageProcessorFast"
    batch = processor(images=[source("gray_33x33"), source("rgb_37x23")], text=["a cat", "a dog"],
                      return_tensors="pt")
    assert isinstance(batch["pixel_values"], torch.Tensor) and batch["pixel_values"].shape == (2, 3, 16, 16)
    assert grey_levels("meter_clip", batch["pixel_values"][0].numpy(), RECORDED["meter_clip/gray_33x33"]).max() <= 1.001


@needs_torchvision
def test_ofa_fast_returns_patch_images_and_masks_as_tensors():
    import torch

    processor = processing_ofa.OFAImageProcessorFast(size=16)
    batch = processor([source("palette_45x28"), source("la_20x31")], return_tensors="pt")
    assert sorted(batch) == ["patch_images", "patch_masks"]
    assert batch["patch_images"].shape == (2, 3, 16, 16) and batch["patch_masks"].tolist() == [True, True]
    assert batch["patch_masks"].dtype == torch.bool
    assert torch.equal(processor.transform(source("palette_45x28")), batch["patch_images"][0])
    assert np.abs(batch["patch_images"][0].numpy() - RECORDED["ofa/palette_45x28"]).max() <= 1e-6
