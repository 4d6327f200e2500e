"""Record the token ids OFA's own text pipeline produces, for tests/test_ofa_tokenizer.py.

Two modes, each run with the interpreter that has the original libraries:

  gpt2  (English; needs fairseq and an OFA checkout):
      python make_tokenizer_recordings.py gpt2 --ofa-root OFA --bpe-dir ../shared/fixtures/ofa/bpe \\
          --tiny-dict ../shared/fixtures/ofa/bpe_tiny/dict.txt --out tests/data/ofa_gpt2_recordings.json
    Builds the task dictionaries with OFA's `OFATask.setup_task` (fairseq `Dictionary`), the BPE with
    `OFATask.build_bpe` (fairseq's GPT2BPE, as OFA's `build_model` does) and encodes with OFA's
    `OFADataset.encode_text` / `pre_question` / `pre_caption` (data/ofa_dataset.py). Recorded for the real
    dictionary and for the 40-line dictionary of the tiny fixtures (most sub-words are `<unk>` there).

  meter (needs transformers 4.x, whose RobertaTokenizer / BertTokenizer are the pure-Python ones METER used):
      python make_tokenizer_recordings.py meter --bpe-dir tests/data/meter_tokenizers --out tests/data/meter_tokenizer_recordings.json
    Tokenizes like METER's datasets: `get_pretrained_tokenizer(name)` (RoBERTa when "roberta" is in the name,
    else BERT with do_lower_case = "uncased" in name), then `tokenizer(text, padding="max_length",
    truncation=True, max_length=max_text_len)` (meter/datasets/base_dataset.py `get_text`).

  bert  (Chinese; needs transformers 4.x, whose BertTokenizer is the pure-Python one fairseq's BertBPE wraps):
      python make_tokenizer_recordings.py bert --bpe-dir tests/data/ofa_bert_vocab --out tests/data/ofa_bert_recordings.json
    Encodes like fairseq's `BertBPE` (`" ".join(BertTokenizer(vocab, do_lower_case=True).tokenize(x))`) followed
    by `Dictionary.encode_line`; the dictionary is fairseq's when fairseq is importable, otherwise a stand-in
    with the same index-or-unk rule (recorded in the output's `dictionary_impl`).

`<code_N>`, `<bin_N>` and `<mask>` inside a text (those in the dictionary) are encoded the way OFA's datasets compose them: the text
around them through BPE (`encode_text(segment)`), each of them without BPE (`encode_text(token, use_bpe=False)`),
whitespace in front of them dropped (e.g. unify_dataset.py: region prompt + `use_bpe=False` coordinates).
Every id list is `<s>` + ids + `</s>`, as OFA's datasets wrap the source.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import types
from pathlib import Path

SPECIAL_PATTERN = re.compile(r"\s*(<code_\d+>|<bin_\d+>|<mask>)")


def long_text() -> str:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs", "1984", "naïve", "co-op", "it's",
             "e-mail", "NASA", "x²", "图片", "...", "don't", "$3.50", "a/b"]
    return " ".join(words[(i * 7 + i // 3) % len(words)] for i in range(1500))


ENGLISH_CORPUS = [
    " what does the image describe?",
    "what does the image describe?",
    "  what does the image describe?",
    " which region does the text \" a man in a red shirt \" describe?",
    ' does the image describe " two dogs playing in the snow "?',
    ' what is the answer to question " what color is the car ". is " red "?',
    ' what is the complete text of " "?',
    "  what does the region describe? region:",
    "WHAT Does THE Image DESCRIBE?",
    "Hello, world! It's a test... (really?) [yes] {no} #hash @at $5.00 100% a&b ~tilde `tick`",
    "I'm sure they'll say we've done what she'd want; don't you? IT'S",
    "1234567890 3.14159 1,000,000 2nd 10x 007 -42 1e-5",
    "two  spaces   three    four     five",
    "   leading spaces",
    "trailing spaces   ",
    "tab\tand\nnewline\r\nand\x0bvertical\x0cfeed",
    "\u00a0no-break\u00a0space and\u2009thin space",
    "ideographic\u3000space",
    "separators\x1c\x1d\x1e\x1fhere",
    "next\u0085line and line\u2028separator",
    "Café naïve résumé coöperate Ångström Øre œuvre straße",
    "combining e\u0301 vs é",
    "图片描述了什么内容?",
    "日本語のテキスト、カタカナ。",
    "한국어 텍스트",
    "Ελληνικά και русский текст",
    "emoji 🙂 👍🏽 family 👨\u200d👩\u200d👧 flags 🇫🇷",
    "zero\u200bwidth\ufeffbom",
    "https://example.com/a-b_c?d=1&e=2#frag",
    "def f(x): return x**2 if x != 0 else None",
    "<code_0> <code_8191>",
    "<bin_0><bin_999>",
    " region: <bin_12> <bin_34> <bin_56> <bin_78>",
    "<bin_12> <bin_34> <bin_56> <bin_78> a man",
    "<mask>",
    " a <mask> on the <mask> table",
    " what is the image in the middle part? <code_5><code_6>",
    "<code_8192> <bin_1000> <BIN_1> <code_-1> <code_>",
    "<|endoftext|>",
    "",
    " ",
    "\n",
    "a",
    "?",
    long_text(),
]

# (task, text, OFA dataset whose formatting it follows)
ENGLISH_TASKS = [
    ("caption", None, "caption_dataset.py: self.prompt"),
    ("vqa", "What color is the cat", "vqa_gen_dataset.py: pre_question + '?' + leading space"),
    ("vqa", "  ...Is-this a/b  TEST?? ", "vqa_gen_dataset.py"),
    ("vqa", "how many people are there?", "vqa_gen_dataset.py"),
    ("vqa", " ".join(["word"] * 140), "vqa_gen_dataset.py: question cut to max_src_length words"),
    ("grounding", "A man in red - riding / a bike <person>", "refcoco_dataset.py: prompt around pre_caption"),
    ("grounding", "the dog on the left", "refcoco_dataset.py"),
    ("none", "What does the image describe?", "pre_question + leading space"),
]

CHINESE_CORPUS = [
    "图片描述了什么内容?",
    "这段文字\" 一只猫 \"描述的是哪个区域？",
    "一只黑色的猫坐在红色的沙发上。",
    "Hello World 你好",
    "Café NAÏVE résumé",
    "2022年8月16日 100% 3.14",
    "  多个   空格\t制表符\n换行 ",
    "unknownword 猫狗鱼鸟 xyz",
    "playing running jumped",
    "[CLS] [cls] [MASK] [UNK] [SEP]",
    "<code_1> <bin_2> 猫 <mask>",
    "全角，标点！（括号）【方括号】",
    "emoji 🙂 and 😀",
    "",
    " ",
    "猫" * 120,
    "a" * 120,
]


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compose_ids(dataset, text: str) -> list[int]:
    """OFA's composition: BPE text segments, `use_bpe=False` special tokens; `<s>` ... `</s>`."""
    import torch

    pieces, position = [], 0
    for match in SPECIAL_PATTERN.finditer(text):
        if match.group(1) not in dataset.tgt_dict.indices:  # e.g. <code_8192> with 8192 codes: plain text
            continue
        pieces.append(dataset.encode_text(text[position:match.start()]))
        pieces.append(dataset.encode_text(match.group(1), use_bpe=False))
        position = match.end()
    pieces.append(dataset.encode_text(text[position:]))
    ids = torch.cat([dataset.bos_item] + pieces + [dataset.eos_item])
    return [int(i) for i in ids]


def record_gpt2(args) -> dict:
    import fairseq
    import torch
    from omegaconf import DictConfig

    ofa_root = Path(args.ofa_root).resolve()
    sys.path.insert(0, str(ofa_root))
    ofa_task = load_module(ofa_root / "tasks" / "ofa_task.py", "ofa_task_for_recordings")
    ofa_dataset = load_module(ofa_root / "data" / "ofa_dataset.py", "ofa_dataset_for_recordings")

    bpe_dir = Path(args.bpe_dir).resolve()
    bpe_cfg = DictConfig({
        "_name": "gpt2",
        "gpt2_encoder_json": str(bpe_dir / "encoder.json"),
        "gpt2_vocab_bpe": str(bpe_dir / "vocab.bpe"),
    })

    def dataset_for(dict_dir: Path, code_dict_size: int, num_bins: int):
        cfg = types.SimpleNamespace(bpe_dir=str(dict_dir), code_dict_size=code_dict_size, num_bins=num_bins)
        task = ofa_task.OFATask.setup_task(cfg)
        bpe = task.build_bpe(bpe_cfg)  # what OFATask.build_model does for bpe=gpt2
        return ofa_dataset.OFADataset("valid", None, bpe, task.src_dict, task.tgt_dict), len(task.tgt_dict)

    def cases(dataset):
        return [{"text": text, "ids": compose_ids(dataset, text)} for text in ENGLISH_CORPUS]

    real, real_size = dataset_for(bpe_dir, 8192, 1000)
    tiny_dir = Path(args.tiny_dict).resolve().parent
    tiny, tiny_size = dataset_for(tiny_dir, 16, 16)

    tasks = []
    max_src_length = 128  # OFA's default task cfg (max_src_length), used by its VQA / RefCOCO datasets
    for task, text, source in ENGLISH_TASKS:
        if task == "caption":
            formatted = " what does the image describe?"
        elif task == "vqa":
            question = real.pre_question(text, max_src_length)
            formatted = " {}".format(question + "?" if not question.endswith("?") else question)
        elif task == "grounding":
            formatted = ' which region does the text " {} " describe?'.format(real.pre_caption(text, max_src_length))
        else:
            formatted = " " + real.pre_question(text, max_src_length)
        ids = torch.cat([real.bos_item, real.encode_text(formatted), real.eos_item])
        tasks.append({"task": task, "text": text, "max_words": max_src_length, "follows": source,
                      "formatted": formatted, "ids": [int(i) for i in ids]})

    return {
        "generator": "tests/data/make_tokenizer_recordings.py gpt2",
        "versions": {"fairseq": fairseq.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
        "ofa_files": ["tasks/ofa_task.py", "data/ofa_dataset.py"],
        "dictionaries": {
            "real": {"bpe_dir": "../shared/fixtures/ofa/bpe", "code_dict_size": 8192, "num_bins": 1000,
                     "size": real_size, "cases": cases(real)},
            "tiny": {"dict": "../shared/fixtures/ofa/bpe_tiny/dict.txt", "code_dict_size": 16, "num_bins": 16,
                     "size": tiny_size, "cases": cases(tiny)},
        },
        "tasks": tasks,
    }


class StandInDictionary:
    """fairseq Dictionary's load / add_symbol / index-or-unk, for interpreters without fairseq."""

    def __init__(self, path: Path):
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>"]
        with path.open(encoding="utf-8") as handle:  # readlines() like fairseq: U+2028 etc. stay inside a line
            lines = [line[:-1] if line.endswith("\n") else line for line in handle]
        for line in lines:
            if line.strip():
                self.add_symbol(line.rstrip().rsplit(" ", 1)[0])

    def add_symbol(self, word: str) -> None:
        if word not in self.symbols:
            self.symbols.append(word)

    def index(self, word: str) -> int:
        return self.symbols.index(word) if word in self.symbols else 3


def record_bert(args) -> dict:
    import transformers
    from transformers import BertTokenizer

    bpe_dir = Path(args.bpe_dir).resolve()
    code_dict_size, num_bins = 4, 4
    try:
        from fairseq.data import Dictionary

        dictionary = Dictionary.load(str(bpe_dir / "dict.txt"))
        impl = "fairseq.data.Dictionary"
    except ImportError:
        dictionary = StandInDictionary(bpe_dir / "dict.txt")
        impl = "StandInDictionary (fairseq's index-or-unk rule)"
    for symbol in ["<mask>"] + [f"<code_{i}>" for i in range(code_dict_size)] + [f"<bin_{i}>" for i in range(num_bins)]:
        dictionary.add_symbol(symbol)
    bert = BertTokenizer(str(bpe_dir / "vocab.txt"), do_lower_case=True)  # fairseq BertBPE, bpe_cased=False

    def encode_text(text: str, use_bpe: bool = True) -> list[int]:
        line = " ".join(bert.tokenize(text)) if use_bpe else text
        return [dictionary.index(word) for word in re.sub(r"\s+", " ", line).strip().split()]

    def compose(text: str) -> list[int]:
        ids, position = [0], 0
        for match in SPECIAL_PATTERN.finditer(text):
            if dictionary.index(match.group(1)) == 3:
                continue
            ids += encode_text(text[position:match.start()]) + encode_text(match.group(1), use_bpe=False)
            position = match.end()
        return ids + encode_text(text[position:]) + [2]

    size = len(dictionary.symbols) if hasattr(dictionary, "symbols") else len(dictionary)
    return {
        "generator": "tests/data/make_tokenizer_recordings.py bert",
        "versions": {"transformers": transformers.__version__, "python": sys.version.split()[0]},
        "dictionary_impl": impl,
        "bpe_dir": "tests/data/ofa_bert_vocab",
        "code_dict_size": code_dict_size,
        "num_bins": num_bins,
        "size": size,
        "cases": [{"text": text, "ids": compose(text)} for text in CHINESE_CORPUS],
    }


METER_CORPUS = [
    "What color is the cat?",
    "how many dogs are there",
    "Is there a man in red?",
    "  two   spaces\tand tabs ",
    "Café naïve",
    "图片 unknown ☃",
    "",
    "the cat " * 30,
]
METER_MAX_TEXT_LEN = 12


def record_meter(args) -> dict:
    import transformers
    from transformers import BertTokenizer, RobertaTokenizer

    root = Path(args.bpe_dir).resolve()
    records = {}
    for name in ("tiny-roberta", "tiny-bert-uncased"):
        path = str(root / name)
        if "roberta" in name:  # meter/datamodules/datamodule_base.py get_pretrained_tokenizer
            tokenizer = RobertaTokenizer.from_pretrained(path)
        else:
            tokenizer = BertTokenizer.from_pretrained(path, do_lower_case="uncased" in path)
        cases = []
        for text in METER_CORPUS:
            encoding = tokenizer(text, padding="max_length", truncation=True, max_length=METER_MAX_TEXT_LEN)
            cases.append({"text": text, "input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]})
        records[name] = cases
    return {
        "generator": "tests/data/make_tokenizer_recordings.py meter",
        "versions": {"transformers": transformers.__version__, "python": sys.version.split()[0]},
        "max_text_len": METER_MAX_TEXT_LEN,
        "tokenizers": records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["gpt2", "bert", "meter"])
    parser.add_argument("--ofa-root", help="OFA checkout (gpt2 mode)")
    parser.add_argument("--bpe-dir", required=True)
    parser.add_argument("--tiny-dict", help="dict.txt of the tiny fixtures (gpt2 mode)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    record = {"gpt2": record_gpt2, "bert": record_bert, "meter": record_meter}[args.mode](args)
    Path(args.out).write_text(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
