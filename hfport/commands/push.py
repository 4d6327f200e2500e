"""`hfport push FOLDER REPO_ID`: publish a verified conversion in one Hub commit, with its model card."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hfport.push.model_card import human_size
from hfport.push.publish import DEFAULT_TIMEOUT, PushPlan, plan_push, push


def _describe(plan: PushPlan, target: str) -> str:
    lines = [f"{len(plan.files)} files ({human_size(plan.total_size).split(' (')[0]}) -> {plan.repo_id} ({target}), "
             "one commit:"]
    for f in plan.files:
        note = "  (generated model card)" if f.content is not None else ""
        lines.append(f"  {'lfs' if f.lfs else 'regular':<8}{f.size:>14,}  {f.path_in_repo}{note}")
    return "\n".join(lines)


@click.command("push")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo as private (an existing repo keeps its visibility).")
@click.option("--create-pr", is_flag=True, help="Open a pull request against main instead of committing to it.")
@click.option("--revision", metavar="BRANCH", help="Commit to this branch (created from main if needed).")
@click.option("--message", "-m", metavar="MSG", help="Commit message (default: names the model and its source).")
@click.option("--dry-run", is_flag=True, help="List the files and print the model card; no network, no token.")
@click.option("--allow-unverified", is_flag=True,
              help="Publish without a passing verification report; the card then says so in its first lines.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Verification report to use instead of FOLDER/verification.json.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT, show_default=True,
              metavar="SECONDS", help="Give up when the Hub sends nothing for this long on one request.")
@click.option("--save-card", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the generated model card to this local file.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (--dry-run) or the commit as JSON on stdout.")
def command(folder, repo_id, private, create_pr, revision, message, dry_run, allow_unverified, report, timeout,
            save_card, as_json):
    """Push a converted FOLDER to the Hub as REPO_ID in one atomic commit.

    Refuses a folder without a passing `hfport verify` report that judged exactly these files (their sha256 must
    match the report's) unless --allow-unverified. Uploads only regular files inside FOLDER: a symlink leading
    out of it, or any special file, is refused by name. The model card
    (README.md) is generated into the commit: metadata, usage, the verification table and the provenance.
    The token comes from HF_TOKEN or `hf auth login`; it is never printed.

    \b
    Examples:
      hfport push ./ofa-large-hf my-org/ofa-large --dry-run
      hfport push ./ofa-large-hf my-org/ofa-large --create-pr
      hfport push ./meter-vqa-hf my-org/meter-vqa --revision fp16 -m "fp16 weights"
    """
    if create_pr and revision:
        raise click.UsageError("--create-pr and --revision are mutually exclusive (a pull request targets main)")
    plan = plan_push(folder, repo_id, report_path=report, allow_unverified=allow_unverified)
    if save_card:
        save_card.write_text(plan.card, encoding="utf-8")
    if plan.status != "passed":
        click.echo(f"warning: publishing an UNVERIFIED model (verification {plan.status}); the card says so",
                   err=True)
    target = "pull request on main" if create_pr else f"branch {revision or 'main'}"
    if as_json and dry_run:
        click.echo(json.dumps({"dry_run": True, "repo_id": plan.repo_id, "target": target, "status": plan.status,
                               "files": [{"path": f.path_in_repo, "size": f.size, "lfs": f.lfs,
                                          "generated": f.content is not None} for f in plan.files],
                               "card": plan.card}, indent=2, ensure_ascii=False))
        return
    if dry_run:
        click.echo("dry run: nothing is sent")
        click.echo(_describe(plan, target))
        click.echo("(weight files already on the Hub that this push does not replace are deleted in the same "
                   "commit; modes are predicted, the Hub decides on push)")
        click.echo("\n--- README.md ---")
        click.echo(plan.card)
        return
    click.echo(f"pushing {len(plan.files)} files ({human_size(plan.total_size).split(' (')[0]}) to {repo_id} "
               f"({target}) in one commit", err=True)
    result = push(plan, private=private, create_pr=create_pr, revision=revision, message=message, timeout=timeout)
    if as_json:
        click.echo(json.dumps({"dry_run": False, "repo_id": repo_id, "status": plan.status, "changed": result.changed,
                               "revision": result.revision, "commit_url": result.commit_url,
                               "commit_oid": result.commit_oid, "pr_url": result.pr_url,
                               "deleted": list(result.deleted), "answer_lost": result.answer_lost}, indent=2))
        return
    if result.answer_lost:
        click.echo("the Hub's answer to the commit was lost, but the remote holds the commit: it landed", err=True)
    if result.deleted:
        click.echo(f"removed stale weight files: {', '.join(result.deleted)}", err=True)
    if not result.changed:
        click.echo(f"nothing to commit: {repo_id}@{result.revision} already holds these files: {result.commit_url}")
    elif result.pr_url:
        click.echo(f"opened pull request {result.revision}: {result.pr_url}")
        click.echo(f"commit: {result.commit_url}")
    else:
        click.echo(f"committed to {repo_id}@{result.revision}: {result.commit_url}")
