import json
import os

import numpy as np
import pytest
import torch
from conftest import args_for, make_bert, make_dataset
from transformers import PretrainedConfig, PreTrainedModel, pipeline

from trainer_ext.deployment.benchmark import SERVING_SHAPES, ClassifierRunner
from trainer_ext.deployment.quantization import (
    REPORT_FILE,
    SHAPE_PICK_MARGIN,
    QuantizationArguments,
    QuantizationError,
    quantize_model,
)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tokenizer):
    model = make_bert(tokenizer, hidden_size=64, num_hidden_layers=2, seed=3)
    data = make_dataset(tokenizer, n=64)
    out = tmp_path_factory.mktemp("quant")
    report = quantize_model(
        model,
        tokenizer,
        data,
        out,
        QuantizationArguments(latency_runs=5, max_absolute_drop=1.0),
        calibration_dataset=data,
    )
    return model, data, out, report


def test_export_matches_pytorch_and_writes_a_loadable_folder(quantized, tokenizer):
    model, data, out, report = quantized
    assert report["export_max_abs_logit_diff"] < 1e-4
    files = os.listdir(out / "onnx")
    assert {"model.onnx", "config.json", "tokenizer.json"} <= set(files)
    saved = json.loads((out / REPORT_FILE).read_text())
    assert saved["chosen"] == report["chosen"] and len(saved["trials"]) == len(report["trials"])
    assert not [p for p in os.listdir(out) if p.startswith(".onnx-")]  # no leftover work folder
    texts = list(data["text"][:8])
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits.numpy()
    assert np.allclose(ClassifierRunner(out / "onnx" / "model.onnx", tokenizer).logits(texts), expected, atol=1e-4)


def test_every_trial_is_reported_with_measurements(quantized):
    _, _, _, report = quantized
    names = [t["name"] for t in report["trials"]]
    assert "dynamic_per_tensor" in names and "static_minmax_per_tensor" in names
    built = [t for t in report["trials"] if "latency" in t]
    assert built and all(t["size_mb"] > 0 and t["latency"]["median_ms"] > 0 for t in built)
    assert all(t["size_mb"] < report["fp32"]["size_mb"] for t in built if t["name"] != "openvino_fp32")


def test_each_serving_shape_gets_the_fastest_passing_candidate(quantized):
    """Every shape's pick is the fastest candidate that passed and beat FP32 in that shape, else FP32."""
    _, _, _, report = quantized
    assert set(report["per_shape"]) == set(SERVING_SHAPES) == set(report["fp32"]["shapes"])
    built = [t for t in report["trials"] if "shapes" in t]
    assert built and all(set(t["shapes"]) == set(SERVING_SHAPES) for t in built)
    for shape, pick in report["per_shape"].items():
        fp32_ms = report["fp32"]["shapes"][shape]["median_ms"]
        faster_passing = [t for t in built if t.get("passed") and t["shapes"][shape]["median_ms"] < fp32_ms]
        if pick["name"] == "fp32":
            assert not faster_passing
            continue
        trial = next(t for t in built if t["name"] == pick["name"])
        assert trial["passed"] and pick["median_ms"] == trial["shapes"][shape]["median_ms"] < fp32_ms
        fastest = min(t["shapes"][shape]["median_ms"] for t in faster_passing)
        if "fastest_other" in pick:  # the saved model serves this shape: the other one is not clearly faster
            assert pick["name"] == report["chosen"]["name"]
            assert pick["fastest_other"]["median_ms"] == fastest > SHAPE_PICK_MARGIN * pick["median_ms"]
        else:
            assert pick["median_ms"] == fastest
        assert (pick["file"] == "onnx/model_quantized.onnx") == (pick["name"] == report["chosen"]["name"])


def test_int8_model_loads_in_a_pipeline_and_mostly_agrees(tmp_path, tokenizer):
    model = make_bert(tokenizer, hidden_size=64, num_hidden_layers=2, seed=3)
    data = make_dataset(tokenizer, n=64)
    # On a model this tiny INT8 need not be faster than FP32, so the speed gate is off for this check.
    args = QuantizationArguments(approach="dynamic", latency_runs=5, max_absolute_drop=1.0, require_speedup=False)
    report = quantize_model(model, tokenizer, data, tmp_path, args)
    assert "dynamic" in report["chosen"]["name"]
    from optimum.onnxruntime import ORTModelForSequenceClassification

    _assert_ort_config_describes(tmp_path / "onnx", report)
    assert ORTModelForSequenceClassification.from_pretrained(tmp_path / "onnx", file_name="model_quantized.onnx")
    ort = ORTModelForSequenceClassification.from_pretrained(
        tmp_path, subfolder="onnx", file_name="model_quantized.onnx"
    )
    classify = pipeline("text-classification", model=ort, tokenizer=tokenizer)
    texts = list(data["text"][:32])
    int8 = [r["label"] for r in classify(texts)]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        fp32 = [model.config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()]
    assert np.mean([a == b for a, b in zip(int8, fp32)]) >= 0.75


def _assert_ort_config_describes(folder, report):
    """The folder's ort_config.json is Optimum's record of the chosen INT8 candidate, not of another one."""
    from optimum.onnxruntime.configuration import ORTConfig

    chosen = next(t for t in report["trials"] if t["name"] == report["chosen"]["name"])
    assert ORTConfig.from_pretrained(folder).quantization.per_channel == chosen["per_channel"]
    config = json.loads((folder / "ort_config.json").read_text())
    assert config["quantization"]["per_channel"] == chosen["per_channel"]
    assert config["quantization"]["is_static"] == chosen["static"]
    assert config["quantization"]["nodes_to_exclude"] == chosen.get("exclude", [])
    level = chosen.get("graph_level")
    assert (config.get("optimization") or {}).get("optimization_level") == (int(level) if level else None)


def test_fused_graph_candidate_records_an_ort_config(quantized, tmp_path):
    """Candidates built with onnxruntime's quantize_dynamic (no ORTQuantizer) still get Optimum's ort_config.json."""
    from trainer_ext.deployment.candidates import build_optimized_dynamic, ort_config_file

    _, _, out, _ = quantized
    name = "optimized_o1_dynamic_per_channel"
    candidate = {"name": name, "static": False, "per_channel": True, "graph_level": "1", "exclude": []}
    build_optimized_dynamic(candidate, out / "onnx" / "model.onnx", tmp_path, QuantizationArguments())
    (tmp_path / ort_config_file(name)).rename(tmp_path / "ort_config.json")
    _assert_ort_config_describes(tmp_path, {"chosen": {"name": name}, "trials": [candidate]})


def test_nothing_passes_the_criterion_falls_back_to_fp32(tmp_path, tokenizer):
    model = make_bert(tokenizer, hidden_size=64, seed=3)
    data = make_dataset(tokenizer, n=32)
    # A criterion no candidate can meet: accuracy must *rise* by 2 points.
    report = quantize_model(
        model,
        tokenizer,
        data,
        tmp_path,
        QuantizationArguments(approach="dynamic", latency_runs=3, max_absolute_drop=-0.02),
    )
    assert report["chosen"]["name"] == "fp32"
    assert all(t.get("passed") is not True for t in report["trials"])
    assert not (tmp_path / "onnx" / "model_quantized.onnx").exists()
    assert not (tmp_path / "onnx" / "ort_config.json").exists()
    assert (tmp_path / "onnx" / "model.onnx").exists()


def test_constructed_failing_candidate_is_rejected(tmp_path, tokenizer, monkeypatch):
    """The fastest candidate is made to break the criterion; the search must reject it and keep the next one."""
    import trainer_ext.deployment.quantization as q

    model = make_bert(tokenizer, hidden_size=64, seed=3)
    data = make_dataset(tokenizer, n=32)
    real = q.ClassifierRunner.logits
    state = {"broken": None}

    def sabotaged(runner, texts, **kwargs):
        logits = real(runner, texts, **kwargs)
        name = runner.path.name if runner.path else "pytorch"
        if name not in ("model.onnx", "pytorch") and state["broken"] in (None, name):
            state["broken"] = name  # the first INT8 candidate evaluated, i.e. the fastest one
            wrong = 1 - np.asarray(list(data["label"]))  # batches follow the dataset's order
            return np.eye(2, dtype=np.float32)[wrong]  # every prediction wrong: accuracy 0
        return logits

    monkeypatch.setattr(q.ClassifierRunner, "logits", sabotaged)
    args = QuantizationArguments(
        approach="dynamic", latency_runs=3, max_absolute_drop=0.2, require_speedup=False, backends=["onnxruntime"]
    )
    report = quantize_model(model, tokenizer, data, tmp_path, args)
    trials = {t["file"]: t for t in report["trials"]}
    assert trials[state["broken"]]["passed"] is False
    assert report["chosen"]["name"] != "fp32" and report["chosen"]["file"] != state["broken"]
    assert args.within_criterion(0.90, 0.895) and not QuantizationArguments().within_criterion(0.90, 0.88)


def test_bad_input_fails_before_export(tmp_path, tokenizer):
    model = make_bert(tokenizer, seed=3)
    data = make_dataset(tokenizer, n=16)
    with pytest.raises(QuantizationError, match="no \\['label'\\] column"):
        quantize_model(model, tokenizer, data.remove_columns("label"), tmp_path / "a")
    assert not (tmp_path / "a" / "onnx").exists()
    with pytest.raises(ValueError, match="approach"):
        QuantizationArguments(approach="fast")
    with pytest.raises(ValueError, match="Unknown calibration_methods"):
        QuantizationArguments(calibration_methods=["minmax", "kl"])
    # Unknown runtimes and serving shapes fail here, before any export or timing.
    with pytest.raises(ValueError, match=r"Unknown backends \['tensorrt'\]"):
        QuantizationArguments(backends=["onnxruntime", "tensorrt"])
    with pytest.raises(ValueError, match=r"Unknown serving_shapes \['batch_64'\].*real_length"):
        QuantizationArguments(serving_shapes=["batch_64"])
    # The old comma-separated and 'both' string forms get a message naming the new form.
    with pytest.raises(ValueError, match="calibration_methods is now a list"):
        QuantizationArguments(calibration_methods="minmax,entropy")
    with pytest.raises(ValueError, match="optimization_levels is now a list"):
        QuantizationArguments(optimization_levels="0,2")
    with pytest.raises(ValueError, match="per_channel is now true"):
        QuantizationArguments(per_channel="both")


class OddConfig(PretrainedConfig):
    model_type = "trainer_ext_odd"


class OddModel(PreTrainedModel):
    config_class = OddConfig

    def __init__(self, config):
        super().__init__(config)
        self.linear = torch.nn.Linear(4, 2)


def test_unexportable_model_gets_a_clear_error_and_no_partial_folder(tmp_path, tokenizer):
    data = make_dataset(tokenizer, n=16)
    with pytest.raises(QuantizationError, match="cannot export"):
        quantize_model(OddModel(OddConfig()), tokenizer, data, tmp_path)
    assert not (tmp_path / "onnx").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".onnx-")]


def test_callback_quantizes_at_the_end_of_training(tmp_path, tokenizer):
    from trainer_ext import DistillationTrainer
    from trainer_ext.callbacks import QuantizationCallback

    data = make_dataset(tokenizer, n=32)
    with pytest.raises(QuantizationError, match="label"):
        QuantizationCallback(eval_dataset=data.remove_columns("label"))
    callback = QuantizationCallback(
        eval_dataset=data,
        args=QuantizationArguments(approach="dynamic", latency_runs=3, require_speedup=False, max_absolute_drop=1.0),
    )
    trainer = DistillationTrainer(
        model=make_bert(tokenizer, hidden_size=64, seed=3),
        args=args_for(
            tmp_path,
            output_dir=str(tmp_path),
            num_train_epochs=1,
            per_device_train_batch_size=16,
            learning_rate=5e-5,
            logging_steps=500,
            seed=42,
        ),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    assert callback.report is not None and "dynamic" in callback.report["chosen"]["name"]
    assert (tmp_path / "onnx" / "model_quantized.onnx").exists()
    assert json.loads((tmp_path / REPORT_FILE).read_text())["chosen"] == callback.report["chosen"]


def test_quantize_command(tmp_path, tokenizer, capsys):
    from trainer_ext.pipeline.cli import main

    model = make_bert(tokenizer, hidden_size=64, seed=3)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = make_dataset(tokenizer, n=60).select_columns(["text", "label"])
    data.to_pandas().assign(label=lambda df: df["label"].map({0: "neg", 1: "pos"})).to_csv(
        tmp_path / "d.csv", index=False
    )
    code = main(
        [
            "quantize",
            str(tmp_path / "model"),
            "--eval_data",
            str(tmp_path / "d.csv"),
            "--output_dir",
            str(tmp_path / "out"),
            "--approach",
            "dynamic",
            "--latency_runs",
            "3",
            "--optimization_levels",
            "0",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "dynamic_per_tensor" in out and "chosen:" in out and "fastest for real_length" in out
    assert (tmp_path / "out" / "onnx" / "model.onnx").exists()
    assert main(["quantize", str(tmp_path / "model")]) == 2  # no --output_dir: one line, before any work
    assert "trainer-ext quantize: error: --output_dir is missing. Pass --output_dir DIR" in capsys.readouterr().err


def _fail_plain_candidates(monkeypatch, data, on_probe=None) -> None:
    """Every plain INT8 candidate predicts the wrong label; the FP32 model, node probes and retries stay real."""
    import trainer_ext.deployment.quantization as q

    real = q.ClassifierRunner.logits

    def sabotaged(runner, texts, **kwargs):
        logits = real(runner, texts, **kwargs)
        name = runner.path.name if runner.path else "model.onnx"
        if "probe" in name and on_probe is not None:
            on_probe()
        if name == "model.onnx" or "probe" in name or "exclude" in name:
            return logits
        wrong = 1 - np.asarray(list(data["label"]))[: len(logits)]
        return np.eye(2, dtype=np.float32)[wrong]

    monkeypatch.setattr(q.ClassifierRunner, "logits", sabotaged)


def test_sensitive_nodes_are_excluded_when_nothing_passes(tmp_path, tokenizer, monkeypatch):
    """Every plain candidate is made to fail; the retry keeps the most sensitive nodes in FP32 and passes."""

    model = make_bert(tokenizer, hidden_size=64, seed=3)
    data = make_dataset(tokenizer, n=32)
    _fail_plain_candidates(monkeypatch, data)
    args = QuantizationArguments(
        approach="dynamic",
        per_channel=False,
        optimization_levels=[0],
        latency_runs=3,
        max_absolute_drop=0.2,
        require_speedup=False,
        sensitivity_top_k=2,
    )
    report = quantize_model(model, tokenizer, data, tmp_path, args)
    sensitivity = report["sensitivity"]
    assert len(sensitivity["excluded"]) == 2 and len(sensitivity["gain_when_kept_fp32"]) >= 4
    assert report["chosen"]["name"].endswith("_exclude2")
    retry = next(t for t in report["trials"] if t["name"].endswith("_exclude2"))
    assert retry["exclude"] == sensitivity["excluded"] and retry["passed"]
    assert (tmp_path / "onnx" / "model_quantized.onnx").exists()
    _assert_ort_config_describes(tmp_path / "onnx", report)


def test_node_probing_stops_at_the_time_budget(tmp_path, tokenizer, monkeypatch):
    """A 12-layer model has about a hundred quantizable nodes: probing them one by one stops at the search's time
    budget and excludes the most sensitive of the nodes measured by then."""
    import time
    import types

    import trainer_ext.deployment.int8_search as search
    from trainer_ext.deployment.candidates import quantizable_nodes

    model = make_bert(tokenizer, hidden_size=64, seed=3)
    data = make_dataset(tokenizer, n=32)
    late = {"offset": 0.0}
    clock = types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + late["offset"])
    monkeypatch.setattr(search, "time", clock)  # the search's clock only; latency timing keeps the real one
    # The budget runs out while the first node is probed.
    _fail_plain_candidates(monkeypatch, data, on_probe=lambda: late.update(offset=1e9))
    args = QuantizationArguments(
        approach="dynamic",
        per_channel=False,
        optimization_levels=[0],
        latency_runs=3,
        max_absolute_drop=0.2,
        require_speedup=False,
        sensitivity_top_k=2,
    )
    report = quantize_model(model, tokenizer, data, tmp_path, args)
    nodes = len(quantizable_nodes(str(tmp_path / "onnx" / "model.onnx"), ["MatMul", "Gemm", "Attention"]))
    assert nodes > 2 and report["sensitivity_stopped"] == f"time budget: 1 of {nodes} nodes probed"
    assert len(report["sensitivity"]["gain_when_kept_fp32"]) == 1 and len(report["sensitivity"]["excluded"]) == 1


def _macro_f1(logits: np.ndarray, labels: np.ndarray) -> float:
    predictions = logits.argmax(-1)
    scores = []
    for c in np.unique(labels):
        tp = np.sum((predictions == c) & (labels == c))
        precision = tp / max(np.sum(predictions == c), 1)
        recall = tp / max(np.sum(labels == c), 1)
        scores.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores))


def test_compute_metrics_drives_the_search(tmp_path, tokenizer):
    """A Trainer-style compute_metrics replaces accuracy: the report's values are that metric, key chosen by name."""
    model = make_bert(tokenizer, hidden_size=64, seed=3)
    data = make_dataset(tokenizer, n=48)
    calls = []

    def compute_metrics(prediction):
        calls.append(prediction.predictions.shape)
        return {"macro_f1": _macro_f1(prediction.predictions, prediction.label_ids), "constant": 1.0}

    args = QuantizationArguments(
        approach="dynamic", latency_runs=3, metric_key="macro_f1", max_absolute_drop=1.0, require_speedup=False
    )
    report = quantize_model(model, tokenizer, data, tmp_path, args, compute_metrics=compute_metrics)
    assert report["metric"] == "macro_f1" and calls and calls[0] == (48, 2)
    fp32_logits = ClassifierRunner(tmp_path / "onnx" / "model.onnx", tokenizer).logits(
        list(data["text"]), max_length=64
    )
    assert report["fp32"]["metric_value"] == pytest.approx(_macro_f1(fp32_logits, np.asarray(list(data["label"]))))
    assert report["chosen"]["metric_value"] == next(
        t["metric_value"] for t in report["trials"] if t["name"] == report["chosen"]["name"]
    )

    with pytest.raises(QuantizationError, match="set metric_key"):
        quantize_model(
            model,
            tokenizer,
            data,
            tmp_path / "b",
            QuantizationArguments(approach="none", latency_runs=1),
            compute_metrics=compute_metrics,
        )


METRIC_SCRIPT = """
import datasets
import evaluate


class ErrorRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="share of wrong predictions",
            citation="",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"error_rate": sum(p != r for p, r in zip(predictions, references)) / len(references)}
"""


def test_local_evaluate_metric_offline_and_unknown_metric_fails_before_export(tmp_path, tokenizer):
    model = make_bert(tokenizer, hidden_size=64, seed=3)
    data = make_dataset(tokenizer, n=32)
    script = tmp_path / "error_rate.py"
    script.write_text(METRIC_SCRIPT)
    args = QuantizationArguments(approach="none", latency_runs=1, metric=str(script))
    report = quantize_model(model, tokenizer, data, tmp_path / "a", args)
    assert report["metric"] == "error_rate"
    assert report["fp32"]["metric_value"] == pytest.approx(1.0 - report["fp32"]["accuracy"])

    with pytest.raises(QuantizationError, match="local metric script path"):
        quantize_model(model, tokenizer, data, tmp_path / "b", QuantizationArguments(metric="no_such_metric_xyz"))
    assert not (tmp_path / "b" / "onnx").exists()


def test_histogram_calibration_works_and_time_budget_bounds_building(tmp_path, tokenizer):
    model = make_bert(tokenizer, hidden_size=64, seed=3)
    data = make_dataset(tokenizer, n=32)
    args = QuantizationArguments(
        approach="static",
        per_channel=False,
        calibration_samples=16,
        latency_runs=2,
        max_absolute_drop=1.0,
        backends=["onnxruntime"],
    )
    report = quantize_model(model, tokenizer, data, tmp_path / "a", args, calibration_dataset=data)
    # entropy and percentiles used to fail on the attention-mask Add ("Too many bins"); static quantizes MatMuls.
    assert [t["status"] for t in report["trials"] if t["status"].startswith("failed")] == []
    assert {t["calibration"] for t in report["trials"] if "latency" in t} == {"minmax", "entropy", "percentiles"}

    args = QuantizationArguments(approach="dynamic", latency_runs=2, max_absolute_drop=1.0, time_budget_s=0.0)
    report = quantize_model(model, tokenizer, data, tmp_path / "b", args)
    assert report["trials"] and all(t["status"] == "not built (time budget)" for t in report["trials"])
    assert report["chosen"]["name"] == "fp32" and "time budget" in report["chosen"]["reason"]
    assert (tmp_path / "b" / "onnx" / "model.onnx").exists()


def test_a_shape_gets_another_file_only_when_it_is_clearly_faster():
    from pathlib import Path

    from trainer_ext.deployment.int8_search import Int8Search

    def candidate(name, real, batch):
        shapes = {"real_length": {"median_ms": real}, "batch_32": {"median_ms": batch}}
        return {"name": name, "passed": True, "accuracy": 0.8, "shapes": shapes}

    chosen = candidate("a", real=1.00, batch=2.0)
    others = [candidate("b", real=0.95, batch=1.5), candidate("c", real=0.97, batch=3.0)]
    fp32 = {"real_length": {"median_ms": 2.0}, "batch_32": {"median_ms": 3.0}}
    search = Int8Search(Path("unused"), QuantizationArguments(), evaluation=None, calibration=None)
    search.candidates, search.chosen, search.fp32 = [chosen, *others], chosen, {"shapes": fp32, "metric_value": 0.8}
    picks = search.pick_per_shape()
    # 5% faster at real length is within noise: the saved model serves it, the other is recorded.
    assert picks["real_length"]["name"] == "a" and picks["real_length"]["fastest_other"]["name"] == "b"
    # 25% faster in batches: its own file.
    assert picks["batch_32"]["name"] == "b" and "fastest_other" not in picks["batch_32"]


def test_the_report_records_the_cpu_instruction_sets_and_flags_inconsistent_candidates(
    tmp_path, tokenizer, monkeypatch
):
    """Each candidate's figures are checked like the card's variants (a tokenized median below the untokenized one
    beyond noise is flagged, in the report and in the card's trial table), and the CPU is named with its ISA."""
    from trainer_ext import write_model_card
    from trainer_ext.deployment.benchmark import cpu_description, cpu_features
    from trainer_ext.deployment.evaluation import EvalSet
    from trainer_ext.reporting.cards import md

    real_latencies = EvalSet.latencies

    def broken_for_int8(builder, graphs):
        shaped = real_latencies(builder, graphs)
        for name, shapes in shaped.items():
            if not name.startswith("fp32"):  # as if every INT8 candidate's tokenized calls had skipped the model
                shapes["real_length_tokenized"] = {"median_ms": shapes["real_length"]["median_ms"] / 3, "p90_ms": 0.1}
        return shaped

    monkeypatch.setattr(EvalSet, "latencies", broken_for_int8)
    args = QuantizationArguments(
        approach="dynamic", latency_runs=2, require_speedup=False, max_absolute_drop=1.0, backends=["onnxruntime"]
    )
    report = quantize_model(
        make_bert(tokenizer, hidden_size=32, seed=2), tokenizer, make_dataset(tokenizer, n=16), tmp_path, args
    )
    assert report["cpu"] == cpu_description() and report["cpu_features"] == cpu_features()
    assert "warnings" not in report["fp32"]
    timed = [t for t in report["trials"] if "shapes" in t]
    assert timed and all(len(t["warnings"]) == 1 and "real_length_tokenized" in t["warnings"][0] for t in timed)
    chosen = next(t for t in timed if t["name"] == report["chosen"]["name"])
    assert report["chosen"]["warnings"] == chosen["warnings"]

    card = write_model_card(tmp_path, plot=False).text  # from compression_report.json alone
    assert f"threads on {md(cpu_description())}" in card
    trial_rows = [r for r in card.splitlines() if r.startswith(f"| {md(chosen['name'])} |")]
    assert trial_rows and "inconsistent timing: real_length_tokenized" in trial_rows[0]
    note = card[card.index("Inconsistent latency figures") : card.index("## How this model was made")]
    assert "- student INT8: real_length_tokenized" in note
