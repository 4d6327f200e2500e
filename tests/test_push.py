"""`hfport push` against an in-memory Hub (tests/hub_server.py) driven by the real huggingface_hub client.

The CLI always runs in a fresh subprocess: huggingface_hub reads HF_ENDPOINT at import time, and a fresh process
is also what proves that a pushed model loads from the Hub with nothing but transformers + trust_remote_code.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

from hfport.push.model_card import auto_class_for, pipeline_tag_for
from hfport.push.publish import plan_push
from hfport.verify.report import report_markdown

from conftest import SHARED

try:
    from .hub_server import FakeHub, git_blob_sha1
except ImportError:  # tests/ is not a package
    from hub_server import FakeHub, git_blob_sha1

TOKEN = "hf_pushtest_0123456789abcdefSECRET"
REPO_ID = "tester/tiny-port"


# -- the folder to push ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvertedFolder:
    path: Path
    auto_class: str  # the transformers Auto class its card tells users to load it with
    inputs: dict  # keyword arguments of one forward pass
    output: str  # the output compared between the local folder and the Hub copy


def make_converted_folder(tmp_path: Path) -> ConvertedFolder:
    """The real pipeline's output for an upstream OFA fixture: converted with small shards (several LFS files),
    verified against its golden file (a passing verification.json). The only model-specific function here."""
    from hfport.converters import convert_checkpoint
    from hfport.verify.harness import verify_folder

    fixture = SHARED / "fixtures" / "ofa" / "ofa-tiny-plain"
    folder = convert_checkpoint(fixture / "checkpoint.pt", tmp_path / "ofa-tiny-plain-hf", max_shard_size="4MB")
    assert verify_folder(folder, golden=fixture / "reference.pt")["passed"]
    recorded = torch.load(fixture / "reference.pt", weights_only=True)["inputs"]
    inputs = {"input_ids": recorded["src_tokens"], "patch_images": recorded["patch_images"],
              "patch_masks": recorded["patch_masks"], "decoder_input_ids": recorded["prev_output_tokens"]}
    return ConvertedFolder(folder, "AutoModelForSeq2SeqLM", inputs, "logits")


def passing_report(passed: bool = True) -> dict:
    return {
        "schema": "hfport.verify/2", "passed": passed, "family": "ofa", "model": "tiny-port-hf",
        "reference": {"kind": "golden", "path": "reference.pt", "sha256": "ab" * 32},
        "tolerance": {"atol": 1e-4, "policy": "fp32"},
        "outputs": [{"name": "logits", "set": "inputs", "shape": [2, 4, 40], "max_abs": 1.5e-6 if passed else 0.37,
                     "mean_abs": 2e-7, "max_rel": 3e-6, "cosine": 1.0, "argmax_agree": 1.0, "top5_overlap": 1.0,
                     "min_atol_to_pass": 1.5e-6 if passed else 0.37, "worst_index": [0, 3, 12], "atol": 1e-4,
                     "passed": passed}],
        "generation": [{"name": "greedy", "set": "inputs", "exact": True, "reference": [[5, 2]],
                        "converted": [[5, 2]]}],
        "first_divergence": None if passed else "decoder_inner_states.1", "seconds": 1.2,
        "hfport_version": "0.1.0", "environment": {"torch": "2.13.0", "transformers": "5.23.0"},
    }


# -- fixtures --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory, shared_root) -> ConvertedFolder:
    return make_converted_folder(tmp_path_factory.mktemp("converted"))


@pytest.fixture
def hub():
    with FakeHub(tokens={TOKEN: "tester"}) as server:
        yield server


@pytest.fixture
def hub_env(hub, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_COLOR="1")
    return env


def hfport(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hfport.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line the CLI prints for an expected failure (and no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def copy_folder(converted: ConvertedFolder, tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted.path, tmp_path / "copy"))


# -- pushing ---------------------------------------------------------------------------------------------------------
def test_push_makes_exactly_one_commit_holding_every_file_and_the_card(converted, hub, hub_env):
    result = hfport(hub_env, "push", converted.path, REPO_ID)
    assert result.returncode == 0, result.stderr

    history = hub.repo(REPO_ID).history("main")
    assert len(history) == 2  # the repo's initial .gitattributes commit + ours
    pushed = history[-1]
    expected = {p.relative_to(converted.path).as_posix() for p in converted.path.rglob("*") if p.is_file()}
    assert set(pushed.files) == expected | {"README.md", ".gitattributes"}
    for path in expected:
        assert pushed.files[path].content == (converted.path / path).read_bytes(), path
    shards = [p for p in pushed.files if p.endswith(".safetensors")]
    assert len(shards) >= 2 and all(pushed.files[p].lfs_sha256 for p in shards)
    assert f"{hub.url}/{REPO_ID}/commit/{pushed.oid}" in result.stdout
    card = pushed.files["README.md"].content.decode()
    assert "library_name: transformers" in card and "pipeline_tag: image-to-text" in card
    logits = next(o for o in json.loads((converted.path / "verification.json").read_text())["outputs"]
                  if o["name"] == "logits" and o["set"] == "inputs")
    assert f"| `logits` | inputs | 2×5×77 | {logits['max_abs']:.2e} |" in card and "✅ pass" in card
    for text in (result.stdout, result.stderr, card):
        assert TOKEN not in text


def test_pushed_model_loads_from_the_hub_in_a_fresh_process_with_identical_logits(converted, hub, hub_env, tmp_path):
    assert hfport(hub_env, "push", converted.path, REPO_ID).returncode == 0
    card = hub.repo(REPO_ID).head().files["README.md"].content.decode()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert f"{converted.auto_class}.from_pretrained(\"{REPO_ID}\", trust_remote_code=True)" in snippet
    torch.save(converted.inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import sys, torch, transformers
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        exec({snippet!r})  # the card's usage snippet, as a user would paste it
        local = transformers.{converted.auto_class}.from_pretrained({str(converted.path)!r},
                                                                    trust_remote_code=True).eval()
        with torch.no_grad():
            torch.save({{"hub": model(**inputs).{converted.output}, "local": local(**inputs).{converted.output},
                         "hub_path": type(model).__module__}}, {str(tmp_path / 'out.pt')!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], env=hub_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert torch.equal(out["hub"], out["local"])
    assert out["hub"].abs().sum() > 0
    downloaded = {path for method, path in hub.requests if method == "GET" and "/resolve/" in path}
    assert any(p.endswith(".safetensors") for p in downloaded)  # the weights came from the server


def test_create_pr_lands_on_refs_pr_1_and_leaves_main_unchanged(converted, hub, hub_env):
    hub.create_repo(REPO_ID)
    main_before = hub.repo(REPO_ID).branches["main"]
    result = hfport(hub_env, "push", converted.path, REPO_ID, "--create-pr")
    assert result.returncode == 0, result.stderr
    repo = hub.repo(REPO_ID)
    assert repo.branches["main"] == main_before
    assert "README.md" in repo.head("refs/pr/1").files
    assert repo.head("refs/pr/1").parent == main_before
    assert f"{hub.url}/{REPO_ID}/discussions/1" in result.stdout


def test_revision_commits_to_a_branch_created_from_main(converted, hub, hub_env):
    result = hfport(hub_env, "push", converted.path, REPO_ID, "--revision", "fp32/v1", "-m", "fp32 weights",
                    "--private")
    assert result.returncode == 0, result.stderr
    repo = hub.repo(REPO_ID)
    assert repo.private
    assert set(repo.head("main").files) == {".gitattributes"}
    assert repo.head("fp32/v1").title == "fp32 weights"
    assert "config.json" in repo.head("fp32/v1").files


def test_pushing_the_same_folder_again_makes_no_new_commit(converted, hub, hub_env):
    assert hfport(hub_env, "push", converted.path, REPO_ID).returncode == 0
    again = hfport(hub_env, "push", converted.path, REPO_ID)
    assert again.returncode == 0 and "nothing to commit" in again.stdout
    assert len(hub.repo(REPO_ID).history()) == 2


def test_weight_files_the_new_push_lacks_are_deleted_in_the_same_commit(converted, hub, hub_env, tmp_path):
    from safetensors.torch import save_file

    assert hfport(hub_env, "push", converted.path, REPO_ID).returncode == 0
    folder = copy_folder(converted, tmp_path)
    old_shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    for name in old_shards + ["model.safetensors.index.json"]:
        (folder / name).unlink()
    save_file({"embed.weight": torch.zeros(40, 24)}, folder / "model.safetensors")
    result = hfport(hub_env, "push", folder, REPO_ID, "--allow-unverified")  # the report judged the old weights
    assert result.returncode == 0, result.stderr
    history = hub.repo(REPO_ID).history()
    weights = {p for p in history[-1].files if "safetensors" in p}
    assert len(history) == 3 and weights == {"model.safetensors"}


def test_create_pr_and_revision_together_is_a_usage_error(converted, hub, hub_env):
    result = hfport(hub_env, "push", converted.path, REPO_ID, "--create-pr", "--revision", "dev")
    assert result.returncode == 2 and "mutually exclusive" in result.stderr
    assert hub.requests == []


# -- the verification gate -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("report", ["missing", "failed"])
def test_unverified_folder_is_refused_and_the_hub_is_untouched(converted, hub, hub_env, tmp_path, report):
    folder = copy_folder(converted, tmp_path)
    if report == "missing":
        (folder / "verification.json").unlink()
    else:
        (folder / "verification.json").write_text(json.dumps(passing_report(passed=False)))
    hub.create_repo(REPO_ID)
    before = hub.snapshot()
    result = hfport(hub_env, "push", folder, REPO_ID)
    assert result.returncode != 0
    assert "refusing to publish" in error_line(result) and "--allow-unverified" in result.stderr
    assert hub.snapshot() == before and hub.requests == []


@pytest.mark.parametrize("report", ["missing", "failed"])
def test_allow_unverified_publishes_a_card_whose_first_lines_say_unverified(converted, hub, hub_env, tmp_path,
                                                                           report):
    folder = copy_folder(converted, tmp_path)
    if report == "missing":
        (folder / "verification.json").unlink()
    else:
        (folder / "verification.json").write_text(json.dumps(passing_report(passed=False)))
    result = hfport(hub_env, "push", folder, REPO_ID, "--allow-unverified")
    assert result.returncode == 0, result.stderr
    card = hub.repo(REPO_ID).head().files["README.md"].content.decode()
    body = card.split("\n---\n", 1)[1].strip().splitlines()
    assert "UNVERIFIED" in body[0]
    assert "- unverified" in card.split("\n---\n", 1)[0]


def test_folder_that_is_not_hfport_output_is_refused(hub, hub_env, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = hfport(hub_env, "push", tmp_path, REPO_ID, "--allow-unverified")
    assert result.returncode != 0 and "not a folder written by `hfport convert` (no hfport.json)" in result.stderr
    assert hub.requests == []


# -- failures --------------------------------------------------------------------------------------------------------
def test_hub_answering_401_is_a_one_line_error_naming_401(converted, hub, hub_env):
    hub.answer_401 = True
    result = hfport(hub_env, "push", converted.path, REPO_ID)
    assert result.returncode != 0
    assert "401 Unauthorized" in error_line(result)
    assert TOKEN not in result.stdout + result.stderr
    assert hub.repos == {}


def test_hub_answering_403_leaves_an_existing_repo_without_a_new_commit(converted, hub, hub_env):
    hub.create_repo(REPO_ID)
    before = hub.snapshot()
    hub.answer_403 = True
    result = hfport(hub_env, "push", converted.path, REPO_ID)
    assert result.returncode != 0 and "403 Forbidden" in error_line(result)
    assert hub.snapshot() == before


def test_missing_token_is_a_clear_error_before_any_request(converted, hub, hub_env):
    del hub_env["HF_TOKEN"]
    result = hfport(hub_env, "push", converted.path, REPO_ID)
    assert result.returncode != 0
    assert error_line(result) == "error: no Hugging Face token found"
    assert hub.requests == []


def test_connection_refused_is_a_clear_error(converted, hub, hub_env):
    hub.stop()
    result = hfport(hub_env, "push", converted.path, REPO_ID)
    assert result.returncode != 0
    assert f"cannot reach the Hub at {hub.url}: connection refused" in error_line(result)


def test_dry_run_lists_every_file_with_size_and_mode_and_sends_nothing(converted, hub, hub_env):
    del hub_env["HF_TOKEN"]
    result = hfport(hub_env, "push", converted.path, REPO_ID, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert hub.requests == []
    listed = re.findall(r"^  (lfs|regular) +([\d,]+)  (\S+)", result.stdout, re.M)
    expected = {p.relative_to(converted.path).as_posix(): p.stat().st_size
                for p in converted.path.rglob("*") if p.is_file()}
    assert {path: int(size.replace(",", "")) for _, size, path in listed if path != "README.md"} == expected
    modes = {path: mode for mode, _, path in listed}
    assert {p for p, m in modes.items() if m == "lfs"} == {p for p in expected if p.endswith((".safetensors", ".png"))}
    assert "--- README.md ---" in result.stdout and "library_name: transformers" in result.stdout


# -- the test Hub itself ---------------------------------------------------------------------------------------------
@dataclass
class Answer:
    status_code: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def call(hub, method: str, url: str, content: bytes | None = None, json_body=None) -> Answer:
    """One authenticated request to the test Hub, with nothing but the standard library."""
    if json_body is not None:
        content = json.dumps(json_body).encode()
    connection = http.client.HTTPConnection(*hub._server.server_address[:2], timeout=10)
    try:
        connection.request(method, urlsplit(url)._replace(scheme="", netloc="").geturl(), body=content,
                           headers={"Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        return Answer(response.status, dict(response.headers), response.read())
    finally:
        connection.close()


def ndjson(*lines: dict) -> bytes:
    return b"\n".join(json.dumps(line).encode() for line in lines)


def test_server_rejects_an_lfs_upload_whose_sha256_does_not_match(hub):
    hub.create_repo(REPO_ID)
    content = b"\0weights" * 100
    announced = hashlib.sha256(content).hexdigest()
    batch = call(hub, "POST", f"/{REPO_ID}.git/info/lfs/objects/batch", json_body={
        "operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
        "objects": [{"oid": announced, "size": len(content)}]}).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    tampered = call(hub, "PUT", href, content[:-1] + b"X")
    commit = call(hub, "POST", f"/api/models/{REPO_ID}/commit/main", ndjson(
        {"key": "header", "value": {"summary": "uses the rejected blob"}},
        {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": announced,
                                     "size": len(content)}}))
    honest = call(hub, "PUT", href, content)
    assert tampered.status_code == 400 and "sha256 mismatch" in tampered.json()["error"]
    assert commit.status_code == 422 and len(hub.repo(REPO_ID).history()) == 1
    assert honest.status_code == 200 and hub.lfs_objects[announced] == content


def test_server_answers_409_with_the_repo_url_when_the_repo_exists(hub):
    hub.create_repo(REPO_ID)
    answer = call(hub, "POST", "/api/repos/create",
                  json_body={"name": "tiny-port", "organization": "tester", "type": "model"})
    assert answer.status_code == 409 and answer.json()["url"] == f"{hub.url}/{REPO_ID}"


def test_server_resolves_url_encoded_pull_request_revisions(hub):
    hub.create_repo(REPO_ID)
    readme = b"---\nlicense: mit\n---\nhello\n"
    opened = call(hub, "POST", f"/api/models/{REPO_ID}/commit/main?create_pr=1", ndjson(
        {"key": "header", "value": {"summary": "pr"}},
        {"key": "file", "value": {"path": "README.md", "encoding": "base64",
                                  "content": base64.b64encode(readme).decode()}}))
    head = call(hub, "HEAD", f"/{REPO_ID}/resolve/refs%2Fpr%2F1/README.md")
    on_main = call(hub, "HEAD", f"/{REPO_ID}/resolve/main/README.md")
    no_rev = call(hub, "HEAD", f"/{REPO_ID}/resolve/refs%2Fpr%2F9/README.md")
    no_repo = call(hub, "HEAD", "/tester/nothing/resolve/main/README.md")
    assert opened.json()["pullRequestUrl"] == f"{hub.url}/{REPO_ID}/discussions/1"
    assert head.status_code == 200
    assert head.headers["X-Repo-Commit"] == hub.repo(REPO_ID).branches["refs/pr/1"]
    assert head.headers["ETag"] == f'"{git_blob_sha1(readme)}"'
    assert on_main.headers["X-Error-Code"] == "EntryNotFound"
    assert no_rev.headers["X-Error-Code"] == "RevisionNotFound" and no_repo.headers["X-Error-Code"] == "RepoNotFound"


# -- the card --------------------------------------------------------------------------------------------------------
def test_report_markdown_has_one_row_per_output_with_its_numbers():
    markdown = report_markdown(passing_report(passed=False))
    assert markdown.startswith("**Verification FAILED**")
    assert "| `logits` | inputs | 2×4×40 | 3.70e-01 | 2.00e-07 | 3.00e-06 | 1.000000 | 1.000 | 1.000 | 3.70e-01 " \
           "| 1.00e-04 | ❌ FAIL |" in markdown
    assert "| greedy | inputs | yes | ✅ pass |" in markdown
    assert "First diverging intermediate output: `decoder_inner_states.1`" in markdown  # a bare name, as older reports
    divergence = {"name": "decoder_inner_states.1", "set": "inputs_masked", "module": "decoder.layers.0",
                  "converted_module": "decoder.layers.0", "what": "output of decoder layer 0",
                  "layer": "decoder.layers.0 (output of decoder layer 0)", "max_abs": 0.37}
    assert ("First diverging module: `decoder.layers.0` (output of decoder layer 0; trace `decoder_inner_states.1`; "
            "inputs inputs_masked; max abs 3.70e-01)") in report_markdown(dict(passing_report(False),
                                                                                first_divergence=divergence))


def test_report_markdown_collapses_per_layer_outputs_into_their_worst_row():
    report = passing_report()
    layer = dict(report["outputs"][0], shape=[2, 7, 64], max_abs=1e-6, min_atol_to_pass=1e-6)
    report["outputs"] = [dict(layer, name="encoder_hidden_states.0"), dict(layer, name="encoder_hidden_states.1",
                                                                       max_abs=4e-6, cosine=0.99999)]
    report["generation"].append({"name": "beam5", "set": "inputs", "exact": False, "required": False})
    markdown = report_markdown(report)
    assert "| `encoder_hidden_states.*` (2) | inputs | 2×7×64 | 4.00e-06 |" in markdown
    assert "0.999990" in markdown and "| beam5 | inputs | no | ⚠️ differs (informational) |" in markdown
    assert "failed" not in markdown.splitlines()[0]


@pytest.mark.parametrize("family, task, model_class, tag", [
    ("ofa", "caption", "OFAForConditionalGeneration", "image-to-text"),
    ("ofa", "vqa_gen", "OFAForConditionalGeneration", "visual-question-answering"),
    ("ofa", "refcoco", "OFAForConditionalGeneration", "zero-shot-object-detection"),
    ("ofa", "pretrain", "OFAForConditionalGeneration", "image-to-text"),
    ("meter", "vqa", "METERForQuestionAnswering", "visual-question-answering"),
    ("meter", "irtr", "METERForImageTextRetrieval", "zero-shot-image-classification"),
    ("meter", "nlvr2", "METERForVisualReasoning", "visual-question-answering"),
    ("meter", "snli", "METERForVisualEntailment", "visual-question-answering"),
    ("meter", "pretrain", "METERForPreTraining", "feature-extraction"),
])
def test_pipeline_tag_follows_family_and_task(family, task, model_class, tag):
    assert pipeline_tag_for({"family": family, "task": task, "model_class": model_class}) == tag


def test_auto_class_is_the_auto_map_entry_of_the_model_class():
    config = {"auto_map": {"AutoConfig": "configuration_ofa.OFAConfig", "AutoModel": "modeling_ofa.OFAModel",
                           "AutoModelForSeq2SeqLM": "modeling_ofa.OFAForConditionalGeneration"}}
    assert auto_class_for(config, "OFAForConditionalGeneration") == "AutoModelForSeq2SeqLM"
    assert auto_class_for(config, "OFAModel") == "AutoModel"


def test_plan_includes_an_external_report_as_verification_json(converted, tmp_path):
    folder = copy_folder(converted, tmp_path)
    report = tmp_path / "elsewhere.json"
    (folder / "verification.json").rename(report)
    plan = plan_push(folder, REPO_ID, report_path=report)
    assert plan.status == "passed"
    assert [f.local_path for f in plan.files if f.path_in_repo == "verification.json"] == [report]
