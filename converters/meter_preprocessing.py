"""Write METER's tokenizer and image processor next to converted weights.

A METER checkpoint holds no tokenizer: METER loads `RobertaTokenizer.from_pretrained(name)` when the configured
name contains "roberta", else `BertTokenizer.from_pretrained(name, do_lower_case="uncased" in name)`
(meter/datamodules/datamodule_base.py). The user names the same tokenizer (hub id or local folder) here.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from hfport.converters.ofa_preprocessing import _listing, _update_json
from hfport.errors import ConfigError



def load_meter_tokenizer(source):
    """The tokenizer METER's datamodule would build from the name `source`, as a transformers fast tokenizer."""
    from transformers import BertTokenizer, RobertaTokenizer

    name = str(source)
    try:
        if "roberta" in name:
            return RobertaTokenizer.from_pretrained(name)
        return BertTokenizer.from_pretrained(name, do_lower_case="uncased" in name)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(
            f"cannot load the METER tokenizer {name!r}: {str(err).splitlines()[0]}",
            hint="pass --tokenizer with the name or folder METER was trained with (e.g. roberta-base, bert-base-uncased)",
        ) from err


def save_meter_preprocessing(
    out_dir,
    *,
    tokenizer_source,
    max_text_len: int,
    image_size: int,
    transform: str | Sequence[str] = "clip",
    vocab_size: int | None = None,
) -> list[str]:
    """Write tokenizer, image processor and processor files of a METER model into `out_dir`.

    `max_text_len`, `image_size` and `transform` (the checkpoint's `val_transform_keys`; "clip" for CLIP towers,
    "imagenet" for Swin) come from the checkpoint's hyper-parameters; `vocab_size` (optional) is the text
    embedding's row count, checked against the tokenizer. Returns the names of the files written.
    """
    from hfport.models.meter import processing_meter

    out_dir = Path(out_dir)
    if isinstance(transform, (list, tuple)):
        if not transform:
            transform = "clip"
        else:
            transform = transform[0]  # METER evaluates with the first of its val_transform_keys
    try:
        image_processor = processing_meter.MeterImageProcessor(size=int(image_size), transform=str(transform))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if int(image_size) <= 0 or int(max_text_len) <= 0:
        raise ConfigError(f"image_size and max_text_len must be positive, got {image_size} and {max_text_len}")
    tokenizer = load_meter_tokenizer(tokenizer_source)
    if vocab_size is not None and len(tokenizer) > int(vocab_size):
        raise ConfigError(
            f"the tokenizer {str(tokenizer_source)!r} has {len(tokenizer)} tokens but the checkpoint's text "
            f"embedding has {vocab_size} rows: it is not the tokenizer this METER model was trained with"
        )
    tokenizer.model_max_length = int(max_text_len)
    processor = processing_meter.MeterProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                                max_text_len=int(max_text_len))
    before = set(_listing(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(str(out_dir))
    module, processor_class, image_class = "processing_meter", "MeterProcessor", "MeterImageProcessor"
    image_config = {
        **image_processor.to_dict(),
        "image_processor_type": image_class,
        "processor_class": processor_class,
        "auto_map": {"AutoImageProcessor": f"{module}.{image_class}", "AutoProcessor": f"{module}.{processor_class}"},
    }
    _update_json(out_dir / "preprocessor_config.json", **image_config)
    _update_json(out_dir / "processor_config.json", image_processor=image_config, processor_class=processor_class,
                 auto_map={"AutoProcessor": f"{module}.{processor_class}"})
    # the tokenizer is a stock transformers class: AutoTokenizer loads it without remote code
    _update_json(out_dir / "tokenizer_config.json", processor_class=processor_class)
    shutil.copyfile(processing_meter.__file__, out_dir / "processing_meter.py")
    return sorted(set(_listing(out_dir)) - before | {"processing_meter.py"})
