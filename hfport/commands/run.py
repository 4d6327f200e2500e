"""`hfport run`: feed an image and a text to a converted folder and print what the model says."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hfport.errors import ConfigError

OFA_TASKS = ("caption", "vqa", "grounding", "none")


def load_folder(folder: Path, trust_remote_code: bool = False):
    """(config dict, processor, model) of a converted folder, through the Auto classes and the folder's own code
    (refused, before anything is imported, when that code is not this hfport's own, unless trusted)."""
    import transformers

    from hfport.code_trust import check_model_code

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{folder} has no config.json: it is not a converted model folder")
    check_model_code(folder, trust_remote_code, "run it")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if not any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        raise ConfigError(
            f"{folder} has no tokenizer / image processor, so text and images cannot be turned into inputs",
            hint="convert again with --bpe-dir (OFA) or --tokenizer (METER)",
        )
    processor = transformers.AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    architecture = (config.get("architectures") or [None])[0]
    auto_name = next((key for key, ref in config.get("auto_map", {}).items()
                      if key.startswith("AutoModel") and architecture and ref.endswith("." + architecture)), None)
    if auto_name is None:
        raise ConfigError(f"{folder}/config.json names no Auto class for its architecture {architecture!r}")
    model = getattr(transformers, auto_name).from_pretrained(str(folder), trust_remote_code=True)
    return config, processor, model.eval()


def open_image(path: str):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


def run_ofa(processor, model, image, text, task, num_beams, max_length) -> dict:
    import torch

    task = task or ("caption" if text is None else "none")
    inputs = processor(images=image, text=text, task=task, return_tensors="pt")
    with torch.no_grad():
        sequences = model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            patch_images=inputs["patch_images"], patch_masks=inputs["patch_masks"],
            num_beams=num_beams, max_new_tokens=max_length, do_sample=False,
        )
    ids = [int(i) for i in sequences[0]]
    if ids and ids[0] == model.config.decoder_start_token_id:
        ids = ids[1:]  # like OFA's generator output: no leading <s>
    result = {"task": task, "prompt": processor.format_text(text, task), "text": processor.decode(ids), "ids": ids}
    box = processor.post_process_boxes([ids], [image.size])[0]
    if box is not None:
        result["box"] = [round(v, 1) for v in box]
    return result


def run_meter(config, processor, model, images, text, top_k) -> dict:
    import torch

    architecture = (config.get("architectures") or [""])[0]
    pair = "VisualReasoning" in architecture
    if pair and len(images) != 2:
        raise ConfigError("an NLVR2 model compares two images: pass --image twice")
    if not pair and len(images) != 1:
        raise ConfigError("this METER model reads one image: pass --image once")
    inputs = processor(images=[tuple(images)] if pair else images[0], text=[text], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    if getattr(outputs, "itm_logits", None) is not None or "ImageTextMatching" in architecture:
        logits = outputs.itm_logits if getattr(outputs, "itm_logits", None) is not None else outputs.logits
        return {"head": architecture, "match_probability": float(logits.softmax(-1)[0, 1])}
    logits = outputs.logits[0]
    if logits.dim() == 2:  # masked LM: the best tokens at each <mask>
        mask_positions = (inputs["input_ids"][0] == processor.tokenizer.mask_token_id).nonzero().flatten().tolist()
        fills = []
        for position in mask_positions:
            scores, ids = logits[position].softmax(-1).topk(top_k)
            fills.append([{"token": processor.tokenizer.convert_ids_to_tokens(int(i)), "score": float(s)}
                          for s, i in zip(scores, ids)])
        return {"head": architecture, "masks": fills}
    # METER trains VQA with a binary cross-entropy per answer: sigmoid scores; the other heads are softmax classifiers
    probabilities = logits.sigmoid() if "QuestionAnswering" in architecture else logits.softmax(-1)
    scores, indices = probabilities.topk(min(top_k, probabilities.numel()))
    answers = [{"label": id2label.get(int(i), int(i)), "score": float(s)} for s, i in zip(scores, indices)]
    return {"head": architecture, "answers": answers}


@click.command("run")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--image", "images", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Image file (twice for NLVR2).")
@click.option("--text", default=None, help="Question / prompt / hypothesis (OFA captioning needs none).")
@click.option("--task", type=click.Choice(OFA_TASKS), default=None,
              help="OFA text formatting: caption (default without --text), vqa, grounding, none (default with --text).")
@click.option("--num-beams", type=click.IntRange(1), default=5, show_default=True, help="OFA beam size.")
@click.option("--greedy", is_flag=True, help="OFA greedy decoding (same as --num-beams 1).")
@click.option("--max-length", type=click.IntRange(1), default=20, show_default=True, help="OFA: most new tokens.")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True, help="METER: answers to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--trust-remote-code", is_flag=True,
              help="Run the folder's Python even where it differs from the model code this hfport ships "
                   "(refused otherwise).")
def command(folder, images, text, task, num_beams, greedy, max_length, top_k, as_json, trust_remote_code):
    """Run a converted model on an image (and a text) and print its answer.

    \b
    Examples:
      hfport run ./ofa-large-hf --image cat.jpg
      hfport run ./ofa-large-hf --image cat.jpg --text "what color is the cat?" --task vqa
      hfport run ./meter-vqa-hf --image cat.jpg --text "what color is the cat?" --top-k 3
    """
    config, processor, model = load_folder(folder, trust_remote_code)
    pictures = [open_image(path) for path in images]
    family = "ofa" if config.get("model_type", "").lower().startswith("ofa") else "meter"
    if family == "ofa":
        if len(pictures) != 1:
            raise ConfigError("OFA reads one image: pass --image once")
        result = run_ofa(processor, model, pictures[0], text, task, 1 if greedy else num_beams, max_length)
    else:
        if text is None:
            raise ConfigError("METER models need --text")
        result = run_meter(config, processor, model, pictures, text, top_k)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    if "text" in result:
        click.echo(result["text"])
        if "box" in result:
            click.echo("box (x0, y0, x1, y1): " + ", ".join(f"{v:g}" for v in result["box"]))
    elif "match_probability" in result:
        click.echo(f"match probability: {result['match_probability']:.4f}")
    elif "masks" in result:
        for index, fills in enumerate(result["masks"]):
            click.echo(f"mask {index}: " + ", ".join(f"{f['token']} ({f['score']:.4f})" for f in fills))
    else:
        for answer in result["answers"]:
            click.echo(f"{answer['score']:.4f}  {answer['label']}")
