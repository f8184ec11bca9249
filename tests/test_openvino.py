"""OpenVINO candidates in the INT8 search (the optional extra): built, measured per serving shape, saved, loaded."""

import json

import numpy as np
import pytest
from conftest import make_bert, make_dataset

from trainer_ext.deployment import openvino_backend
from trainer_ext.deployment.benchmark import SERVING_SHAPES, ClassifierRunner
from trainer_ext.deployment.quantization import REPORT_FILE, QuantizationArguments, quantize_model
from trainer_ext.reporting.cards import write_model_card
from trainer_ext.reporting.results import Results

pytest.importorskip("openvino")
pytest.importorskip("nncf")

ARGS = dict(latency_runs=5, max_absolute_drop=1.0, optimization_levels=[0], approach="dynamic")


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tokenizer):
    model = make_bert(tokenizer, hidden_size=64, num_hidden_layers=2, seed=3)
    data = make_dataset(tokenizer, n=64)
    out = tmp_path_factory.mktemp("ov")
    report = quantize_model(model, tokenizer, data, out, QuantizationArguments(**ARGS), calibration_dataset=data)
    return model, data, out, report


def test_openvino_candidates_are_built_timed_in_every_shape_and_reported(searched):
    _, _, out, report = searched
    trials = {t["name"]: t for t in report["trials"]}
    for name in ("openvino_fp32", "openvino_int8"):
        assert trials[name]["backend"] == "openvino" and set(trials[name]["shapes"]) == set(SERVING_SHAPES)
        assert trials[name]["size_mb"] > 0
    assert trials["openvino_int8"]["size_mb"] < trials["openvino_fp32"]["size_mb"]
    assert report["openvino"]["version"] == openvino_backend.version()
    # The saved ONNX INT8 model is always ONNX Runtime's pick, whatever OpenVINO measured.
    assert not report["chosen"]["name"].startswith("openvino")
    assert json.loads((out / REPORT_FILE).read_text())["per_shape"] == report["per_shape"]


def test_openvino_models_give_the_onnx_logits_and_a_shape_pick_is_saved_in_optimum_intels_layout(
    tmp_path, searched, tokenizer, monkeypatch
):
    model, data, _, _ = searched
    # Make OpenVINO the only fast runtime: every ONNX Runtime INT8 candidate fails to build.
    from trainer_ext.deployment import candidates

    def no_ort(self, candidate):
        raise RuntimeError("ONNX Runtime candidate disabled for this test")

    monkeypatch.setattr(candidates.CandidateBuilder, "build", no_ort)
    args = QuantizationArguments(**{**ARGS, "require_speedup": False})
    report = quantize_model(model, tokenizer, data, tmp_path, args, calibration_dataset=data)
    picks = report["per_shape"]
    assert {p["backend"] for p in picks.values()} == {"openvino"}
    assert picks["real_length"]["file"] == "openvino/openvino_model.xml"
    assert picks["fixed_length"]["static_shape"] == [1, 64]
    folder = tmp_path / "openvino"
    assert {"openvino_model.xml", "openvino_model.bin", "config.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    texts = list(data["text"][:16])
    onnx_logits = ClassifierRunner(tmp_path / "onnx" / "model.onnx", tokenizer).logits(texts)
    for pick in picks.values():
        runner = ClassifierRunner(tmp_path / pick["file"], tokenizer)
        assert runner.runtime_version.startswith("openvino ")
        # INT8 is read from the model (FakeQuantize operations), not the file name; FP32 runs at the CPU's default.
        expected = {"OpenVINO INT8"} if pick["name"] == "openvino_int8" else {"OpenVINO F32", "OpenVINO BF16"}
        assert runner.runtime in expected
        logits = runner.logits(texts)
        tolerance = 1e-3 if "int8" not in pick["name"] else 0.5
        np.testing.assert_allclose(logits, onnx_logits, atol=tolerance)
    # The card's usage section names each shape's file and shows how to load the OpenVINO one.
    write_model_card(tmp_path, Results.from_compression_report(report), model_name="ov-test")
    card = (tmp_path / "README.md").read_text()
    assert 'file_name="openvino_model.xml"' in card and "compile_model" in card
    assert "`fixed_length`: `openvino/" in card and "compiled for the static shape [1, 64]" in card


def test_a_static_openvino_model_names_the_shape_it_accepts(searched, tokenizer, tmp_path):
    _, _, out, report = searched
    ov_file = tmp_path / "fp32.xml"
    import openvino as ov

    ov.save_model(ov.Core().read_model(str(out / "onnx" / "model.onnx")), ov_file)
    session = openvino_backend.OpenVINOSession(ov_file, num_threads=1, static_shape=(1, 64))
    feed = {k: v for k, v in tokenizer(["a film"], return_tensors="np").items() if k in session.names}
    with pytest.raises(ValueError, match=r"static shape \[1, 64\].*pad to 64 tokens"):
        session.run(["logits"], feed)


def test_without_openvino_or_calibration_the_search_says_why_and_goes_on(tmp_path, tokenizer, monkeypatch):
    model = make_bert(tokenizer, hidden_size=32, num_hidden_layers=1, seed=4)
    data = make_dataset(tokenizer, n=32)
    report = quantize_model(model, tokenizer, data, tmp_path / "a", QuantizationArguments(**ARGS))
    failed = {t["name"]: t["status"] for t in report["trials"] if t.get("backend") == "openvino"}
    assert "no calibration set" in failed["openvino_int8"]

    small = quantize_model(
        model, tokenizer, data, tmp_path / "b", QuantizationArguments(**ARGS), calibration_dataset=data.select([0, 1])
    )
    assert "2 calibration examples" in {t["name"]: t.get("status") for t in small["trials"]}["openvino_int8"]

    monkeypatch.setattr(openvino_backend, "unavailable_reason", lambda: "OpenVINO candidates skipped: no openvino")
    skipped = quantize_model(model, tokenizer, data, tmp_path / "c", QuantizationArguments(**ARGS))
    assert "OpenVINO candidates skipped: no openvino" in skipped["notes"]
    assert not [t for t in skipped["trials"] if t.get("backend") == "openvino"]
    assert not (tmp_path / "c" / "openvino").exists()
