"""Make the OFA-Chinese fixture (tests/data/ofa_chinese/) with the upstream code: fairseq + an OFA checkout.

Run with the interpreter that has fairseq (and transformers 4.x, whose pure-Python BertTokenizer is what fairseq's
`BertBPE` wraps), from the repository root:

    python tests/data/ofa_chinese/make_ofa_chinese_fixture.py --ofa-root OFA [--hfport-python .venv/bin/python]

Steps (all through OFA's / fairseq's own code, imported at run time):
1. tokenizer recordings: OFA's task dictionary (`OFATask.setup_task` on BERT_CN_dict/dict.txt, code_dict_size 8192,
   num_bins 1000, as OFA's Chinese checkpoints use) and the BPE `OFATask.build_model` builds (`--bpe bert`, i.e.
   fairseq's `BertBPE` over BERT_CN_dict/vocab.txt, uncased); each corpus string is encoded like
   `OFADataset.encode_text` (`tgt_dict.encode_line(bpe.encode(text), add_if_not_exist=False, append_eos=False)`)
   and wrapped in `<s> … </s>` -> `tokenizer_recordings.json`;
2. a tiny OFA (`--arch ofa_tiny` shrunk, `--bpe bert`, the real Chinese dictionary, code_dict_size = num_bins = 16)
   built by `OFATask.build_model`; its ResNet, image projection, token and position embeddings are snapped to a coarse
   power-of-two grid and frozen, so the committed file compresses; the rest is trained with a few Adam steps on the fixture's
   own batch (cross-entropy of the decoder on the Chinese targets) so greedy decoding emits varied tokens; saved by
   fairseq's `Trainer.save_checkpoint` (without optimizer state) -> `checkpoint.pt.xz` (xz of the exact file);
3. `inputs.pt`: one batch of two Chinese (source, target) pairs encoded by fairseq (as in 1) with random images;
4. the golden file: hfport's recorder (`hfport record … --reference-python THIS_PYTHON`, i.e. fairseq's
   `load_model_ensemble_and_task` + OFA's `SequenceGenerator`) on `inputs.pt` -> `reference.pt`.
Skips (exit 0 with a message) where fairseq or the OFA checkout is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import lzma
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DICT_DIR = HERE / "BERT_CN_dict"
SEED = 7
CODE_DICT_SIZE = NUM_BINS = 16
PATCH_IMAGE_SIZE = 32

CORPUS = [
    "图片描述了什么？",
    "这张图片里有什么？",
    "一只猫坐在桌子上。",
    "两个孩子在公园里踢足球，天气很好！",
    "图中的男人穿着红色的衬衫，手里拿着一把雨伞。",
    "“你好”，她说。",
    "《红楼梦》是中国古典小说。",
    "价格：￥１２３.４５元（含税）",
    "全角字符：ＡＢＣ ａｂｃ １２３ ！？",
    "全角空格\u3000分隔\u3000的文字",
    "行分隔符\u2028在这里",
    "段落分隔符\u2029也在这里",
    "换行\n和\t制表符",
    "2023年10月1日，国庆节。",
    "第3号楼的电话是010-12345678",
    "iPhone 15 Pro Max 的价格是多少？",
    "我喜欢用Python和PyTorch写代码",
    "OFA 模型支持 中文 和 English 混合输入",
    "COVID-19疫情期间，大家都戴口罩。",
    "这是一个测试😀，看看表情符号🐱🐶是否正确。",
    "👍👍👍 好的",
    "🇨🇳 国旗",
    "数学公式：a² + b² = c²，π≈3.14159",
    "温度是-5℃到10℃之间",
    "百分之五十 = 50%",
    "网址：https://www.example.com/路径?参数=值",
    "邮箱是 test@example.com 吗？",
    "繁體中文：這是一個測試。",
    "日本語：これはテストです。",
    "한국어 텍스트도 있어요",
    "Ünïcödé àccents 和中文",
    "……省略号——破折号～波浪号",
    "【重要】请注意！！！",
    "「引号」『双引号』",
    "a  b   c    多个   空格",
    "   前后有空格   ",
    "",
    "。",
    "ＯＦＡ是一个统一的多模态预训练模型",
    "区域 <bin_3> <bin_7> <bin_12> <bin_15> 描述了什么？",
    "图像编码 <code_1> <code_2> 的内容",
    "<mask> 是什么",
    "零一二三四五六七八九十百千万亿",
    "犇骉猋麤龘",
    "UPPER lower MiXeD 大小写",
    "#话题# @用户 $100 &符号",
    "问：这是哪里？答：北京天安门。",
    "长句子" * 30,
]

# (source text, target text) per sample; sample 1 is shorter so that padding is exercised. Targets are short and
# there is one set only: the golden's logits have 21165 entries per position.
GOLDEN_PAIRS = [("区域 <bin_3> <bin_7> 描述了什么？😀 ＯＦＡ", "一只猫"), ("这是什么？", "天安门")]


def _skip(reason: str) -> None:
    print(f"skipped: {reason}")
    sys.exit(0)


_USER_DIRS: dict = {}


def _register_ofa(ofa_root: Path) -> str:
    """A fairseq user dir that registers only OFA's model and task (OFA's tasks package pulls in heavy extras);
    one per process (fairseq refuses a second package of the same name)."""
    if ofa_root in _USER_DIRS:
        return _USER_DIRS[ofa_root]
    package = Path(tempfile.mkdtemp(prefix="ofa-cn-userdir-")) / "ofa_cn_user"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(ofa_root)!r})\n"
        "from fairseq.models import MODEL_REGISTRY\n"
        "from fairseq.tasks import TASK_REGISTRY\n"
        "if 'ofa' not in MODEL_REGISTRY:\n"
        "    import models.ofa\n"
        "if 'ofa' not in TASK_REGISTRY:\n"
        f"    spec = importlib.util.spec_from_file_location('ofa_cn_task', {str(ofa_root / 'tasks' / 'ofa_task.py')!r})\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    sys.modules['ofa_cn_task'] = module\n"
        "    spec.loader.exec_module(module)\n")
    _USER_DIRS[ofa_root] = str(package)
    return str(package)


def _training_args(user_dir: str, save_dir: str, code_dict_size: int, num_bins: int) -> list[str]:
    return [
        "train.tsv", f"--user-dir={user_dir}", f"--bpe-dir={DICT_DIR}", "--bpe=bert", "--task=ofa", "--arch=ofa_tiny",
        f"--seed={SEED}", f"--patch-image-size={PATCH_IMAGE_SIZE}", f"--save-dir={save_dir}",
        f"--code-dict-size={code_dict_size}", f"--num-bins={num_bins}", "--encoder-layers=2", "--decoder-layers=2",
        "--encoder-embed-dim=32", "--decoder-embed-dim=32", "--encoder-ffn-embed-dim=64",
        "--decoder-ffn-embed-dim=64", "--encoder-attention-heads=2", "--decoder-attention-heads=2",
        "--resnet-type=resnet18", "--token-bucket-size=32", "--image-bucket-size=8", "--encoder-normalize-before",
        "--decoder-normalize-before", "--share-all-embeddings", "--share-decoder-input-output-embed",
        "--layernorm-embedding", "--patch-layernorm-embedding", "--code-layernorm-embedding",
        "--add-type-embedding", "--scale-attn", "--scale-fc", "--scale-heads", "--disable-entangle",
        "--criterion=cross_entropy", "--optimizer=adam",
        "--lr=5e-3", "--dropout=0.0", "--attention-dropout=0.0", "--batch-size=2", "--num-workers=0",
        "--cpu", "--no-save-optimizer-state",
    ]


def _setup(ofa_root: Path, save_dir: str, code_dict_size: int, num_bins: int):
    from fairseq import options, tasks
    from fairseq import utils as fairseq_utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = _training_args(_register_ofa(ofa_root), save_dir, code_dict_size, num_bins)
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, argv)
    cfg = convert_namespace_to_omegaconf(args)
    fairseq_utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    return cfg, task, argv


def _encoder(task):
    """OFADataset.encode_text with use_bpe=True, wrapped in <s> … </s> (the source side of every OFA dataset)."""
    d = task.tgt_dict

    def encode(text: str) -> list[int]:
        import re

        ids, position = [d.bos()], 0
        # <code_N>/<bin_N>/<mask> go through encode_text(use_bpe=False), the text between them through BPE
        for match in re.finditer(r"\s*(<code_\d+>|<bin_\d+>|<mask>)", text):
            ids += d.encode_line(task.bpe.encode(text[position:match.start()]), add_if_not_exist=False,
                                 append_eos=False).tolist()
            ids += d.encode_line(match.group(1), add_if_not_exist=False, append_eos=False).tolist()
            position = match.end()
        ids += d.encode_line(task.bpe.encode(text[position:]), add_if_not_exist=False, append_eos=False).tolist()
        return ids + [d.eos()]
    return encode


def record_tokenizer(ofa_root: Path) -> dict:
    import fairseq
    import transformers

    with tempfile.TemporaryDirectory() as save_dir:
        cfg, task, _ = _setup(ofa_root, save_dir, 8192, 1000)
        task.build_model(cfg.model)  # builds task.bpe the way OFA does (BertBPE over vocab.txt, uncased)
    encode = _encoder(task)
    return {
        "generator": "tests/data/ofa_chinese/make_ofa_chinese_fixture.py",
        "versions": {"fairseq": fairseq.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0]},
        "bpe": f"{type(task.bpe).__module__}.{type(task.bpe).__name__}",
        "dictionary": f"{type(task.tgt_dict).__module__}.{type(task.tgt_dict).__name__} via OFATask.setup_task",
        "bpe_dir": "tests/data/ofa_chinese/BERT_CN_dict",
        "code_dict_size": 8192,
        "num_bins": 1000,
        "size": len(task.tgt_dict),
        "cases": [{"text": text, "ids": encode(text)} for text in CORPUS],
    }


def _snap(tensor, coarse: float):
    """Round to a power-of-two grid of about `coarse` standard deviations (exact in fp16 and fp32)."""
    import torch

    std = float(tensor.float().std()) if tensor.numel() > 1 else 0.0
    if std == 0.0:
        return tensor
    step = 2.0 ** round(torch.log2(torch.tensor(std * coarse)).item())
    return (tensor / step).round() * step


def _bulky(name: str) -> bool:
    """The tensors that make up most of the file: snapped to the grid and frozen."""
    return name.startswith(("encoder.embed_images.", "encoder.image_proj.")) or any(
        part in name for part in ("embed_tokens", "embed_positions", "embed_image_positions"))


def make_checkpoint(ofa_root: Path, workdir: Path):
    import numpy as np
    import torch

    if not hasattr(np, "compat"):  # fairseq touches np.compat.long on import paths that numpy 2 dropped
        np.compat = type(sys)("compat")
    if not hasattr(np.compat, "long"):
        np.compat.long = np.int64
    from fairseq.trainer import Trainer

    cfg, task, argv = _setup(ofa_root, str(workdir), CODE_DICT_SIZE, NUM_BINS)
    torch.manual_seed(SEED)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    encode = _encoder(task)
    generator = torch.Generator().manual_seed(SEED)
    src = [encode(s) for s, _ in GOLDEN_PAIRS]
    tgt = [encode(t)[:-1] for _, t in GOLDEN_PAIRS]  # decoder input: <s> + target tokens
    width_s, width_t, pad = max(map(len, src)), max(map(len, tgt)), task.tgt_dict.pad()
    inputs = {
        "src_tokens": torch.tensor([s + [pad] * (width_s - len(s)) for s in src]),
        "src_lengths": torch.tensor([len(s) for s in src]),
        "patch_images": torch.rand(len(src), 3, PATCH_IMAGE_SIZE, PATCH_IMAGE_SIZE, generator=generator) * 2 - 1,
        "patch_masks": torch.tensor([True, True]),
        "prev_output_tokens": torch.tensor([t + [pad] * (width_t - len(t)) for t in tgt]),
    }
    sets = {"inputs": inputs}
    with torch.no_grad():
        for key, value in model.state_dict(keep_vars=True).items():
            if value.is_floating_point() and _bulky(key):
                value.copy_(_snap(value, 2.0 if "embed_images" in key else 1.0))
    frozen = [p for n, p in model.named_parameters() if _bulky(n)]
    for p in frozen:
        p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=5e-3)
    model.train()
    model.encoder.embed_images.eval()  # BatchNorm statistics stay those of the snapped init
    losses = []
    for step in range(40):
        total = 0.0
        for inputs in sets.values():
            logits = model(**{k: inputs[k] for k in ("src_tokens", "src_lengths", "prev_output_tokens",
                                                      "patch_images", "patch_masks")})[0]
            target = torch.cat([inputs["prev_output_tokens"][:, 1:],
                                torch.full((logits.shape[0], 1), task.tgt_dict.pad())], dim=1)
            target[torch.arange(len(target)), (target != task.tgt_dict.pad()).sum(1)] = task.tgt_dict.eos()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=task.tgt_dict.pad())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss)
        losses.append(round(total / len(sets), 4))
    model.eval()
    for p in frozen:
        p.requires_grad_(True)
    trainer = Trainer(cfg, task, model, criterion)
    path = workdir / "checkpoint.pt"
    trainer.save_checkpoint(str(path), {"train_iterator": {"epoch": 1}, "val_loss": None})
    return path, sets, argv, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ofa-root", required=True)
    parser.add_argument("--hfport-python", default=".venv/bin/python",
                        help="interpreter with hfport installed (runs `hfport record --reference-python`)")
    parser.add_argument("--only-tokenizer", action="store_true")
    args = parser.parse_args()
    ofa_root = Path(args.ofa_root).resolve()
    if importlib.util.find_spec("fairseq") is None:
        _skip("fairseq is not importable in this Python")
    if not (ofa_root / "models" / "ofa").is_dir():
        _skip(f"{ofa_root} is not an OFA checkout")
    import torch

    recordings = record_tokenizer(ofa_root)
    (HERE / "tokenizer_recordings.json").write_text(json.dumps(recordings, ensure_ascii=False, separators=(",", ":")) + "\n",
                                                    encoding="utf-8")
    print(f"tokenizer recordings: {len(recordings['cases'])} strings, dictionary size {recordings['size']}")
    if args.only_tokenizer:
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path, sets, argv, losses = make_checkpoint(ofa_root, workdir)
        raw = path.read_bytes()
        (HERE / "checkpoint.pt.xz").write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        torch.save(sets, workdir / "inputs.pt")
        subprocess.run([args.hfport_python, "-m", "hfport.cli", "record", str(path), "--reference-code", str(ofa_root),
                        "--bpe-dir", str(DICT_DIR), "--inputs", str(workdir / "inputs.pt"),
                        "--out", str(HERE / "reference.pt"), "--reference-python", sys.executable], check=True)
        info = {"checkpoint_sha256": hashlib.sha256(raw).hexdigest(), "checkpoint_bytes": len(raw), "argv": argv,
                "train_losses": losses, "pairs": GOLDEN_PAIRS}
        (HERE / "fixture.json").write_text(json.dumps(info, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(json.dumps({k: v for k, v in info.items() if k != "argv"}, ensure_ascii=False))


if __name__ == "__main__":
    main()
