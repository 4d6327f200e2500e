"""`hfport run`: feed an image and a text to a converted folder and print what the model says."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hfport.errors import ConfigError

OFA_TASKS = ("caption", "vqa", "grounding", "none")


def open_folder(folder: Path, trust_remote_code: bool = False):
    """The converted folder, checked for what `run` needs: a config, a tokenizer / processor, a known family, and
    model code that is this hfport's own (refused before anything is imported, unless trusted)."""
    from hfport.code_trust import check_model_code
    from hfport.family import ConvertedFolder, families

    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} has no config.json: it is not a converted model folder")
    check_model_code(folder, trust_remote_code, "run it")
    if not any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json",
                                                       "tokenizer_config.json")):
        raise ConfigError(
            f"{folder} has no tokenizer / image processor, so text and images cannot be turned into inputs",
            hint="convert again with " + " or ".join(f.processor_hint for f in families()),
        )
    converted = ConvertedFolder.open(folder, require_provenance=False)
    if converted.auto_class is None:
        raise ConfigError(f"{folder}/config.json names no Auto class for its architecture {converted.model_class!r}")
    return converted


def open_image(path: str):
    """The image at ``path``, fully decoded; anything that is not one (a FIFO, a text file, a cut-off file, a
    decompression bomb) is a one-line error, checked before decoding where possible."""
    import stat
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        mode = Path(path).stat().st_mode
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path}: not a regular file (a pipe or device?); give an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ConfigError(f"{path}: refusing a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise ConfigError(f"{path}: not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or damaged image data
        raise ConfigError(f"{path}: damaged or truncated image ({err})") from None


@click.command("run")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Image file (twice for NLVR2; OFA and METER need one, fairseq's text families none).")
@click.option("--text", default=None, help="Question / prompt / hypothesis (OFA captioning needs none).")
@click.option("--task", type=click.Choice(OFA_TASKS), default=None,
              help="OFA text formatting: caption (default without --text), vqa, grounding, none (default with --text).")
@click.option("--num-beams", type=click.IntRange(1), default=5, show_default=True, help="OFA beam size.")
@click.option("--greedy", is_flag=True, help="OFA greedy decoding (same as --num-beams 1).")
@click.option("--max-new-tokens", "--max-length", "max_length", type=click.IntRange(1), default=20, show_default=True,
              help="Most new tokens to generate (--max-length is the older spelling).")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True, help="METER: answers to show.")
@click.option("--answers", "answers_file", type=click.Path(path_type=Path),
              help="OFA: decode only one of these answers (JSON list, ans2label dict or .pkl, or one per line).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--trust-remote-code", is_flag=True,
              help="Run the folder's Python even where it differs from the model code this hfport ships "
                   "(refused otherwise).")
def command(folder, images, text, task, num_beams, greedy, max_length, top_k, answers_file, as_json,
            trust_remote_code):
    """Run a converted model on an image (and a text) and print its answer.

    \b
    Examples:
      hfport run ./ofa-large-hf --image cat.jpg
      hfport run ./ofa-large-hf --image cat.jpg --text "what color is the cat?" --task vqa
      hfport run ./meter-vqa-hf --image cat.jpg --text "what color is the cat?" --top-k 3
      hfport run ./wmt-hf --text "der hund rot"          # fairseq translation / language model: text only
    """
    from hfport.family import RunInputs

    from hfport.labels import read_labels

    answers = read_labels(answers_file) if answers_file is not None else None
    pictures = [open_image(path) for path in images]  # before the model loads: a bad image fails fast
    converted = open_folder(folder, trust_remote_code)
    if not pictures and getattr(converted.family, "takes_images", True):
        raise ConfigError(f"{converted.family.title} models need an image: give --image FILE")
    inputs = RunInputs(images=pictures, text=text, task=task, num_beams=1 if greedy else num_beams,
                       max_length=max_length, top_k=top_k, answers=answers)
    result = converted.family.run(converted, inputs)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    if "text" in result:
        click.echo(result["text"])
        if "box" in result:
            click.echo("box (x0, y0, x1, y1): " + ", ".join(f"{v:g}" for v in result["box"]))
    elif "answers" not in result:  # METER's matching / retrieval / masked-LM heads, each line when present
        for index, fills in enumerate(result.get("masks", [])):
            click.echo(f"mask {index}: " + ", ".join(f"{f['token']} ({f['score']:.4f})" for f in fills))
        if "match_probability" in result:
            click.echo(f"match probability: {result['match_probability']:.4f}")
        if "retrieval_score" in result:
            click.echo(f"retrieval score: {result['retrieval_score']:.4f}")
    else:
        for answer in result["answers"]:
            click.echo(f"{answer['score']:.4f}  {answer['label']}")
