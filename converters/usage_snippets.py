"""The model card's usage code, one per family and head: load, preprocess, run, print the answer.

Each snippet computes what `hfport run` prints with its defaults (OFA: a caption, 5 beams, 20 new tokens; METER:
the head's top answers), with stock transformers and the code shipped in the repository only;
tests/test_card_usage.py runs the rendered card's code against converted folders and compares.
"""

from __future__ import annotations

IMAGE_LINE = 'image = Image.open("example.jpg")  # your image'


def _load(repo_id: str, auto_class: str, preprocessor: str, remote: bool) -> list[str]:
    trust = ", trust_remote_code=True" if remote else ""
    name = "processor" if preprocessor == "AutoProcessor" else "tokenizer"
    return [f'repo = "{repo_id}"',
            f"{name} = {preprocessor}.from_pretrained(repo{trust})",
            f"model = {auto_class}.from_pretrained(repo{trust}).eval()", ""]


def ofa(repo_id: str, auto_class: str) -> str:
    return "\n".join([
        "import torch",
        "from PIL import Image",
        f"from transformers import {auto_class}, AutoProcessor", "",
        *_load(repo_id, auto_class, "AutoProcessor", True),
        IMAGE_LINE,
        '# task="caption" writes OFA\'s caption instruction; for a question: text="what color is the cat?", task="vqa"',
        'inputs = processor(images=image, task="caption", return_tensors="pt")',
        "with torch.no_grad():",
        "    tokens = model.generate(**inputs, num_beams=5, max_new_tokens=20, do_sample=False)",
        "print(processor.decode(tokens[0, 1:].tolist()))  # without the decoder's start token",
    ])


def meter(repo_id: str, auto_class: str, model_class: str) -> str:
    """One snippet per METER head, printing what `hfport run` prints for it (see run_meter in meter_family)."""
    pair = "VisualReasoning" in model_class
    fills_mask = "MaskedLM" in model_class or "PreTraining" in model_class
    matches = "ImageTextMatching" in model_class or "PreTraining" in model_class
    lines = ["import torch", "from PIL import Image", f"from transformers import {auto_class}, AutoProcessor", "",
             *_load(repo_id, auto_class, "AutoProcessor", True)]
    if fills_mask:  # the tokenizer's own mask token: [MASK] for BERT, <mask> for RoBERTa
        text = 'f"a photo of a {processor.tokenizer.mask_token}."'
    elif pair:
        text = '"one of the two images shows a cat."'
    else:
        text = '"what color is the cat?"' if "QuestionAnswering" in model_class else '"a cat lies on a sofa."'
    if pair:  # NLVR2: one statement about a pair of images
        lines += ['images = [(Image.open("left.jpg"), Image.open("right.jpg"))]  # your pair of images',
                  f'inputs = processor(images=images, text=[{text}], return_tensors="pt")']
    else:
        lines += [IMAGE_LINE, f'inputs = processor(images=image, text=[{text}], return_tensors="pt")']
    lines += ["with torch.no_grad():", "    outputs = model(**inputs)"]
    if fills_mask:
        logits = "outputs.mlm_logits" if "PreTraining" in model_class else "outputs.logits"
        lines += [f"logits = {logits}[0]",
                  "masks = (inputs[\"input_ids\"][0] == processor.tokenizer.mask_token_id).nonzero().flatten().tolist()",
                  "for index, position in enumerate(masks):",
                  "    scores, ids = logits[position].softmax(-1).topk(5)",
                  "    fills = [f\"{processor.tokenizer.convert_ids_to_tokens(int(i))} ({s:.4f})\" for s, i in zip(scores, ids)]",
                  "    print(f\"mask {index}: \" + \", \".join(fills))"]
    if matches:
        logits = "outputs.itm_logits" if "PreTraining" in model_class else "outputs.logits"
        lines += [f'print(f"match probability: {{{logits}.softmax(-1)[0, 1]:.4f}}")  # class 1 = the text fits the image']
        if "ImageTextMatching" in model_class:
            lines += ["if outputs.rank_scores is not None:  # retrieval checkpoints: METER ranks candidates by this score",
                      '    print(f"retrieval score: {outputs.rank_scores[0, 0]:.4f}")']
    if not (fills_mask or matches):
        activation = ("sigmoid()  # METER trains VQA with one sigmoid per answer" if "QuestionAnswering" in model_class
                      else "softmax(-1)")
        lines += [f"probabilities = outputs.logits[0].{activation}",
                  "scores, indices = probabilities.topk(min(5, probabilities.numel()))",
                  "for score, index in zip(scores, indices):",
                  '    print(f"{score:.4f}  {model.config.id2label[int(index)]}")']
    return "\n".join(lines)


def fairseq_seq2seq(repo_id: str, auto_class: str, has_tokenizer: bool, target_subfolder: str | None = None) -> str:
    """fairseq's translation transformer / BART: fairseq's beam search settings (beam 5, eos-started decoding)."""
    lines = ["import torch", f"from transformers import {auto_class}" + (", AutoTokenizer" if has_tokenizer else ""),
             ""]
    if has_tokenizer:
        lines += _load(repo_id, auto_class, "AutoTokenizer", False)
        decoder = "tokenizer"
        if target_subfolder:  # separate target vocabulary: its own tokenizer decodes the output
            decoder = "target_tokenizer"
            lines += ["try:",
                      f'    target_tokenizer = AutoTokenizer.from_pretrained(repo, subfolder="{target_subfolder}")',
                      "except (OSError, ValueError):  # one shared vocabulary",
                      "    target_tokenizer = tokenizer", ""]
        lines += ['inputs = tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")',
                  "with torch.no_grad():",
                  "    tokens = model.generate(**inputs, num_beams=5, max_new_tokens=20)",
                  f"print({decoder}.decode(tokens[0], skip_special_tokens=True))"]
    else:  # no tokenizer ships yet: fairseq's dictionary ids in, ids out
        lines += [f'repo = "{repo_id}"', f"model = {auto_class}.from_pretrained(repo).eval()", "",
                  "# ids from the model's source dictionary (dict.*.txt line number + 4), ending with </s> = 2",
                  "input_ids = torch.tensor([[4, 5, 6, 2]])",
                  "with torch.no_grad():",
                  "    tokens = model.generate(input_ids=input_ids, num_beams=5, max_new_tokens=20)",
                  "print(tokens[0].tolist())  # target dictionary ids"]
    return "\n".join(lines)


def text_classifier(repo_id: str, auto_class: str) -> str:
    """A sequence-classification head (fairseq's `sentence_prediction`): class probabilities with their names."""
    return "\n".join([
        "import torch", f"from transformers import {auto_class}, AutoTokenizer", "",
        *_load(repo_id, auto_class, "AutoTokenizer", False),
        'inputs = tokenizer(["a red car."], truncation=True, return_tensors="pt")',
        "with torch.no_grad():",
        "    probabilities = model(**inputs).logits[0].softmax(-1)",
        "for index in probabilities.argsort(descending=True).tolist():",
        '    print(f"{probabilities[index]:.4f}  {model.config.id2label[index]}")',
    ])


def masked_lm(repo_id: str, auto_class: str) -> str:
    """A masked language model: the five most likely fillers of one masked position."""
    return "\n".join([
        "import torch", f"from transformers import {auto_class}, AutoTokenizer", "",
        *_load(repo_id, auto_class, "AutoTokenizer", False),
        'inputs = tokenizer([f"a {tokenizer.mask_token} car."], return_tensors="pt")',
        "position = int((inputs.input_ids[0] == tokenizer.mask_token_id).nonzero()[0, 0])",
        "with torch.no_grad():",
        "    probabilities = model(**inputs).logits[0, position].softmax(-1)",
        "scores, ids = probabilities.topk(5)",
        "for score, token_id in zip(scores.tolist(), ids.tolist()):",
        '    print(f"{score:.4f}  {tokenizer.decode([token_id])!r}")',
    ])


def causal_lm(repo_id: str, auto_class: str) -> str:
    """fairseq's language model: continue a prompt greedily (beam search over a prompt scores differently in fairseq:
    it counts the prompt in the length normalisation)."""
    return "\n".join([
        "import torch", f"from transformers import {auto_class}, AutoTokenizer", "",
        *_load(repo_id, auto_class, "AutoTokenizer", False),
        'inputs = tokenizer(["a small cat likes"], return_tensors="pt")  # rows start with </s>, as fairseq feeds them',
        "with torch.no_grad():",
        "    tokens = model.generate(**inputs, num_beams=1, do_sample=False, max_new_tokens=20)",
        "print(tokenizer.decode(tokens[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))",
    ])
