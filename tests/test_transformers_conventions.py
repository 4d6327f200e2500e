"""Converted OFA and METER folders answer the calls a transformers user makes on any stock model: the
image-text-to-text pipeline, gradient checkpointing, attention maps in eager mode, set_attn_implementation, the static
cache, `pixel_values`; and they carry their answer vocabularies (labels, constrained answers, grounding boxes)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

DATA = Path(__file__).parent / "data"
QUESTION = "what is it?"
# answers spelled with words of the tiny fixture dictionary (shared prefixes exercise the trie)
ANSWERS = ["the", "the of", "to and", "have be", "have", "a", "it is"]


def _image(name: str = "rgb_37x23") -> Image.Image:
    with Image.open(DATA / "images" / f"{name}.png") as image:
        image.load()
        return image.convert("RGB")


@pytest.fixture(scope="module")
def ofa_folder(tmp_path_factory, shared_root) -> Path:
    from hfport.converters import convert_checkpoint

    root = tmp_path_factory.mktemp("conventions_ofa")
    bpe_dir = root / "bpe"
    bpe_dir.mkdir()
    (bpe_dir / "dict.txt").symlink_to(shared_root / "fixtures" / "ofa" / "bpe_tiny" / "dict.txt")
    for name in ("encoder.json", "vocab.bpe"):
        (bpe_dir / name).symlink_to(shared_root / "fixtures" / "ofa" / "bpe" / name)
    source = shared_root / "fixtures" / "ofa" / "ofa-tiny-standard" / "checkpoint.pt"
    return convert_checkpoint(source, root / "out", bpe_dir=bpe_dir, patch_image_size=64)


@pytest.fixture(scope="module")
def ofa(ofa_folder):
    from transformers import AutoModelForSeq2SeqLM, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(ofa_folder), trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(ofa_folder), trust_remote_code=True).eval()
    return processor, model


@pytest.fixture(scope="module")
def ofa_inputs(ofa):
    processor, _ = ofa
    return processor(images=[_image(), _image("gray_33x33")], text=[QUESTION, "the cat?"], task="vqa",
                     return_tensors="pt")


# -- pipeline ----------------------------------------------------------------------------------------------------------

def test_ofa_folder_runs_in_the_image_text_to_text_pipeline_with_the_tokens_generate_gives(ofa_folder, ofa):
    from transformers import pipeline

    from hfport.push.model_card import pipeline_tag_for

    processor, model = ofa
    pipe = pipeline("image-text-to-text", model=str(ofa_folder), trust_remote_code=True)
    got = pipe(images=_image(), text=QUESTION, max_new_tokens=6, return_tensors=True)[0]["generated_token_ids"]
    inputs = processor(images=_image(), text=QUESTION, return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=6, num_beams=1, do_sample=False)[0]
    assert torch.equal(torch.as_tensor(got), expected) and len(expected) > 2
    text = pipe(images=_image(), text=QUESTION, max_new_tokens=6, return_full_text=False)[0]["generated_text"]
    assert text.strip() == processor.decode(expected)
    # the card advertises exactly this pipeline
    assert pipeline_tag_for({"family": "ofa", "task": "vqa", "model_class": model.__class__.__name__}) == (
        "image-text-to-text")


# -- gradient checkpointing --------------------------------------------------------------------------------------------

def _training_step(model, inputs: dict, checkpointing: bool):
    model.train()
    model.zero_grad(set_to_none=True)
    if checkpointing:
        model.gradient_checkpointing_enable()
    else:
        model.gradient_checkpointing_disable()
    torch.manual_seed(0)  # dropout / drop-path draw the same masks in both runs
    loss = model(**inputs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.gradient_checkpointing_disable()
    model.eval()
    return loss.detach(), grads


def _assert_same_step(model, inputs):
    plain_loss, plain_grads = _training_step(model, inputs, checkpointing=False)
    ckpt_loss, ckpt_grads = _training_step(model, inputs, checkpointing=True)
    assert torch.allclose(plain_loss, ckpt_loss, rtol=0, atol=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 20
    worst = max((plain_grads[k] - ckpt_grads[k]).abs().max().item() for k in plain_grads)
    assert worst <= 1e-6, worst


def test_ofa_training_step_with_gradient_checkpointing_gives_the_same_loss_and_gradients(ofa, ofa_inputs):
    processor, model = ofa
    assert model.config.dropout > 0  # the fixture trains with dropout: checkpointing must replay the same masks
    labels = processor.tokenizer([" the of", " have"], padding=True, return_tensors="pt")["input_ids"][:, 1:]
    labels = labels.masked_fill(labels == model.config.pad_token_id, -100)
    _assert_same_step(model, {**ofa_inputs, "labels": labels})
    assert any(getattr(m, "gradient_checkpointing", False) is False for m in model.modules())


def test_meter_training_step_with_gradient_checkpointing_gives_the_same_loss_and_gradients(converted_fixtures):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(converted_fixtures("meter-tiny-vqa-lightning")), trust_remote_code=True)
    size = model.config.image_size
    generator = torch.Generator().manual_seed(3)
    inputs = {"input_ids": torch.randint(5, 50, (2, 8), generator=generator),
              "pixel_values": torch.randn(2, 3, size, size, generator=generator),
              "labels": torch.rand(2, model.config.num_labels, generator=generator)}
    _assert_same_step(model, inputs)


# -- attentions, attention implementation --------------------------------------------------------------------------

def test_eager_ofa_returns_attention_probabilities_that_are_the_ones_it_applies(ofa_folder, ofa_inputs):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(str(ofa_folder), trust_remote_code=True,
                                                  attn_implementation="eager").eval()
    captured = {}
    attention = model.encoder.layers[0].self_attn
    hook = attention.register_forward_hook(lambda m, args, kwargs, out: captured.update(x=args[0], out=out[0]),
                                           with_kwargs=True)
    with torch.no_grad():
        out = model(**ofa_inputs, decoder_input_ids=torch.tensor([[0, 5, 6], [0, 33, 1]]), output_attentions=True)
    hook.remove()
    config = model.config
    batch, source = out.encoder_last_hidden_state.shape[:2]
    assert len(out.encoder_attentions) == config.encoder_layers and len(out.decoder_attentions) == config.decoder_layers
    assert out.encoder_attentions[0].shape == (batch, config.encoder_attention_heads, source, source)
    assert out.decoder_attentions[0].shape == (batch, config.decoder_attention_heads, 3, 3)
    assert out.cross_attentions[0].shape == (batch, config.decoder_attention_heads, 3, source)
    for maps in (out.encoder_attentions, out.decoder_attentions, out.cross_attentions):
        for probs in maps:
            assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    assert out.decoder_attentions[0][..., 0, 1:].abs().max() == 0  # causal: the first step sees only itself
    # probabilities x values through the output projection is exactly what the layer returned
    values = attention.v_proj(captured["x"]).view(batch, source, attention.num_heads, -1).transpose(1, 2)
    context = (out.encoder_attentions[0] @ values).transpose(1, 2)
    if attention.c_attn is not None:  # scale_heads
        context = context * attention.c_attn[:, None]
    context = context.reshape(batch, source, -1)
    assert torch.allclose(attention.out_proj(context), captured["out"], atol=1e-5)


def test_set_attn_implementation_switches_ofa_between_sdpa_and_eager_with_the_same_outputs(ofa, ofa_inputs):
    _, model = ofa
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = model(**ofa_inputs, output_attentions=True)
        model.set_attn_implementation("eager")
        try:
            eager = model(**ofa_inputs, output_attentions=True)
        finally:
            model.set_attn_implementation("sdpa")
        back = model(**ofa_inputs, output_attentions=True)
    assert sdpa.encoder_attentions is None and back.encoder_attentions is None  # SDPA computes no probabilities
    assert eager.encoder_attentions is not None and len(eager.cross_attentions) == model.config.decoder_layers
    assert torch.allclose(sdpa.logits, eager.logits, atol=1e-5)


def test_a_directly_built_meter_hands_its_attention_implementation_to_every_tower():
    from transformers import BertConfig, SwinConfig

    from hfport.models.meter.configuration_meter import MeterConfig
    from hfport.models.meter.modeling_meter import MeterForQuestionAnswering

    vision = SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2)
    text = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=12)
    config = MeterConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), hidden_size=16,
                         num_attention_heads=2, num_top_layer=1, intermediate_size=32, max_text_len=8, image_size=32,
                         num_labels=3, attn_implementation="eager")
    model = MeterForQuestionAnswering(config).eval()
    swin_attention = model.meter.vision_model.encoder.layers[0].blocks[0].attention
    assert swin_attention.config._attn_implementation == "eager"
    assert model.meter.text_model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    assert swin_attention.config._attn_implementation == "sdpa"
    inputs = {"input_ids": torch.randint(5, 30, (1, 8)), "pixel_values": torch.randn(1, 3, 32, 32)}
    with torch.no_grad():
        model(**inputs)
    assert model.meter.fusion_config._attn_implementation == "sdpa"


# -- cache, input names --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_beams", [1, 3])
def test_static_cache_generates_the_same_tokens_as_the_dynamic_cache(ofa, ofa_inputs, num_beams):
    _, model = ofa
    common = dict(max_new_tokens=8, num_beams=num_beams, do_sample=False)
    dynamic = model.generate(**ofa_inputs, **common)
    static = model.generate(**ofa_inputs, **common, cache_implementation="static")
    assert torch.equal(dynamic, static)


def test_ofa_takes_its_image_as_pixel_values_too(ofa, ofa_inputs):
    _, model = ofa
    renamed = {("pixel_values" if k == "patch_images" else k): v for k, v in ofa_inputs.items()}
    with torch.no_grad():
        expected = model(**ofa_inputs).logits
        assert torch.equal(model(**renamed).logits, expected)
        assert torch.equal(model.generate(**renamed, max_new_tokens=5), model.generate(**ofa_inputs, max_new_tokens=5))
    with pytest.raises(ValueError, match="patch_images or as pixel_values"):
        model(**ofa_inputs, pixel_values=ofa_inputs["patch_images"].clone())


# -- answers -----------------------------------------------------------------------------------------------------------

def _answer_scores(model, processor, inputs, answers) -> torch.Tensor:
    """Sum of log-probabilities of each answer (its tokens then </s>), teacher-forced, one answer at a time."""
    scores = []
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(**{k: v for k, v in inputs.items()})
        for ids in processor.answer_token_ids(answers):
            decoder_input_ids = torch.tensor([ids[:-1]])
            logits = model(encoder_outputs=encoder_outputs, attention_mask=inputs["attention_mask"],
                           decoder_input_ids=decoder_input_ids, use_cache=False).logits
            log_probs = logits.log_softmax(-1)[0, torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
            scores.append(log_probs.sum())
    return torch.stack(scores)


@pytest.mark.parametrize("image_name, question", [("rgb_37x23", QUESTION), ("gray_33x33", "the cat?"),
                                                  ("rgb_37x23", "is it a man?")])
def test_answer_constrained_decoding_returns_the_best_scored_listed_answer(ofa, image_name, question):
    processor, model = ofa
    inputs = processor(images=_image(image_name), text=question, task="vqa", return_tensors="pt")
    constraint = processor.constrain_to_answers(ANSWERS)
    greedy = model.generate(**inputs, max_new_tokens=8, prefix_allowed_tokens_fn=constraint)
    assert processor.decode(greedy[0]) in ANSWERS
    # without its own favourite on the list, the model still answers from the list
    favourite = processor.decode(model.generate(**inputs, max_new_tokens=8)[0])
    others = [answer for answer in ANSWERS if answer != favourite]
    forced = model.generate(**inputs, max_new_tokens=8, prefix_allowed_tokens_fn=processor.constrain_to_answers(others))
    assert processor.decode(forced[0]) in others
    # a beam per answer and no length penalty make the search exhaustive: the best answer by its total score
    beams = model.generate(**inputs, max_new_tokens=8, num_beams=len(ANSWERS), length_penalty=0.0,
                           prefix_allowed_tokens_fn=constraint)
    best = ANSWERS[int(_answer_scores(model, processor, inputs, ANSWERS).argmax())]
    assert processor.decode(beams[0]) == best


def test_run_with_an_answer_file_prints_a_listed_answer(ofa_folder, tmp_path, capsys):
    answers = tmp_path / "trainval_ans2label.pkl"
    answers.write_bytes(pickle.dumps({answer: i for i, answer in enumerate(ANSWERS)}, protocol=4))
    code, out, err = _cli(capsys, "run", ofa_folder, "--image", DATA / "images" / "rgb_37x23.png", "--text",
                          QUESTION, "--task", "vqa", "--answers", answers)
    assert code == 0, err
    assert out.strip() in ANSWERS


def test_grounding_boxes_round_trip_through_ofa_bin_tokens(ofa):
    processor, _ = ofa
    num_bins = 16  # the fixture dictionary's <bin_0> .. <bin_15>
    sizes = [(37, 23), (640, 480)]
    boxes = [[3.0, 4.5, 30.0, 20.0], [0.0, 100.0, 639.0, 479.0]]
    texts = processor.boxes_to_bins(boxes, sizes, num_bins)
    assert texts[1] == "<bin_0><bin_3><bin_15><bin_15>"  # round(x / side * (bins - 1))
    ids = [processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.tokenize(t)) for t in texts]
    decoded = processor.post_process_grounding(ids, sizes, num_bins)
    for box, back, (width, height) in zip(boxes, decoded, sizes):
        # a coordinate comes back within half a bin of where it was
        for value, got, side in zip(box, back, (width, height, width, height)):
            assert abs(value - got) <= side / (num_bins - 1) / 2 + 1e-9
    assert processor.post_process_grounding([ids[1][:3]], sizes[1:], num_bins) == [None]


# -- labels --------------------------------------------------------------------------------------------------------

LABELS = ["yes", "no", "two", "red", "cat", "left", "3"]


@pytest.mark.parametrize("kind", ["list", "id2label", "ans2label", "pickle", "lines"])
def test_label_files_in_every_accepted_format_give_the_labels_in_id_order(tmp_path, kind):
    from hfport.labels import read_labels

    path = tmp_path / "labels"
    if kind == "list":
        path.write_text(json.dumps(LABELS))
    elif kind == "id2label":
        path.write_text(json.dumps({str(i): label for i, label in reversed(list(enumerate(LABELS)))}))
    elif kind == "ans2label":
        path.write_text(json.dumps({label: i for i, label in enumerate(LABELS)}))
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({label: i for i, label in enumerate(LABELS)}, protocol=4))
    else:
        path.write_text("\n".join(LABELS) + "\n")
    assert read_labels(path) == LABELS


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/hfport-label-pickle-ran"),))


def test_a_label_pickle_that_imports_anything_is_refused_without_running_it(tmp_path):
    from hfport.labels import LabelFileError, read_labels

    marker = Path("/tmp/hfport-label-pickle-ran")
    marker.unlink(missing_ok=True)
    path = tmp_path / "ans2label.pkl"
    path.write_bytes(pickle.dumps({"yes": 0, "no": _Boom()}, protocol=4))
    with pytest.raises(LabelFileError, match="pathlib.*only dicts/lists"):
        read_labels(path)
    assert not marker.exists()


def _cli(capsys, *args) -> tuple[int, str, str]:
    """`hfport ARGS` in this process (the CLI's own error handling included): exit code, stdout, stderr."""
    from hfport.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_meter_labels_fill_id2label_and_run_prints_answers_not_indices(shared_root, tmp_path, capsys):
    from transformers import AutoConfig

    source = shared_root / "fixtures" / "meter" / "meter-tiny-vqa-lightning"
    labels = tmp_path / "ans2label.json"
    labels.write_text(json.dumps({label: i for i, label in enumerate(LABELS)}))
    out = tmp_path / "vqa"
    code, _, err = _cli(capsys, "convert", source / "checkpoint.ckpt", out, "--text-config",
                        source / "text_config.json", "--tokenizer", DATA / "meter_tokenizers" / "tiny-bert-uncased",
                        "--labels", labels, "--quiet")
    assert code == 0, err
    config = AutoConfig.from_pretrained(str(out), trust_remote_code=True)
    assert config.id2label == dict(enumerate(LABELS)) and config.label2id["cat"] == 4
    code, printed, err = _cli(capsys, "run", out, "--image", DATA / "images" / "rgb_37x23.png", "--text", QUESTION,
                              "--top-k", "3")
    assert code == 0, err
    printed = [line.split(None, 1)[1] for line in printed.strip().splitlines()]
    assert len(printed) == 3 and set(printed) <= set(LABELS)


def test_a_label_count_that_does_not_fit_the_head_is_refused_in_one_line_before_anything_is_written(shared_root,
                                                                                                  tmp_path, capsys):
    source = shared_root / "fixtures" / "meter" / "meter-tiny-vqa-lightning"
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(LABELS[:5]))
    out = tmp_path / "vqa"
    code, _, err = _cli(capsys, "convert", source / "checkpoint.ckpt", out, "--text-config",
                        source / "text_config.json", "--labels", labels, "--quiet")
    assert code != 0 and not out.exists() and not list(tmp_path.glob(".vqa*"))
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "5 labels" in lines[0] and "7 outputs" in lines[0]
