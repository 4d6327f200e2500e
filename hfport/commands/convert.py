"""`hfport convert CKPT OUT`: a checkpoint becomes a loadable, self-contained HF folder."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hfport.converters.pipeline import convert_checkpoint


@click.command("convert")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Store weights in this dtype "
              "(default: the checkpoint's own).")
@click.option("--max-shard-size", default="2GB", show_default=True, help="Split weights into shards of at most this size.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--trust-pickle", is_flag=True, help="Allow arbitrary pickled objects (only for files you trust).")
@click.option("--allow-nonfinite", is_flag=True, help="Convert weights that hold NaN or inf (refused by default).")
@click.option("--bpe-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="OFA: the utils/BPE folder (dict.txt, encoder.json, vocab.bpe) to build the tokenizer from; "
              "fairseq BART / RoBERTa: the folder with encoder.json and vocab.bpe; XLM-R: the folder with the "
              "SentencePiece *.model.")
@click.option("--dict", "dictionary", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="fairseq BART / RoBERTa / XLM-R: the model's dict.txt (ids of the converted tokenizer = fairseq's).")
@click.option("--bpe", type=click.Choice(["gpt2", "bert"]), help="OFA: tokenizer kind (default: from the checkpoint).")
@click.option("--patch-image-size", type=int, help="OFA: image resolution of the processor (default: the task's).")
@click.option("--text-config", help="METER: the text tower's config (roberta-base, a folder, or a config.json).")
@click.option("--tokenizer", help="METER: tokenizer folder or id to ship with the model.")
@click.option("--head", help="METER: which task head to keep when a checkpoint has several (vqa, itm, mlm, ...); "
              "fairseq RoBERTa / XLM-R: which classification_heads.NAME.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (no progress output).")
def command(checkpoint, output, dtype, max_shard_size, force, trust_pickle, allow_nonfinite, bpe_dir, dictionary, bpe,
            patch_image_size,
            text_config, tokenizer, head, quiet, as_json):
    """Convert an OFA (.pt), fairseq translation transformer / BART (.pt) or METER (.ckpt) checkpoint into a
    Hugging Face model folder (fairseq's own families into stock transformers classes).

    Every source tensor is mapped or explicitly dropped, every model parameter produced or tied, every shape
    checked, before anything is written; OUTPUT appears whole or not at all.

    \b
    Examples:
      hfport convert ofa_large.pt ./ofa-large-hf --bpe-dir ~/src/OFA/utils/BPE
      hfport convert ofa_large.pt ./ofa-large-fp16 --dtype float16 --max-shard-size 500MB
      hfport convert meter_clip16_288_roberta_vqa.ckpt ./meter-vqa-hf --text-config roberta-base
    """
    options = dict(bpe_dir=bpe_dir, dictionary=dictionary, bpe=bpe, patch_image_size=patch_image_size, text_config=text_config,
                   tokenizer=tokenizer, head=head)
    options = {k: v for k, v in options.items() if v is not None}
    quiet = quiet or as_json
    if quiet:
        folder = convert_checkpoint(checkpoint, output, force=force, dtype=dtype, max_shard_size=max_shard_size,
                                    trust_pickle=trust_pickle, allow_nonfinite=allow_nonfinite, **options)
    else:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TransferSpeedColumn)

        # bytes, not only tensors: a checkpoint's time goes to its few large matrices
        with Progress(TextColumn("[bold]converting"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TextColumn("{task.fields[tensors]} tensors"), TimeElapsedColumn(), transient=True,
                      console=Console(stderr=True)) as bar:
            task = bar.add_task("convert", total=None, tensors="0")

            def progress(key, done, total, nbytes=0, total_bytes=None):
                bar.update(task, advance=nbytes, total=total_bytes, tensors=f"{done}/{total}")

            folder = convert_checkpoint(checkpoint, output, force=force, dtype=dtype, max_shard_size=max_shard_size,
                                        trust_pickle=trust_pickle, allow_nonfinite=allow_nonfinite, progress=progress,
                                        **options)
    summary = _summary(folder)
    if summary["tokenizer"] is None:
        from hfport.family import get_family

        hint = get_family(summary["family"]).processor_hint
        summary["warnings"].append(f"{folder} was written without a tokenizer or processor: the model loads, but "
                                   f"text cannot be turned into its inputs (convert again with {hint})")
    for warning in summary["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {folder} ({summary['model_class']}, {summary['stored_dtype']}, "
               f"{summary['weight_bytes'] / 2**20:,.1f} MiB of weights, {summary['dropped']} source tensors dropped "
               f"with a reason, {summary['tied']} tied)")
    if not quiet:
        click.echo(f"next: hfport verify {folder} --golden REFERENCE.pt   (or --against CKPT --reference-code DIR)")


TOKENIZER_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")


def _summary(folder: Path) -> dict:
    info = json.loads((folder / "hfport.json").read_text())
    size = sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".safetensors")
    tokenizer = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    return {"folder": str(folder), "family": info.get("family"), "model_class": info["model_class"],
            "stored_dtype": info["stored_dtype"], "weight_bytes": size, "dropped": len(info["dropped"]),
            "tied": len(info["tied"]), "tokenizer": tokenizer or None, "warnings": []}
