"""Write METER's tokenizer and image processor next to converted weights.

A METER checkpoint holds no tokenizer: METER loads `RobertaTokenizer.from_pretrained(name)` when the configured
name contains "roberta", else `BertTokenizer.from_pretrained(name, do_lower_case="uncased" in name)`
(meter/datamodules/datamodule_base.py). The user names the same tokenizer (hub id or local folder) here.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from hfport.converters.ofa_preprocessing import _listing, _update_json, offer_fast_image_processor
from hfport.errors import ConfigError

# the files METER's tokenizer classes read (transformers also accepts a tokenizer.json)
VOCAB_FILES = {"roberta": ("vocab.json", "merges.txt"), "bert": ("vocab.txt",)}
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


def _kind(name: str) -> str:
    return "roberta" if "roberta" in name else "bert"  # meter/datamodules/datamodule_base.py


def resolve_tokenizer_source(source) -> str:
    """A local folder holding the tokenizer's files, or a Hub id whose files resolve (cache or network).

    Raises ConfigError otherwise: transformers would quietly build a tokenizer of special tokens only.
    """
    name = str(source)
    files = VOCAB_FILES[_kind(name)]
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--tokenizer {name} is a file; pass the folder holding {' + '.join(files)} (or a Hub id)")
        if not (all((path / f).is_file() for f in files) or (path / "tokenizer.json").is_file()):
            raise ConfigError(f"--tokenizer {name} holds neither {' + '.join(files)} nor tokenizer.json")
        return str(path)
    if ".." in name or not REPO_ID.match(name):
        raise ConfigError(f"--tokenizer {name}: the folder does not exist (and it is not a Hub id)")
    from huggingface_hub.errors import HFValidationError
    from transformers.utils import cached_file

    try:
        found = [cached_file(name, f, _raise_exceptions_for_missing_entries=False) for f in files]
        if not all(found):
            found = [cached_file(name, "tokenizer.json", _raise_exceptions_for_missing_entries=False)]
    except (OSError, ValueError, HFValidationError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"cannot resolve the tokenizer {name!r}: it is no local folder and not on the Hub or in "
                          f"its cache ({first})") from None
    if not all(found):
        raise ConfigError(f"cannot resolve the tokenizer {name!r}: no such local folder, and neither the Hub nor its "
                          f"cache has {' + '.join(files)} or tokenizer.json for it (offline, or no such repo)")
    return name


def load_meter_tokenizer(source, vocab_size: int | None = None):
    """The tokenizer METER's datamodule would build from the name `source`, as a transformers tokenizer.

    `vocab_size` (the text embedding's rows), when given, must hold every id the tokenizer can produce.
    """
    from transformers import BertTokenizer, RobertaTokenizer

    name = resolve_tokenizer_source(source)
    try:
        if _kind(str(source)) == "roberta":
            tokenizer = RobertaTokenizer.from_pretrained(name)
        else:
            tokenizer = BertTokenizer.from_pretrained(name, do_lower_case="uncased" in str(source))
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(
            f"cannot load the METER tokenizer {str(source)!r}: {str(err).splitlines()[0]}",
            hint="pass --tokenizer with the name or folder METER was trained with (e.g. roberta-base, bert-base-uncased)",
        ) from err
    vocab = tokenizer.get_vocab()
    if len(vocab) <= len(set(tokenizer.all_special_tokens)):
        raise ConfigError(f"the tokenizer {str(source)!r} has only its {len(vocab)} special tokens: its vocabulary "
                          "did not load")
    if vocab_size is not None and max(vocab.values()) + 1 > int(vocab_size):
        raise ConfigError(
            f"the tokenizer {str(source)!r} has {len(tokenizer)} tokens but the checkpoint's text embedding has "
            f"{vocab_size} rows (largest id {max(vocab.values())}): it is not the tokenizer this METER model was trained with"
        )
    return tokenizer


def save_meter_preprocessing(
    out_dir,
    *,
    tokenizer_source,
    max_text_len: int,
    image_size: int,
    transform: str | Sequence[str] = "clip",
    vocab_size: int | None = None,
    fast_image_processor: bool = False,
) -> list[str]:
    """Write tokenizer, image processor and processor files of a METER model into `out_dir`.

    `max_text_len`, `image_size` and `transform` (the checkpoint's `val_transform_keys`; "clip" for CLIP towers,
    "imagenet" for Swin) come from the checkpoint's hyper-parameters; `vocab_size` (optional) is the text
    embedding's row count, checked against the tokenizer; `fast_image_processor` also lists
    `MeterImageProcessorFast` in auto_map (see `offer_fast_image_processor`). Returns the names of the files written.
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
    if isinstance(tokenizer_source, (str, Path)):
        tokenizer = load_meter_tokenizer(tokenizer_source, vocab_size)
    else:  # already loaded and checked (converters/meter.py does it before any weight is written)
        tokenizer = tokenizer_source
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
    if fast_image_processor:
        offer_fast_image_processor(out_dir, module, image_class)
    # the tokenizer is a stock transformers class: AutoTokenizer loads it without remote code
    _update_json(out_dir / "tokenizer_config.json", processor_class=processor_class)
    shutil.copyfile(processing_meter.__file__, out_dir / "processing_meter.py")
    return sorted(set(_listing(out_dir)) - before | {"processing_meter.py"})
