"""`hfport verify FOLDER`: does the converted model compute what the original computes?"""

from __future__ import annotations

import json
from pathlib import Path

import click

from hfport.errors import ConfigError, VerificationFailed


@click.command("verify")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--golden", type=click.Path(path_type=Path), help="Golden file recorded from the original (hfport record, or a fixture's reference.pt).")
@click.option("--against", type=click.Path(path_type=Path), help="Original checkpoint to run live (needs --reference-code).")
@click.option("--reference-code", type=click.Path(path_type=Path), help="The original code checkout (OFA or METER).")
@click.option("--reference-python", help="Python of the original's own environment (default: this one).")
@click.option("--bpe-dir", help="OFA live: folder with dict.txt, encoder.json, vocab.bpe.")
@click.option("--text-config", help="METER live: the text encoder's config.json.")
@click.option("--vit", help="METER live: the CLIP archive the config names.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="Your own image (through the folder's processor).")
@click.option("--text", help="Your own text (through the folder's tokenizer).")
@click.option("--tokens", help="Token ids instead of --text, e.g. '0,713,2'.")
@click.option("--atol", type=float, help="Absolute tolerance (default: by stored dtype: fp32 1e-4 OFA / 1e-5 METER).")
@click.option("--rtol", type=float, help="Relative tolerance per element (default 0).")
@click.option("--scale-rtol", type=float, help="Tolerance relative to each tensor's largest reference value "
              "(fp32 default 2e-6: fp32's own noise floor in deep stacks).")
@click.option("--check-beam", is_flag=True, help="Require beam-search results to be token-exact too.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Where to write the JSON report (default FOLDER/verification.json).")
@click.option("--trust-remote-code", is_flag=True,
              help="Import the folder's Python even where it differs from the model code this hfport ships "
                   "(refused otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print the Markdown report (for a model card) on stdout.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the result as JUnit XML (one test case per output, layer and generation check) "
                   "for CI test reports.")
def command(folder, golden, against, reference_code, reference_python, bpe_dir, text_config, vit, image, text, tokens,
            atol, rtol, scale_rtol, check_beam, report_path, trust_remote_code, as_json, as_markdown, junit_path):
    """Compare a converted folder with the original model, output by output and layer by layer.

    Exit code 0: equivalent within tolerance; 1: it is not (the report names the first diverging layer);
    2: the inputs could not be used.

    \b
    Examples:
      hfport verify ./ofa-tiny-hf --golden reference.pt
      hfport verify ./ofa-large-hf --against ofa_large.pt --reference-code ~/src/OFA --reference-python ~/fs/bin/python
      hfport verify ./ofa-large-hf --against ofa_large.pt --reference-code ~/src/OFA --image cat.jpg --text " what does the image describe?"
    """
    import math

    from hfport.verify.harness import verify_folder
    from hfport.verify.report import divergence_line, print_summary, report_markdown

    for option, value in (("--atol", atol), ("--rtol", rtol), ("--scale-rtol", scale_rtol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{option} must be a finite number >= 0, not {value}")
    if report_path is not None and report_path.is_dir():
        raise ConfigError(f"--report {report_path} is a folder; give a file name for the JSON report")
    if junit_path is not None and junit_path.is_dir():
        raise ConfigError(f"--junit {junit_path} is a folder; give a file name for the JUnit XML")

    if golden is None and against is None:
        raise ConfigError("give a reference: --golden FILE or --against CKPT --reference-code DIR")
    report = verify_folder(folder, golden=golden, against=against, reference_code=reference_code,
                           reference_python=reference_python, bpe_dir=bpe_dir, text_config=text_config, vit=vit,
                           image=image, text=text, tokens=tokens, atol=atol, rtol=rtol, scale_rtol=scale_rtol, check_beam=check_beam,
                           report_path=report_path, trust_remote_code=trust_remote_code)
    if junit_path is not None:
        from hfport.family import ConvertedFolder
        from hfport.verify.junit import write_junit

        opened = ConvertedFolder.open(folder, require_provenance=False)
        write_junit(report, junit_path, opened.family.trace_variant(opened.config))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif as_markdown:
        click.echo(report_markdown(report))
    else:
        print_summary(report)
    if not report["passed"]:
        div = report.get("first_divergence")
        where = f"; first divergence: {divergence_line(div)}" if div else ""
        problems = report.get("problems") or []
        if problems:
            failure = VerificationFailed(f"{folder}: verification failed: {'; '.join(problems)}")
        else:
            failure = VerificationFailed(f"{folder} does not match the reference within atol "
                                         f"{report['tolerance']['atol']:g}{where}")
        failure.json_emitted = as_json  # the report on stdout is the machine-readable result (passed: false)
        raise failure
