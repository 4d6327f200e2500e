"""OFA tokenizer, image processor and processor.

Copied into every converted OFA folder: it imports only numpy, PIL, torch and transformers.

The tokenizer's ids are the indices of OFA's fairseq task dictionary (`<s> <pad> </s> <unk>`, the lines of
`dict.txt`, `<mask>`, `<code_*>`, `<bin_*>`), so its output feeds the converted weights directly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from transformers import BatchFeature, PreTrainedTokenizerFast
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.processing_utils import ProcessorMixin

# OFA's captioning prompts (data/mm_data/caption_dataset.py); the English one starts with a space because
# every text segment OFA encodes carries its leading space.
CAPTION_PROMPTS = {"gpt2": " what does the image describe?", "bert": "图片描述了什么内容?"}
GROUNDING_PROMPTS = {"gpt2": ' which region does the text " {} " describe?', "bert": '这段文字" {} "描述的是哪个区域？'}
TASKS = ("caption", "vqa", "grounding", "none")
BIN_PATTERN = re.compile(r"<bin_(\d+)>")


def normalize_question(text: str, max_words: int | None = None) -> str:
    """OFA's `pre_question`: lower case, leading punctuation dropped, '-' and '/' as spaces, one space between words."""
    text = text.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ")
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words is not None and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def normalize_caption(text: str, max_words: int | None = None) -> str:
    """OFA's `pre_caption`: `normalize_question` that also reads `<person>` as 'person'."""
    return normalize_question(text.replace("<person>", "person"), max_words)


class OFATokenizerFast(PreTrainedTokenizerFast):
    """A `tokenizers` fast tokenizer whose ids are OFA's fairseq dictionary indices.

    Encoding `text` gives `<s>` + fairseq's `encode_text(text)` + `</s>`, like OFA's datasets: text segments are
    byte-level BPE (English) or WordPiece (Chinese) mapped through the dictionary, and `<code_N>`, `<bin_N>`,
    `<mask>` are single tokens (OFA encodes those with `use_bpe=False`). No normalisation happens here; the
    processor applies OFA's task formatting.

    When `dict.txt` lacks some sub-words of the BPE/WordPiece vocabulary, those sub-words sit after the
    dictionary (ids >= `dictionary_size`) and are returned as `<unk>`, as fairseq's `Dictionary.index` does.
    """

    model_input_names = ["input_ids", "attention_mask"]

    # No __init__ of its own: transformers then loads tokenizer.json as it is instead of rebuilding the backend.
    # `dictionary_size` and `bpe` travel in tokenizer_config.json.
    @property
    def dictionary_size(self) -> int | None:
        return self.init_kwargs.get("dictionary_size")

    @property
    def bpe(self) -> str:
        return self.init_kwargs.get("bpe", "gpt2")

    def _to_dictionary(self, ids):
        limit = self.dictionary_size
        if limit is None:
            return ids
        unk = self._tokenizer.token_to_id(str(self.unk_token))
        return [i if i < limit else unk for i in ids]

    def _convert_encoding(self, encoding, *args, **kwargs):
        encoding_dict, encodings = super()._convert_encoding(encoding, *args, **kwargs)
        encoding_dict["input_ids"] = [self._to_dictionary(ids) for ids in encoding_dict["input_ids"]]
        return encoding_dict, encodings

    def _convert_token_to_id_with_added_voc(self, token: str) -> int:
        index = super()._convert_token_to_id_with_added_voc(token)
        return self._to_dictionary([index])[0]

    def _encode_without_added_tokens(self, text: str) -> list[int]:
        return self._to_dictionary(super()._encode_without_added_tokens(text))


class OFAImageProcessor(BlipImageProcessorPil):
    """OFA's evaluation transform: RGB, bicubic resize to a square of `size`, to [0, 1], normalise (mean = std = 0.5).

    OFA's caption / VQA / SNLI-VE datasets use `Compose([convert("RGB"), Resize((size, size), BICUBIC), ToTensor(),
    Normalize(mean, std)])`; transformers' `BlipImageProcessorPil` does the same steps with PIL and equals it bit
    for bit on images without alpha. Two things differ and are overridden here:
    - alpha: transformers composites transparent pixels onto white, PIL's `convert("RGB")` (OFA) drops the alpha;
    - output names: `patch_images` and `patch_masks`, OFA's own (the model also accepts `pixel_values`).
    """

    model_input_names = ["patch_images", "patch_masks"]
    size = {"height": 480, "width": 480}
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]

    def fetch_images(self, images):
        return _open_local_paths(images, super().fetch_images)

    def process_image(self, image, *args, **kwargs):
        return super().process_image(_as_pil(image), *args, **kwargs)

    def convert_to_rgb(self, image, input_data_format=None):
        if isinstance(image, Image.Image):
            return np.asarray(image.convert("RGB"))  # drops the alpha, as OFA's datasets do
        return super().convert_to_rgb(image, input_data_format=input_data_format)

    def _preprocess(self, images, *args, return_tensors=None, **kwargs) -> BatchFeature:
        pixels = super()._preprocess(images, *args, return_tensors="np", **kwargs)["pixel_values"]
        masks = np.ones(len(pixels), dtype=bool)
        return BatchFeature({"patch_images": pixels, "patch_masks": masks}, tensor_type=return_tensors)

    def transform(self, image, size: int | None = None) -> np.ndarray:
        """One image -> float32 [3, size, size]."""
        kwargs = {"size": int(size)} if size else {}
        return self.preprocess(image, **kwargs)["patch_images"][0]


class OFAProcessor(ProcessorMixin):
    """Image + text -> `input_ids`, `attention_mask`, `patch_images`, `patch_masks` for `OFAForConditionalGeneration`.

    `task` picks OFA's own text formatting:
    - "caption": the captioning prompt (the text, if any, is ignored);
    - "vqa": `pre_question`, a "?" appended when missing, a leading space (OFA's VQA dataset);
    - "grounding": the visual-grounding prompt around `pre_caption(text)` (OFA's RefCOCO dataset);
    - "none" (default): `pre_question` and a leading space, the formatting of OFA's free-form prompts;
    `normalize=False` passes the text unchanged (add the leading space yourself, as OFA does).
    """

    def __init__(self, image_processor, tokenizer, max_words: int | None = None, bpe: str | None = None):
        super().__init__(image_processor, tokenizer)
        self.max_words = max_words  # OFA cuts questions and grounding texts to max_src_length words
        # "gpt2" (English) or "bert" (Chinese): picks the prompts. Folders written before the processor carried it
        # have it on their OFATokenizerFast.
        self.bpe = bpe or getattr(tokenizer, "bpe", None) or "gpt2"

    def format_text(self, text: str | None, task: str = "none", normalize: bool = True) -> str:
        bpe = self.bpe
        if task not in TASKS:
            raise ValueError(f"unknown OFA task {task!r}; expected one of {', '.join(TASKS)}")
        if task == "caption":
            return CAPTION_PROMPTS[bpe]
        if text is None:
            raise ValueError(f"task {task!r} needs a text")
        if not normalize:
            return text
        if task == "grounding":
            return GROUNDING_PROMPTS[bpe].format(normalize_caption(text, self.max_words))
        if bpe == "bert":
            return normalize_question(text, self.max_words)
        question = normalize_question(text, self.max_words)
        if task == "vqa" and not question.endswith("?"):
            question += "?"
        return " " + question

    def __call__(
        self,
        images=None,
        text=None,
        task: str = "none",
        normalize: bool = True,
        return_tensors=None,
        **tokenizer_kwargs,
    ) -> BatchFeature:
        data = {}
        if text is not None or task == "caption":
            if isinstance(text, (list, tuple)):
                texts = list(text)
            else:  # one text for every image (the caption prompt needs no text at all)
                texts = [text] * (len(_as_list(images)) if images is not None else 1)
            formatted = [self.format_text(t, task, normalize) for t in texts]
            tokenizer_kwargs.setdefault("padding", True)
            encoded = self.tokenizer(formatted, **tokenizer_kwargs)
            data.update(encoded)
        if images is not None:
            data.update(self.image_processor(images))
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Generated ids -> text, stripped like OFA's `decode_fn` (leading space of the first word removed)."""
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [t.strip() for t in texts]

    def decode(self, sequence, skip_special_tokens: bool = True, **kwargs) -> str:
        return self.batch_decode([sequence], skip_special_tokens=skip_special_tokens, **kwargs)[0]

    def post_process_boxes(self, sequences, image_sizes, num_bins: int | None = None) -> list[list[float] | None]:
        """`<bin_*>` quadruples -> boxes (x0, y0, x1, y1) in pixels of each original (width, height) image.

        OFA quantises coordinates of the resized square image into `num_bins` bins: bin = round(x / size * (bins-1)).
        """
        boxes = []
        for ids, (width, height) in zip(sequences, image_sizes):
            tokens = self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
            bins = [int(m.group(1)) for t in tokens if t and (m := BIN_PATTERN.fullmatch(t))]
            if len(bins) < 4:
                boxes.append(None)
                continue
            n = num_bins or _count_bins(self.tokenizer)
            x0, y0, x1, y1 = (b / (n - 1) for b in bins[:4])
            boxes.append([x0 * width, y0 * height, x1 * width, y1 * height])
        return boxes

    def post_process_grounding(self, sequences, image_sizes, num_bins: int | None = None) -> list[list[float] | None]:
        """transformers' name for `post_process_boxes`: generated `<bin_*>` ids -> (x0, y0, x1, y1) pixel boxes."""
        return self.post_process_boxes(sequences, image_sizes, num_bins)

    def boxes_to_bins(self, boxes, image_sizes, num_bins: int | None = None) -> list[str]:
        """The inverse: pixel boxes -> OFA's target text, `<bin_i>` for each coordinate, where
        i = round(coordinate / side * (bins - 1)) with side the image width (x) or height (y)."""
        n = num_bins or _count_bins(self.tokenizer)
        texts = []
        for box, (width, height) in zip(boxes, image_sizes):
            sides = (width, height, width, height)
            bins = [min(n - 1, max(0, int(round(float(v) / side * (n - 1))))) for v, side in zip(box, sides)]
            texts.append("".join(f"<bin_{b}>" for b in bins))
        return texts

    def answer_token_ids(self, answers: Sequence[str]) -> list[list[int]]:
        """Each candidate answer as OFA's VQA task decodes it: `<s>`, the tokens of ' ' + answer, `</s>`."""
        return [list(self.tokenizer(" " + answer.strip())["input_ids"]) for answer in answers]

    def constrain_to_answers(self, answers: Sequence[str]):
        """A `prefix_allowed_tokens_fn` for `generate` that only lets the decoder spell one of `answers` (OFA's
        trie-constrained VQA decoding); the decoded text is then always one of them."""
        return AnswerTrie(self.answer_token_ids(answers), self.tokenizer.eos_token_id).allowed_tokens


class AnswerTrie:
    """Prefix tree of token sequences (each starting with the decoder start token and ending with `</s>`)."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_token_id: int):
        self.eos_token_id = eos_token_id
        self.root: dict = {}
        for sequence in sequences:
            node = self.root
            for token in sequence:
                node = node.setdefault(int(token), {})

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        node = self.root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return []
        return list(node)

    def allowed_tokens(self, batch_id: int, prefix) -> list[int]:
        allowed = self.next_tokens(prefix.tolist() if hasattr(prefix, "tolist") else prefix)
        # a finished (or foreign) prefix may only end: never an empty set, which would leave no token to pick
        return allowed or [self.eos_token_id]


def _count_bins(tokenizer) -> int:
    return sum(1 for token in tokenizer.get_vocab() if BIN_PATTERN.fullmatch(token))


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _as_pil(image) -> Image.Image:
    """PIL image, path, or HWC uint8 array -> PIL image (no mode change)."""
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
    """Local image paths opened as they are (no EXIF turn, no mode change), like the original datasets; the rest
    (URLs, images, arrays) as transformers fetches them."""
    if isinstance(images, (list, tuple)):
        return [_open_local_paths(image, fetch) for image in images]
    if isinstance(images, (str, os.PathLike)) and not str(images).startswith(("http://", "https://")):
        return _as_pil(images)
    return fetch(images)


__all__ = ["OFATokenizerFast", "OFAImageProcessor", "OFAProcessor", "AnswerTrie", "normalize_question", "normalize_caption"]
