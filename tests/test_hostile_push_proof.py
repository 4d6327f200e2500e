"""Hostile inputs for push / verify / run / export (issue 11 items 1, 3, 4, 5, 11), built on the fly.

Each case comes from tests/hostile_push_proof_cases.py (which also prints the outcome table for any hfport):
it runs one hfport command in a fresh process and the test asserts the outcome — one `error:` line naming the
offending files, a non-zero exit, nothing on the Hub, no code run, no secret uploaded — or, for the lost commit
answer, a success that says the commit landed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_push_proof_cases as cases  # noqa: E402
from hub_server import FakeHub  # noqa: E402

from hfport.code_trust import check_model_code, foreign_code, packaged_model_code  # noqa: E402
from hfport.folder_files import UnsafeFolderEntry, regular_files  # noqa: E402


@pytest.fixture(scope="module")
def lab(tmp_path_factory, shared_root):
    return cases.Lab(tmp_path_factory.mktemp("hostile"), in_process=True)


def _refused(outcome: cases.Outcome, *fragments: str) -> str:
    assert outcome.ok, (outcome.returncode, outcome.hung, outcome.stderr[-2000:])
    (line,) = outcome.error_lines
    for fragment in fragments:
        assert fragment in line, line
    return line


# -- item 1: only regular files inside the folder go up -------------------------------------------------------------
def test_push_refuses_a_symlink_to_a_key_outside_the_folder_naming_it_and_uploads_nothing(lab):
    outcome = cases.symlink_file_out(lab)
    _refused(outcome, "notes.txt (symlink to ", "outside the folder")
    assert not outcome.secret_uploaded and not outcome.remote_changed


def test_push_refuses_a_symlinked_directory_naming_it(lab):
    _refused(cases.symlink_dir_out(lab), "extras (symlinked directory)")


def test_push_refuses_a_fifo_instead_of_blocking_on_it(lab):
    _refused(cases.fifo_in_folder(lab), "weights.pipe (not a regular file)")


def test_a_symlink_to_a_file_inside_the_folder_is_kept(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "alias.json").symlink_to(tmp_path / "config.json")
    (tmp_path / ".hidden").symlink_to("/etc/passwd")  # hidden entries are skipped, as before
    assert [p.name for p in regular_files(tmp_path)] == ["alias.json", "config.json"]
    (tmp_path / "up").symlink_to("..")
    with pytest.raises(UnsafeFolderEntry, match=r"up \(symlinked directory\)"):
        regular_files(tmp_path)


# -- item 3: the proof is bound to the folder's contents ------------------------------------------------------------
def test_push_refuses_a_hand_written_report_that_records_no_file_hashes(lab):
    _refused(cases.handwritten_report(lab), "does not record the sha256 of the files it judged")


def test_push_refuses_a_report_made_before_a_weight_changed_naming_the_shard(lab):
    line = _refused(cases.stale_report(lab), "the report was made for other files", ".safetensors (changed)")
    assert "refusing to publish" in line


def test_push_refuses_another_folders_report(lab):
    _refused(cases.other_folders_report(lab), "the report was made for other files")


def test_push_refuses_a_passing_report_that_compared_no_outputs(lab):
    _refused(cases.trimmed_report(lab), "proves nothing", "it compared no outputs")


def test_verify_fails_against_a_golden_file_with_no_outputs(lab):
    outcome = cases.golden_without_outputs(lab)
    _refused(outcome, "the reference holds no outputs: nothing was compared")
    assert outcome.returncode == 1


def test_verify_fails_when_the_golden_files_generation_checks_did_not_run(lab):
    _refused(cases.golden_generation_skipped(lab), "ran 0 of the reference's 4 generation checks")


def test_report_records_the_sha256_of_every_judged_file_and_the_reference_counts(lab):
    folder = lab.base()
    report = json.loads((folder / "verification.json").read_text())
    assert report["schema"] == "hfport.verify/2" and report["problems"] == []
    names = {p.relative_to(folder).as_posix() for p in folder.iterdir() if p.is_file()} - {"verification.json",
                                                                                          "verification.png"}
    assert set(report["files"]) == names and {"hfport.json", "config.json", "modeling_ofa.py"} <= names
    assert len(report["outputs"]) == report["reference"]["outputs"] > 0
    assert len(report["generation"]) == report["reference"]["generations"] == 4


def test_pushed_card_says_which_files_the_verification_judged(lab):
    with FakeHub(tokens={cases.TOKEN: "tester"}) as hub:
        done, hung = lab.cli("push", lab.base(), cases.REPO_ID, hub=hub)
        assert done.returncode == 0, done.stderr
        card = hub.repo(cases.REPO_ID).head().files["README.md"].content.decode()
    assert "recorded the sha256 of every file it judged" in card
    assert "`model.safetensors.index.json`" in card and "`hfport.json`" in card


# -- item 4: tolerance from the tensors, not from hfport.json -------------------------------------------------------
def test_verify_refuses_a_stored_dtype_claim_the_weights_contradict(lab):
    _refused(cases.tolerance_from_stored_dtype(lab), "says the weights are stored as bfloat16",
             "the weight files hold float32")


def test_a_float64_source_claim_does_not_loosen_fp32_storage(lab):
    outcome = cases.tolerance_from_source_dtype(lab)
    _refused(outcome, "does not match the reference within atol 0.0001")


def test_tolerance_follows_the_dtype_in_the_safetensors_headers(tmp_path):
    import torch
    from safetensors.torch import save_file

    from hfport.verify.harness import tolerance_policy

    (tmp_path / "config.json").write_text('{"model_type": "ofa"}')
    (tmp_path / "hfport.json").write_text('{"family": "ofa", "source_dtype": "float32"}')
    save_file({"w": torch.zeros(2, dtype=torch.bfloat16), "ids": torch.zeros(2, dtype=torch.long)},
              str(tmp_path / "model.safetensors"))
    policy = tolerance_policy(tmp_path, "ofa")
    assert policy["stored_dtype"] == "bfloat16" and policy["atol"] == 5e-2


# -- item 5: the folder's Python runs only when it is hfport's own, or trusted --------------------------------------
@pytest.mark.parametrize("command", ["verify", "run", "export"])
def test_edited_model_code_is_refused_and_never_runs(lab, command):
    outcome = {"verify": cases.edited_code_verify, "run": cases.edited_code_run,
               "export": cases.edited_code_export}[command](lab)
    name = "modeling_ofa.py" if command == "export" else "configuration_ofa.py"
    _refused(outcome, f"{name} (edited since conversion)", "refusing to")
    assert not outcome.code_run and "--trust-remote-code" in outcome.stderr


def test_trust_remote_code_runs_the_edited_code(lab):
    folder = lab.copy(lab.base(), "trusted")
    marker = cases._plant(folder, lab)
    done, _ = lab.cli("verify", folder, "--golden", cases.FIXTURE / "reference.pt", "--trust-remote-code")
    assert done.returncode == 0, done.stderr
    assert marker.exists()


def test_a_python_file_hfport_does_not_ship_is_foreign_and_hfport_json_records_the_code(lab, tmp_path):
    folder = Path(shutil.copytree(lab.base(), tmp_path / "f"))
    assert foreign_code(folder) == []
    recorded = json.loads((folder / "hfport.json").read_text())["code"]
    assert recorded == {name: packaged_model_code()[name] for name in recorded} and "modeling_ofa.py" in recorded
    (folder / "helpers.py").write_text("print('hi')\n")
    with pytest.raises(Exception, match=r"helpers\.py \(not hfport model code\)"):
        check_model_code(folder, False, "verify it")
    assert check_model_code(folder, True, "verify it") == ["helpers.py"]


def test_help_of_each_command_that_loads_the_folder_documents_trust_remote_code(lab):
    for command in ("verify", "run", "export"):
        done, _ = lab.cli(command, "--help")
        assert "--trust-remote-code" in done.stdout


# -- item 11: push faults ---------------------------------------------------------------------------------------------
def test_push_gives_up_on_a_hub_that_never_answers_within_its_timeout(lab):
    outcome = cases.stalled_hub(lab)
    _refused(outcome, "did not answer within 3 s", "while creating tester/hostile")
    assert not outcome.hung


def test_a_commit_that_landed_before_the_answer_was_lost_is_reported_as_landed(lab):
    outcome = cases.commit_landed_answer_lost(lab)
    assert outcome.ok, outcome.stderr[-2000:]
    assert "the remote holds the commit: it landed" in outcome.stderr
    assert f"committed to {cases.REPO_ID}@main" in outcome.stdout


def test_a_commit_lost_before_it_applied_is_a_failure_after_checking_the_remote(lab):
    _refused(cases.commit_lost(lab), "the remote shows no new commit: nothing was published")


@pytest.mark.parametrize("repo_id", ["../evil", "org/..", "org/.hidden"])
def test_dry_run_rejects_repo_ids_the_real_push_rejects(lab, repo_id):
    outcome = cases.observe(lab, "Hub faults", repo_id, "refuse", ["push", lab.base(), repo_id, "--dry-run"])
    _refused(outcome, f"{repo_id!r} is not a Hub repo id")


def test_an_auto_map_pointing_at_another_repositorys_code_is_foreign(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {
        "AutoConfig": "configuration_ofa.OFAConfig", "AutoModel": "evil/repo--modeling_ofa.OFAModel"}}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["mine.Tok", None]}}))
    with pytest.raises(Exception, match=r"config\.json auto_map evil/repo--modeling_ofa\.OFAModel"):
        check_model_code(tmp_path, False, "run it")
    assert foreign_code(tmp_path) == ["config.json auto_map evil/repo--modeling_ofa.OFAModel",
                                      "tokenizer_config.json auto_map mine.Tok"]
