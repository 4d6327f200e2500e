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
    pair = "VisualReasoning" in model_class
    question = {"MeterForQuestionAnswering": "what color is the cat?",
                "MeterForMaskedLM": "a photo of a [MASK].", "MeterForPreTraining": "a photo of a [MASK]."}
    text = question.get(model_class, "a cat lies on a sofa.")
    lines = ["import torch", "from PIL import Image", f"from transformers import {auto_class}, AutoProcessor", "",
             *_load(repo_id, auto_class, "AutoProcessor", True)]
    if pair:  # NLVR2: one statement about a pair of images
        lines += ['images = [(Image.open("left.jpg"), Image.open("right.jpg"))]  # your pair of images',
                  f'inputs = processor(images=images, text=["{text}"], return_tensors="pt")']
    else:
        lines += [IMAGE_LINE, f'inputs = processor(images=image, text=["{text}"], return_tensors="pt")']
    lines += ["with torch.no_grad():", "    outputs = model(**inputs)"]
    if "ImageTextMatching" in model_class:
        lines += ["logits = outputs.itm_logits if getattr(outputs, \"itm_logits\", None) is not None else outputs.logits",
                  'print(f"match probability: {logits.softmax(-1)[0, 1]:.4f}")']
    elif "MaskedLM" in model_class or "PreTraining" in model_class:
        lines += ["logits = outputs.logits[0]",
                  "masks = (inputs[\"input_ids\"][0] == processor.tokenizer.mask_token_id).nonzero().flatten().tolist()",
                  "for index, position in enumerate(masks):",
                  "    scores, ids = logits[position].softmax(-1).topk(5)",
                  "    fills = [f\"{processor.tokenizer.convert_ids_to_tokens(int(i))} ({s:.4f})\" for s, i in zip(scores, ids)]",
                  "    print(f\"mask {index}: \" + \", \".join(fills))"]
    else:
        activation = ("sigmoid()  # METER trains VQA with one sigmoid per answer" if "QuestionAnswering" in model_class
                      else "softmax(-1)")
        lines += [f"probabilities = outputs.logits[0].{activation}",
                  "scores, indices = probabilities.topk(min(5, probabilities.numel()))",
                  "for score, index in zip(scores, indices):",
                  '    print(f"{score:.4f}  {model.config.id2label[int(index)]}")']
    return "\n".join(lines)


def fairseq_seq2seq(repo_id: str, auto_class: str, has_tokenizer: bool) -> str:
    """fairseq's translation transformer / BART: fairseq's beam search settings (beam 5, eos-started decoding)."""
    lines = ["import torch", f"from transformers import {auto_class}" + (", AutoTokenizer" if has_tokenizer else ""),
             ""]
    if has_tokenizer:
        lines += _load(repo_id, auto_class, "AutoTokenizer", False)
        lines += ['inputs = tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")',
                  "with torch.no_grad():",
                  "    tokens = model.generate(**inputs, num_beams=5, max_new_tokens=20)",
                  "print(tokenizer.decode(tokens[0], skip_special_tokens=True))"]
    else:  # no tokenizer ships yet: fairseq's dictionary ids in, ids out
        lines += [f'repo = "{repo_id}"', f"model = {auto_class}.from_pretrained(repo).eval()", "",
                  "# ids from the model's source dictionary (dict.*.txt line number + 4), ending with </s> = 2",
                  "input_ids = torch.tensor([[4, 5, 6, 2]])",
                  "with torch.no_grad():",
                  "    tokens = model.generate(input_ids=input_ids, num_beams=5, max_new_tokens=20)",
                  "print(tokens[0].tolist())  # target dictionary ids"]
    return "\n".join(lines)
