"""`hfport convert CKPT OUT`: a checkpoint becomes a loadable, self-contained HF folder."""

from __future__ import annotations

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
              "fairseq BART: the folder with encoder.json and vocab.bpe.")
@click.option("--dict", "dictionary", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="fairseq BART: the model's dict.txt (ids of the converted tokenizer = fairseq's).")
@click.option("--bpe", type=click.Choice(["gpt2", "bert"]), help="OFA: tokenizer kind (default: from the checkpoint).")
@click.option("--patch-image-size", type=int, help="OFA: image resolution of the processor (default: the task's).")
@click.option("--text-config", help="METER: the text tower's config (roberta-base, a folder, or a config.json).")
@click.option("--tokenizer", help="METER: tokenizer folder or id to ship with the model.")
@click.option("--head", help="METER: which task head to keep when a checkpoint has several (vqa, itm, mlm, ...).")
@click.option("--labels", type=click.Path(path_type=Path), help="METER classifier heads: the answer vocabulary "
              "(JSON list, {id: label}, METER/OFA ans2label dict or .pkl, or one label per line) for id2label.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def command(checkpoint, output, dtype, max_shard_size, force, trust_pickle, allow_nonfinite, bpe_dir, dictionary, bpe,
            patch_image_size,
            text_config, tokenizer, head, labels, quiet):
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
                   tokenizer=tokenizer, head=head, labels=labels)
    options = {k: v for k, v in options.items() if v is not None}
    if quiet:
        folder = convert_checkpoint(checkpoint, output, force=force, dtype=dtype, max_shard_size=max_shard_size,
                                    trust_pickle=trust_pickle, allow_nonfinite=allow_nonfinite, **options)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]converting"), BarColumn(), MofNCompleteColumn(), TextColumn("tensors"),
                      TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("convert", total=None)

            def progress(key, done, total):
                bar.update(task, completed=done, total=total)

            folder = convert_checkpoint(checkpoint, output, force=force, dtype=dtype, max_shard_size=max_shard_size,
                                        trust_pickle=trust_pickle, allow_nonfinite=allow_nonfinite, progress=progress,
                                        **options)
    _summary(folder, quiet)


def _summary(folder: Path, quiet: bool) -> None:
    import json

    info = json.loads((folder / "hfport.json").read_text())
    size = sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".safetensors")
    click.echo(f"wrote {folder} ({info['model_class']}, {info['stored_dtype']}, {size / 2**20:,.1f} MiB of weights, "
               f"{len(info['dropped'])} source tensors dropped with a reason, {len(info['tied'])} tied)")
    if not quiet:
        click.echo(f"next: hfport verify {folder} --golden REFERENCE.pt   (or --against CKPT --reference-code DIR)")
