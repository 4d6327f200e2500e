"""OFA's and METER's image processors give the pixels of the original torchvision transforms; METER's text too.

Recordings: tests/data/image_recordings.{npz,json} (torchvision 0.24.1 + Pillow, via
tests/data/make_image_recordings.py; METER's own meter/transforms imported) and
tests/data/meter_tokenizer_recordings.json (transformers 4's pure-Python RoBERTa / BERT tokenizers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfport.converters.meter_preprocessing import save_meter_preprocessing
from hfport.converters.ofa_preprocessing import save_ofa_preprocessing
from hfport.errors import ConfigError
from hfport.models.meter.processing_meter import MeterImageProcessor
from hfport.models.ofa.processing_ofa import OFAImageProcessor

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "image_recordings.json").read_text())
RECORDED = dict(np.load(DATA / "image_recordings.npz"))
PIPELINES = {
    "ofa": OFAImageProcessor(size=META["ofa_size"]),
    "meter_clip": MeterImageProcessor(size=META["meter_sizes"]["clip"], transform="clip"),
    "meter_imagenet": MeterImageProcessor(size=META["meter_sizes"]["imagenet"], transform="imagenet"),
}
METER_TEXT = json.loads((DATA / "meter_tokenizer_recordings.json").read_text(encoding="utf-8"))


def source(name: str) -> Image.Image:
    with Image.open(DATA / "images" / f"{name}.png") as image:
        image.load()
        return image.copy()


def pixels(pipeline: str, image) -> np.ndarray:
    processor = PIPELINES[pipeline]
    return processor(image)[processor.model_input_names[0]][0]


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@pytest.mark.parametrize("name", sorted(META["images"]))
def test_pixels_equal_the_torchvision_transform(pipeline, name):
    expected = RECORDED[f"{pipeline}/{name}"]
    got = pixels(pipeline, source(name))
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-6


def test_the_recorded_images_cover_the_awkward_modes():
    assert {meta["mode"] for meta in META["images"].values()} >= {"RGB", "RGBA", "L", "P", "LA", "1"}


def test_meter_clip_resizes_rgba_with_its_alpha_before_dropping_it():
    # METER opens images as RGBA and converts to RGB only after the crop; converting first changes the pixels
    image = source("rgba_19x41")
    converted_first = pixels("meter_clip", image.convert("RGB"))
    assert np.abs(converted_first - RECORDED["meter_clip/rgba_19x41"]).max() > 1e-2
    assert np.abs(pixels("meter_clip", image) - RECORDED["meter_clip/rgba_19x41"]).max() == 0.0


def test_center_crop_offsets_round_half_to_even_like_torchvision():
    from transformers.image_utils import SizeDict

    resized = np.moveaxis(np.asarray(source("rgb_37x23").resize((25, 16))), -1, 0)  # int(16 * 37 / 23) = 25
    cropped = PIPELINES["meter_clip"].center_crop(resized, SizeDict(height=16, width=16))
    assert np.array_equal(cropped, resized[:, :, 4:20])  # offset round(4.5) = 4
    resized = np.moveaxis(np.asarray(source("rgb_37x23").resize((19, 12))), -1, 0)  # int(12 * 37 / 23) = 19
    cropped = PIPELINES["meter_imagenet"].center_crop(resized, SizeDict(height=12, width=12))
    assert np.array_equal(cropped, resized[:, :, 4:16])  # round(3.5) = 4 where transformers floors to 3


def test_the_processors_are_transformers_stock_pil_processors_with_only_alpha_and_crop_overridden():
    from transformers import BlipImageProcessorPil, CLIPImageProcessorPil

    assert isinstance(PIPELINES["ofa"], BlipImageProcessorPil)
    assert isinstance(PIPELINES["meter_clip"], CLIPImageProcessorPil)
    assert isinstance(PIPELINES["meter_imagenet"], CLIPImageProcessorPil)
    backend_methods = {name for name, value in vars(CLIPImageProcessorPil.__mro__[1]).items() if callable(value)}
    overridden = backend_methods & set(vars(MeterImageProcessor))
    assert overridden <= {"__init__", "fetch_images", "process_image", "convert_to_rgb", "center_crop", "_preprocess"}
    # the stock processor itself, configured like OFA, equals OFA's transform wherever no alpha is involved
    stock = BlipImageProcessorPil(size={"height": META["ofa_size"], "width": META["ofa_size"]},
                                  image_mean=[0.5] * 3, image_std=[0.5] * 3)
    for name, meta in META["images"].items():
        got = stock(source(name), return_tensors="np")["pixel_values"][0]
        if "A" not in meta["mode"]:
            assert np.abs(got - RECORDED[f"ofa/{name}"]).max() == 0.0, name


# preprocessor_config.json as the hand-written processors (before they built on transformers') saved them
OLD_CONFIGS = {
    "ofa": {"size": 16, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3,
            "image_processor_type": "OFAImageProcessor"},
    "meter_clip": {"size": 16, "transform": "clip", "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
                   "image_processor_type": "MeterImageProcessor"},
    "meter_imagenet": {"size": 12, "transform": "imagenet", "image_mean": [0.485, 0.456, 0.406],
                       "image_std": [0.229, 0.224, 0.225], "resample": 3, "image_processor_type": "MeterImageProcessor"},
}


@pytest.mark.parametrize("pipeline", sorted(OLD_CONFIGS))
def test_configs_saved_by_the_hand_written_processors_load_and_give_the_recorded_pixels(pipeline):
    cls = OFAImageProcessor if pipeline == "ofa" else MeterImageProcessor
    processor = cls.from_dict(dict(OLD_CONFIGS[pipeline]))
    for name in META["images"]:
        got = processor(source(name))[processor.model_input_names[0]][0]
        assert np.abs(got - RECORDED[f"{pipeline}/{name}"]).max() == 0.0, name
    reloaded = cls.from_dict(processor.to_dict())  # and the new config round-trips
    assert np.array_equal(reloaded(source("rgba_19x41"))[processor.model_input_names[0]],
                          processor(source("rgba_19x41"))[processor.model_input_names[0]])


def test_an_old_meter_folder_config_loads_through_auto_processor(tmp_path):
    from transformers import AutoProcessor

    save_meter_preprocessing(tmp_path, tokenizer_source=DATA / "meter_tokenizers" / "tiny-bert-uncased",
                             max_text_len=8, image_size=16)
    auto_map = {"AutoImageProcessor": "processing_meter.MeterImageProcessor",
                "AutoProcessor": "processing_meter.MeterProcessor"}
    old = {**OLD_CONFIGS["meter_clip"], "auto_map": auto_map, "processor_class": "MeterProcessor"}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(old))
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    processor_config["image_processor"] = old
    (tmp_path / "processor_config.json").write_text(json.dumps(processor_config))
    processor = AutoProcessor.from_pretrained(str(tmp_path), trust_remote_code=True)
    batch = processor(images=source("la_20x31"), text="a cat", return_tensors="np")
    assert np.abs(batch["pixel_values"][0] - RECORDED["meter_clip/la_20x31"]).max() == 0.0


def test_arrays_and_paths_give_the_same_pixels_as_pil_images():
    image = source("rgb_37x23")
    expected = RECORDED["ofa/rgb_37x23"]
    assert np.array_equal(pixels("ofa", np.asarray(image)), expected)
    assert np.array_equal(pixels("ofa", str(DATA / "images" / "rgb_37x23.png")), expected)


def test_ofa_folder_processor_returns_generate_ready_inputs(tmp_path, shared_root):
    bpe_dir = tmp_path / "bpe"
    bpe_dir.mkdir()
    (bpe_dir / "dict.txt").symlink_to(shared_root / "fixtures" / "ofa" / "bpe_tiny" / "dict.txt")
    for name in ("encoder.json", "vocab.bpe"):
        (bpe_dir / name).symlink_to(shared_root / "fixtures" / "ofa" / "bpe" / name)
    written = save_ofa_preprocessing(tmp_path / "out", bpe_dir=bpe_dir, vocab_size=77, code_dict_size=16,
                                     num_bins=16, patch_image_size=48)
    assert {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
            "processing_ofa.py"} <= set(written)
    from transformers import AutoImageProcessor, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(tmp_path / "out"), trust_remote_code=True)
    batch = processor(images=[source("gray_33x33"), source("palette_45x28")], text=["a cat", "two dogs  here"],
                      return_tensors="pt")
    assert batch["patch_images"].shape == (2, 3, 48, 48)
    assert batch["patch_masks"].tolist() == [True, True]
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].tolist()[-1] == 0  # padded on the right with <pad> = 1
    assert AutoImageProcessor.from_pretrained(str(tmp_path / "out"), trust_remote_code=True).size.height == 48


def test_ofa_patch_image_size_must_suit_the_resnet(tmp_path, shared_root):
    with pytest.raises(ConfigError, match="multiple of 16"):
        save_ofa_preprocessing(tmp_path, bpe_dir=shared_root / "fixtures" / "ofa" / "bpe", vocab_size=59457,
                               code_dict_size=8192, num_bins=1000, patch_image_size=100)


@pytest.mark.parametrize("name", sorted(METER_TEXT["tokenizers"]))
def test_meter_text_equals_meters_tokenizer_padding_and_truncation(tmp_path, name):
    from transformers import AutoProcessor

    save_meter_preprocessing(tmp_path, tokenizer_source=DATA / "meter_tokenizers" / name,
                             max_text_len=METER_TEXT["max_text_len"], image_size=32)
    processor = AutoProcessor.from_pretrained(str(tmp_path), trust_remote_code=True)
    for case in METER_TEXT["tokenizers"][name]:
        batch = processor(text=[case["text"]])
        assert batch["input_ids"][0] == case["input_ids"], case["text"]
        assert batch["attention_mask"][0] == case["attention_mask"], case["text"]
    batch = processor(images=source("rgba_19x41"), text="what color is the cat?", return_tensors="pt")
    assert sorted(batch) == ["attention_mask", "input_ids", "pixel_values"]
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


def test_meter_image_pairs_stack_for_nlvr2(tmp_path):
    save_meter_preprocessing(tmp_path, tokenizer_source=DATA / "meter_tokenizers" / "tiny-bert-uncased",
                             max_text_len=8, image_size=16)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(tmp_path), trust_remote_code=True)
    batch = processor(images=[(source("rgb_37x23"), source("gray_33x33"))], text=["a cat"], return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 2, 3, 16, 16)
    assert np.array_equal(batch["pixel_values"][0, 1].numpy(), RECORDED["meter_clip/gray_33x33"])


def test_meter_bad_inputs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="pixelbert"):
        save_meter_preprocessing(tmp_path, tokenizer_source="x", max_text_len=40, image_size=384, transform="pixelbert")
    with pytest.raises(ConfigError, match="no-such-roberta: the folder does not exist"):
        save_meter_preprocessing(tmp_path, tokenizer_source=tmp_path / "no-such-roberta", max_text_len=40, image_size=384)
    with pytest.raises(ConfigError, match=r"has \d+ tokens but .* 50 rows"):
        save_meter_preprocessing(tmp_path, tokenizer_source=DATA / "meter_tokenizers" / "tiny-bert-uncased",
                                 max_text_len=40, image_size=384, vocab_size=50)
