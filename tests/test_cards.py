"""Model cards: metadata round trip, hostile strings, unmeasured variants, the callbacks, and a mocked Hub push."""

import base64
import json
import re

import pytest
import requests
import yaml
from conftest import args_for, make_bert, make_dataset
from huggingface_hub import ModelCard

from trainer_ext import (
    DistillationTrainer,
    ModelCardCallback,
    ModelCardError,
    QuantizationArguments,
    QuantizationCallback,
    measure_classifier,
    write_model_card,
)
from trainer_ext.deployment.benchmark import ClassifierRunner
from trainer_ext.reporting.cards import PLOT_FILE, md
from trainer_ext.reporting.results import RESULTS_FILE, Results
from trainer_ext.reporting.sections import NOT_MEASURED


def _results(tokenizer, data, int8: bool = True) -> dict:
    """Results measured on the spot from tiny models (the numbers are real, only the models are small)."""
    teacher = make_bert(tokenizer, hidden_size=64, seed=1)
    student = make_bert(tokenizer, hidden_size=32, seed=2)
    variants = {
        "teacher": measure_classifier(teacher, tokenizer, data, runs=3),
        "student_no_distillation": {},
        "student_distilled": measure_classifier(student, tokenizer, data, runs=3),
    }
    variants["student_int8"] = (
        {**variants["student_distilled"], "accuracy": variants["student_distilled"]["accuracy"] - 0.01}
        if int8
        else {"note": "no INT8 candidate was faster than FP32"}
    )
    return {
        "variants": variants,
        "model_variant": "student_distilled",
        "metric": "accuracy",
        "evaluation": {"dataset_id": "rotten_tomatoes", "split": "test", "examples": len(data)},
        "latency": {"batch_size": 1, "sequence_length": 64, "runs": 3, "threads": 1, "cpu": "test cpu"},
    }


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ")]


def test_eval_results_round_trip_and_unmeasured_variants_are_not_numbers(tmp_path, tokenizer):
    data = make_dataset(tokenizer, n=32)
    results = _results(tokenizer, data, int8=False)
    write_model_card(tmp_path, results, model_name="tiny-student", license="apache-2.0", dataset_name="RT")
    card = ModelCard.load(tmp_path / "README.md")
    got = [(r.metric_type, r.metric_value, r.dataset_type, r.dataset_split) for r in card.data.eval_results]
    # Only this model's measured variants are in the model-index: the FP32 student; INT8 fell back to FP32.
    assert got == [("accuracy", results["variants"]["student_distilled"]["accuracy"], "rotten_tomatoes", "test")]
    assert card.data.pipeline_tag == "text-classification" and card.data.license == "apache-2.0"
    assert "int8" not in card.data.tags and "distillation" in card.data.tags
    rows = {row.split("|")[1].strip(): row for row in _table_rows(card.text)}
    assert NOT_MEASURED in rows["student without distillation"]
    assert rows["student INT8"].count(NOT_MEASURED) >= 3 and "%" not in rows["student INT8"]
    assert f"{100 * results['variants']['teacher']['accuracy']:.2f}%" in rows["teacher"]
    assert "no INT8 candidate was faster than FP32" in card.text
    assert (tmp_path / PLOT_FILE).stat().st_size > 1000 and f"]({PLOT_FILE})" in card.text
    assert 'file_name="model.onnx"' in card.text  # usage points at the file that exists


def test_int8_variant_is_a_second_model_index_result(tmp_path, tokenizer):
    data = make_dataset(tokenizer, n=32)
    results = _results(tokenizer, data)
    write_model_card(tmp_path, results)
    card = ModelCard.load(tmp_path / "README.md")
    expected = [results["variants"][k]["accuracy"] for k in ("student_distilled", "student_int8")]
    assert [r.metric_value for r in card.data.eval_results] == expected
    assert {"onnx", "int8"} <= set(card.data.tags) and 'file_name="model_quantized.onnx"' in card.text


def test_hostile_strings_cannot_break_the_yaml_or_the_page(tmp_path, tokenizer):
    data = make_dataset(tokenizer, n=16)
    hostile = 'evil: "name"\n---\n# Boom | [x](javascript:alert(1)) <script>alert(1)</script> `code`'
    write_model_card(
        tmp_path,
        _results(tokenizer, data),
        model_name=hostile,
        dataset_name=hostile,
        dataset_config="a: b\nc",
        license="other",
        tags=["ok", "with: colon"],
        limitations=["line one\n---\nline two | pipe"],
    )
    text = (tmp_path / "README.md").read_text()
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.model_name == hostile and card.data.eval_results[0].dataset_name == hostile
    assert card.data.eval_results[0].dataset_config == "a: b\nc" and "with: colon" in card.data.tags
    body = card.text
    assert "<script>" not in body and "\n---\n" not in body and "\n# Boom" not in body
    # Every table row still has exactly its columns: no pipe leaked from a user string.
    for row in _table_rows(body):
        assert len(re.findall(r"(?<!\\)\|", row)) in (5, 11)
    assert len(re.findall(r"^---$", text, flags=re.M)) == 2  # only the YAML header's fences


def test_missing_results_and_unwritable_folder_are_clear_errors(tmp_path):
    with pytest.raises(ModelCardError, match="measured"):
        write_model_card(tmp_path)
    with pytest.raises(ModelCardError, match="not a folder"):
        write_model_card(tmp_path / "nope", {"variants": {"student": {"accuracy": 0.5}}})
    with pytest.raises(ModelCardError, match="nothing was measured"):
        write_model_card(tmp_path, {"variants": {}})
    with pytest.raises(TypeError, match="Unknown model card field"):
        ModelCardCallback(licence="mit")
    assert not (tmp_path / "README.md").exists()


class _FakeHub:
    """The Hub's HTTP API as seen by huggingface_hub: repo creation, pre-upload and commit, all recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.committed: dict[str, bytes] = {}
        self.validated: list[dict] = []

    def request(self, session, method, url, *args, **kwargs):
        self.calls.append((method, url))
        response = requests.Response()
        response.status_code = 200
        response.url = url
        response.headers["Content-Type"] = "application/json"
        payload: dict = {}
        if url.endswith("/api/repos/create"):
            payload = {"url": "https://huggingface.co/someone/tiny-student"}
        elif url.endswith("/api/validate-yaml"):
            # The Hub parses the card's YAML header before accepting a commit; so does this fake.
            header = kwargs["json"]["content"].split("---")[1]
            self.validated.append(yaml.safe_load(header))
            payload = {"errors": [], "warnings": []}
        elif "/preupload/" in url:
            files = kwargs["json"]["files"]
            payload = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        elif "/commit/" in url:
            body = kwargs.get("data")
            raw = body if isinstance(body, bytes) else b"".join(body)
            for line in raw.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.committed[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            payload = {"commitUrl": "https://huggingface.co/someone/tiny-student/commit/abc", "commitOid": "a" * 40}
        else:
            response.status_code = 404
            payload = {"error": f"unexpected call {method} {url}"}
        response._content = json.dumps(payload).encode()
        return response


def test_callbacks_write_the_card_and_push_sends_card_weights_and_onnx(tmp_path, tokenizer, monkeypatch):
    hub = _FakeHub()
    monkeypatch.setattr(requests.Session, "request", lambda self, *a, **k: hub.request(self, *a, **k))
    data = make_dataset(tokenizer, n=48)
    teacher = make_bert(tokenizer, hidden_size=64, seed=1)
    quantization = QuantizationCallback(
        eval_dataset=data,
        args=QuantizationArguments(approach="dynamic", latency_runs=3, require_speedup=False, max_absolute_drop=1.0),
    )
    card = ModelCardCallback(
        eval_dataset=data, teacher_model=teacher, latency_runs=5, license="mit", dataset_id="toy", dataset_split="test"
    )
    trainer = DistillationTrainer(
        model=make_bert(tokenizer, hidden_size=32, seed=2),
        teacher_model=teacher,
        args=args_for(
            tmp_path,
            output_dir=str(tmp_path),
            num_train_epochs=1,
            per_device_train_batch_size=16,
            learning_rate=5e-5,
            logging_steps=500,
            seed=42,
            push_to_hub=True,
            hub_model_id="someone/tiny-student",
            hub_token="hf_fake_token_for_tests",
        ),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[quantization, card],
    )
    trainer.train()
    results = json.loads((tmp_path / RESULTS_FILE).read_text())
    measured = [results["variants"][k]["accuracy"] for k in ("student_distilled", "student_int8")]
    loaded = ModelCard.load(tmp_path / "README.md")
    assert [r.metric_value for r in loaded.data.eval_results] == measured
    assert results["variants"]["teacher"]["latency_ms"] > 0 and results["distillation"]["distillation_loss"] == "mse"
    assert results["quantization"]["chosen"]["name"] != "fp32"
    card_text = (tmp_path / "README.md").read_bytes()

    trainer.push_to_hub(commit_message="test push")
    pushed = set(hub.committed)
    assert {"README.md", "model.safetensors", "config.json", "onnx/model.onnx", "onnx/model_quantized.onnx"} <= pushed
    assert {PLOT_FILE, RESULTS_FILE, "compression_report.json", "tokenizer.json"} <= pushed
    assert hub.validated and hub.validated[-1]["model-index"][0]["results"]
    assert hub.committed["README.md"] == card_text  # Trainer.create_model_card did not replace the measured card
    assert not [p for p in pushed if p.startswith("_")]  # the teacher-logit cache stays local


def test_card_command_on_a_quantized_folder(tmp_path, tokenizer, capsys):
    from trainer_ext import quantize_model
    from trainer_ext.pipeline.cli import main

    data = make_dataset(tokenizer, n=32)
    returned = quantize_model(
        make_bert(tokenizer, hidden_size=32, seed=2),
        tokenizer,
        data,
        tmp_path,
        QuantizationArguments(approach="dynamic", latency_runs=3, require_speedup=False, max_absolute_drop=1.0),
    )
    assert main(["card", str(tmp_path), "--license", "apache-2.0", "--tags", "a", "b", "--repo_id", "me/m"]) == 0
    assert "model-index results" in capsys.readouterr().out
    card = ModelCard.load(tmp_path / "README.md")
    report = json.loads((tmp_path / "compression_report.json").read_text())
    assert [r.metric_value for r in card.data.eval_results] == [
        report["fp32"]["accuracy"],
        report["chosen"]["accuracy"],
    ]
    teacher_row = next(r for r in _table_rows(card.text) if r.startswith("| teacher"))
    assert teacher_row.count(NOT_MEASURED) >= 3 and '"me/m"' in card.text and {"a", "b"} <= set(card.data.tags)
    # The search's shapes reach the card of a folder quantized alone: the INT8 row's real-length column.
    int8_row = next(r for r in _table_rows(card.text) if r.startswith("| student INT8"))
    real_ms = report["chosen"]["shapes"]["real_length"]["median_ms"]
    assert int8_row.split("|")[4].strip() == f"{real_ms:.2f}"
    # The report quantize_model returns is accepted as it is, and states the same measurements.
    again = write_model_card(tmp_path / "onnx", report=returned)
    assert [r.metric_value for r in again.data.eval_results] == [r.metric_value for r in card.data.eval_results]


def _inconsistent_results() -> dict:
    """Results as an older run wrote them (no `warnings`, no `cpu_features`), with the figures once published
    silently: the OpenVINO student at 4.70 ms real length (p90 10.1) but 1.61 ms with the tokenizer."""
    shapes = {
        "real_length": {"median_ms": 4.70, "p90_ms": 10.1},
        "real_length_tokenized": {"median_ms": 1.61, "p90_ms": 1.9},
        "fixed_length": {"median_ms": 5.0, "p90_ms": 6.0},
    }
    consistent = {**shapes, "real_length_tokenized": {"median_ms": 4.9, "p90_ms": 10.3}}
    row = {"runtime": "PyTorch FP32", "accuracy": 0.8, "latency_ms": 5.0, "latency_p90_ms": 6.0, "size_mb": 1.0}
    return {
        "variants": {
            "student_distilled": {**row, "shapes": consistent},
            "student_openvino": {**row, "runtime": "OpenVINO INT8", "shapes": shapes},
        },
        "latency": {"sequence_length": 64, "runs": 100, "threads": 2, "cpu": "AMD EPYC 7763 64-Core Processor"},
    }


def test_inconsistent_latency_figures_are_flagged_in_the_results_summary_and_card(tmp_path):
    from trainer_ext.reporting.results import Results, latency_warnings

    values = _inconsistent_results()
    results = Results.from_dict(values)  # an older results.json, without the `warnings` field, still loads
    assert results.variants["student_distilled"].warnings == []
    (flag,) = results.variants["student_openvino"].warnings
    assert "1.61 ms" in flag and "4.70 ms (p90 10.10)" in flag
    # Saved and loaded again, the flag is stated once.
    assert Results.from_dict(results.to_dict()).variants["student_openvino"].warnings == [flag]
    # The run's summary gets one line per flag, naming the variant, from results.json's dicts as they are.
    assert latency_warnings(values["variants"]) == latency_warnings(results.variants) == [f"student_openvino: {flag}"]

    write_model_card(tmp_path, results, plot=False)
    text = (tmp_path / "README.md").read_text()
    table_end = text.index("\n\n", text.index("| variant |"))
    note = text[table_end : text.index("## How this model was made")]
    assert "Inconsistent latency figures" in note
    (line,) = [x for x in note.splitlines() if x.startswith("- ")]
    assert "student, OpenVINO" in line and "1.61 ms" in line and "4.70 ms" in line
    assert "student (distilled)" not in note  # only the flagged variant


def test_the_card_names_the_cpu_instruction_sets(tmp_path, tokenizer):
    from trainer_ext.deployment.benchmark import cpu_description
    from trainer_ext.reporting.results import measure

    variants, latency = measure({"student": ClassifierRunner(make_bert(tokenizer, seed=2), tokenizer)}, runs=2)
    assert latency["cpu"] == cpu_description() and isinstance(latency["cpu_features"], list)
    features = ", ".join(latency["cpu_features"]) or "no AVX2"
    assert latency["cpu"].endswith(f" ({features})")
    write_model_card(tmp_path, Results(variants=variants, model_variant="student", latency=latency), plot=False)
    text = ModelCard.load(tmp_path / "README.md").text
    described = md(latency["cpu"])
    assert f"threads on {described}" in text  # the latency description
    assert f"these figures come from {described} with" in text  # the limitations
    # An older record, the model name alone, says the instruction sets are missing rather than implying none.
    write_model_card(tmp_path, _inconsistent_results(), plot=False)
    assert "AMD EPYC 7763 64-Core Processor (instruction sets not recorded)" in (tmp_path / "README.md").read_text()


def test_the_card_names_each_source_of_the_transfer_set_with_its_count():
    from trainer_ext.reporting.sections import transfer_set_line

    line = transfer_set_line({"sources": {"generated": 500, "unlabeled:imdb_reviews_offline": 19500}, "final": 20000})
    assert line.startswith(
        "Transfer set (500 generated by a causal LM fine-tuned on the training set, 19,500 unlabelled sentences from "
        "imdb_reviews_offline; every sentence labelled by the teacher)"
    )
    assert "in-domain" not in line and "final = 20000" in line.replace("\\", "")
    assert transfer_set_line({"final": 3}).startswith("Transfer set: ")  # results written before sources were counted


# ------------------------------------------------------------------- the card says only what is true of the run
def _forms(**extra) -> dict:
    """A distilled student in three measured forms, OpenVINO the fastest (as in the runs whose summary once gave the
    ONNX Runtime INT8 speed-up beside a faster OpenVINO row), plus `extra` top-level results fields."""
    row = {"accuracy": 0.88, "latency_ms": 4.0, "size_mb": 10.0, "parameters": 1000}
    return {
        "variants": {
            "teacher": {**row, "runtime": "PyTorch FP32", "accuracy": 0.90, "latency_ms": 10.0},
            "student_distilled": {**row, "runtime": "PyTorch FP32"},
            "student_int8": {**row, "runtime": "ONNX Runtime INT8", "accuracy": 0.87, "latency_ms": 2.0},
            "student_openvino": {**row, "runtime": "OpenVINO INT8", "accuracy": 0.86, "latency_ms": 1.25},
        },
        "model_variant": "student_distilled",
        "evaluation": {"dataset_name": "rotten_tomatoes", "split": "test", "examples": 1000},
        "latency": {"sequence_length": 64, "runs": 10, "threads": 2, "cpu": "test cpu", "cpu_features": []},
        "teacher": "a teacher",
        **extra,
    }


def test_the_summary_states_the_fastest_forms_speedup_and_names_it(tmp_path):
    card = write_model_card(tmp_path, _forms(), model_name="m", plot=False)
    summary = card.text.split("\n\n")[1]
    assert summary.startswith("A compact text classifier made with trainer-ext (knowledge distillation and INT8")
    assert "Its fastest form (OpenVINO INT8) runs 8.0x faster than its teacher at batch 1, length 64" in summary
    assert "at -4.00 accuracy points" in summary  # the OpenVINO form's accuracy, not the ONNX Runtime one's
    openvino_row = next(r for r in _table_rows(card.text) if r.startswith("| student, OpenVINO"))
    assert "| 8.00x |" in openvino_row  # the row beside it states the same speed-up
    # Without the OpenVINO form, the INT8 ONNX model is the fastest.
    values = _forms()
    del values["variants"]["student_openvino"]
    summary = write_model_card(tmp_path, values, model_name="m", plot=False).text.split("\n\n")[1]
    assert "Its fastest form (ONNX Runtime INT8) runs 5.0x faster" in summary


def test_the_transfer_set_is_named_by_its_sources_never_called_in_domain(tmp_path):
    sources = {"unlabeled:imdb_reviews_offline": 19500, "generated": 500}
    values = _forms(augmentation={"sources": sources, "final": 20000})
    values["evaluation"]["dataset_name"] = "amazon_polarity"  # product reviews; the unlabelled text is IMDB's
    text = write_model_card(tmp_path, values, model_name="m", plot=False).text
    assert "in-domain" not in text and "in domain" not in text
    (line,) = [x for x in text.splitlines() if x.startswith("- Transfer set")]
    assert "19,500 unlabelled sentences from imdb_reviews_offline" in line
    assert "500 generated by a causal LM fine-tuned on the training set" in line


def test_the_card_is_named_after_the_model_not_the_output_folder(tmp_path):
    from trainer_ext.reporting.cards import default_model_name

    recipe = {"values": {"run": {"student": "minilm", "output_dir": "out"}}}
    assert default_model_name(Results.from_dict(_forms(recipe=recipe))) == "minilm-distilled-rotten_tomatoes"
    # The selection's pick over the recipe's list; the guard's undistilled student is not called distilled.
    selected = _forms(
        recipe={"values": {"run": {"student": ["bert-tiny", "bert-mini"]}}}, selection={"shipped": "bert-mini"}
    )
    selected["model_variant"] = "student_no_distillation"
    selected["variants"]["student_no_distillation"] = selected["variants"].pop("student_distilled")
    assert default_model_name(Results.from_dict(selected)) == "bert-mini-rotten_tomatoes"
    # A Hub id or a local file gives its last part, the config follows the data set; no student shape recorded.
    hub = _forms(evaluation={"dataset_id": "stanfordnlp/imdb", "dataset_config": "plain_text"})
    assert default_model_name(Results.from_dict(hub)) == "student-distilled-imdb-plain_text"
    local = _forms(evaluation={"dataset_name": "/data/my reviews.csv"}, recipe=recipe)
    assert default_model_name(Results.from_dict(local)) == "minilm-distilled-my-reviews"
    # write_model_card names the card so when no name is given, whatever the folder is called.
    folder = tmp_path / "out"
    folder.mkdir()
    card = write_model_card(folder, _forms(recipe=recipe), plot=False)
    assert card.data.model_name == "minilm-distilled-rotten_tomatoes"
    assert "\n# minilm-distilled-rotten_tomatoes\n" in card.text  # the title


def test_plot_labels_of_points_close_together_do_not_overlap():
    from matplotlib.text import Text

    from trainer_ext.reporting.plot import accuracy_latency_figure

    values = _forms()
    # The INT8 and OpenVINO points almost on top of each other, as in the runs whose labels printed over each other.
    values["variants"]["student_openvino"].update(latency_ms=2.02, accuracy=0.8702)
    fig = accuracy_latency_figure(Results.from_dict(values))
    try:
        renderer = fig.canvas.get_renderer()
        texts = fig.axes[0].texts
        assert sorted(t.get_text() for t in texts) == sorted(
            ["teacher", "student (distilled)", "student INT8", "student, OpenVINO (the search's pick)"]
        )
        fig.canvas.draw()
        boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text, not the line tying it to its point
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), (a, b)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_tags_follow_the_folder_and_what_the_run_did(tmp_path):
    # The search kept the FP32 ONNX model (no INT8 candidate passed): the folder still has onnx/model.onnx.
    kept_fp32 = tmp_path / "kept_fp32"
    (kept_fp32 / "onnx").mkdir(parents=True)
    (kept_fp32 / "onnx" / "model.onnx").write_bytes(b"onnx")
    values = _forms()
    values["variants"]["student_int8"] = {"note": "no INT8 candidate was within the criterion"}
    tags = write_model_card(kept_fp32, values, model_name="m", plot=False).data.tags
    assert "onnx" in tags and "distillation" in tags and not {"int8", "quantized"} & set(tags)
    # A folder that was only quantized: nothing was distilled, and the card says nothing of distillation.
    quantized = tmp_path / "quantized"
    quantized.mkdir()
    student = _forms()["variants"]["student_int8"]
    only_quantized = {
        "variants": {"student": {**student, "runtime": "ONNX Runtime FP32"}, "teacher": {}, "student_int8": student},
        "model_variant": "student",
    }
    card = write_model_card(quantized, only_quantized, model_name="m", plot=False)
    assert "distillation" not in card.data.tags and {"onnx", "int8", "quantized"} <= set(card.data.tags)
    assert "distill" not in card.text.split("## How to use")[0].lower()
    assert "A text classifier made with trainer-ext (INT8 quantization)." in card.text


def test_plain_text_is_escaped_only_where_markdown_would_misread_it(tmp_path):
    # Plain text reads as it renders: parentheses, and underscores inside a word, stay as they are.
    assert md("distillation_loss (offline split of the packaged corpus) 1_000 C# x+y !") == (
        "distillation_loss (offline split of the packaged corpus) 1_000 C# x+y !"
    )
    # Markup is still escaped where it would act: emphasis, code, links, HTML, pipes, block markers at the start.
    assert (
        md("_x_ *y* `z` [a](b) <i> | ~~s~~ \\") == "\\_x\\_ \\*y\\* \\`z\\` \\[a\\](b) \\<i\\> \\| \\~\\~s\\~\\~ \\\\"
    )
    assert [md(x) for x in ("# h", "- a", "+ a", "1. a", "2) a", "> q", "===", "title #")] == [
        "\\# h",
        "\\- a",
        "\\+ a",
        "1\\. a",
        "2\\) a",
        "\\> q",
        "\\===",
        "title \\#",
    ]
    values = _forms(distillation={"distillation_loss": "kl", "temperature": 2.0})
    text = write_model_card(tmp_path, values, model_name="m", plot=False).text
    assert "Training: distillation_loss = kl, temperature = 2." in text
    # Rendered, every escaped value shows exactly its text, wherever the card puts it.
    markdown_it = pytest.importorskip("markdown_it")
    render = markdown_it.MarkdownIt("commonmark").enable("table").enable("strikethrough").render
    from markdown_it.common.utils import escapeHtml

    strings = ["distillation_loss", "(offline)", "_x_ *y*", "# Boom", "- a", "1. a", "===", "a | b", "<b>x</b>", "t #"]
    contexts = ["- {}\n", "# {}\n", "| a | b |\n|---|---|\n| {} | y |\n", "Text: {}.\n"]
    for value in strings:
        for context in contexts:
            assert render(context.format(md(value))) == render(context.format("QQQ")).replace("QQQ", escapeHtml(value))
