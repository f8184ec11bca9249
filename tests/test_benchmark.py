import platform
import time

import numpy as np
import pytest
import torch
from conftest import make_bert, make_dataset

from trainer_ext.benchmark import ClassifierRunner, cpu_name, interleaved_latency, measure_variants


def test_interleaved_latency_times_each_runner_in_alternation():
    calls = []

    def sleeper(name, seconds):
        def run():
            calls.append(name)
            time.sleep(seconds)

        return run

    runners = {"slow": sleeper("slow", 0.008), "fast": sleeper("fast", 0.002)}
    result = interleaved_latency(runners, rounds=3, runs_per_round=4, warmup=2, warmup_s=0.0)
    assert result["slow"]["runs"] == result["fast"]["runs"] == 3 * 4
    # sleep() overshoots by a roughly constant amount, so the medians' difference (not their ratio) is the sleeps'.
    assert result["slow"]["median_ms"] - result["fast"]["median_ms"] == pytest.approx(6.0, abs=1.5)
    assert result["fast"]["median_ms"] >= 2.0 and result["slow"]["p90_ms"] >= result["slow"]["median_ms"]
    # Alternation: each round is 2 warm-up + 4 timed calls of one runner, then of the next.
    assert calls == (["slow"] * 6 + ["fast"] * 6) * 3


def test_cpu_name_reads_the_model_name_and_falls_back_to_platform(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7763 64-Core Processor\n"
    )
    assert cpu_name(info) == "AMD EPYC 7763 64-Core Processor"
    fallback = platform.processor() or platform.machine()
    assert cpu_name(tmp_path / "missing") == fallback
    info.write_text("processor\t: 0\nHardware\t: BCM2835\n")  # no model name line (some ARM kernels)
    assert cpu_name(info) == fallback


def test_pytorch_and_onnx_runners_agree_and_measure_variants_accuracy_is_the_argmax(tmp_path, tokenizer):
    from trainer_ext.quantization import export_onnx

    model = make_bert(tokenizer, seed=5)
    model.save_pretrained(tmp_path / "m")
    path = export_onnx(tmp_path / "m", tmp_path / "onnx")
    data = make_dataset(tokenizer, n=40)
    texts, labels = list(data["text"]), np.asarray(list(data["label"]))
    pytorch, onnx = ClassifierRunner(model, tokenizer), ClassifierRunner(path, tokenizer, parameters=123)
    pt_logits = pytorch.logits(texts, batch_size=16, max_length=32)
    assert pt_logits.shape == (40, 2)
    np.testing.assert_allclose(onnx.logits(texts, batch_size=16, max_length=32), pt_logits, atol=1e-4)
    # Inputs the model does not take are dropped, and either tensor type is accepted.
    batch = {**tokenizer(texts[:3], padding=True, return_tensors="np"), "unused": np.zeros((3, 1))}
    np.testing.assert_allclose(pytorch(batch), onnx(batch), atol=1e-4)
    np.testing.assert_allclose(
        pytorch.fixed_length_call(texts[0], 64)(),
        onnx(pytorch.encode(texts[:1], max_length=64, padding="max_length")),
        atol=1e-4,
    )

    # An independent evaluation: the model's own forward, one sentence at a time, unpadded.
    with torch.no_grad():
        predictions = [model(**tokenizer(t, return_tensors="pt")).logits.argmax(-1).item() for t in texts]
    expected = float(np.mean(np.asarray(predictions) == labels))
    assert 0.0 < expected < 1.0  # an untrained model: right on some sentences, wrong on others
    results = measure_variants({"pt": pytorch, "onnx": onnx}, data, runs=5, batch_size=16)
    assert results["pt"]["accuracy"] == pytest.approx(expected) and results["onnx"]["accuracy"] == pytest.approx(
        expected
    )
    assert results["pt"]["runtime"] == "PyTorch FP32" and results["onnx"]["runtime"] == "ONNX Runtime FP32"
    assert results["pt"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert results["onnx"]["parameters"] == 123 and results["onnx"]["size_mb"] == path.stat().st_size / 1e6
    assert results["pt"]["eval_examples"] == 40 and results["pt"]["latency_ms"] > 0
    without_data = measure_variants({"onnx": onnx}, runs=2)["onnx"]
    assert without_data["accuracy"] is None and without_data["eval_examples"] == 0


def test_serving_shapes_feed_real_lengths_fixed_padding_and_one_batch(tokenizer):
    """Each shape times what it names: batch 1 at every sentence's own length, batch 1 padded, one batch of 32."""
    from trainer_ext.benchmark import SERVING_SHAPES, serving_latency

    runner = ClassifierRunner(make_bert(tokenizer, seed=2), tokenizer)
    seen: list[tuple[int, ...]] = []
    forward = runner._forward
    runner._forward = lambda feed: (seen.append(tuple(feed["input_ids"].shape)), forward(feed))[1]
    texts = [" ".join(["good"] * (i % 7 + 1)) + " film" for i in range(40)]
    own = [len(tokenizer(t)["input_ids"]) for t in texts[:32]]
    shapes = serving_latency({"m": runner}, texts, sequence_length=48, runs=10)["m"]
    assert set(shapes) == set(SERVING_SHAPES)
    assert all(m["median_ms"] > 0 for m in shapes.values())
    batch1 = [s[1] for s in seen if s[0] == 1]
    assert set(own) <= set(batch1) and 48 in batch1 and max(own) < 48  # real lengths, and the padded one
    assert (32, max(own)) in seen  # one batch of the first 32 sentences, padded to the longest
    # Per sentence, a batch is cheaper than a padded batch-1 call.
    assert shapes["batch_32"]["median_ms"] < shapes["fixed_length"]["median_ms"]


def test_onnx_sessions_use_the_recorded_settings(tmp_path, tokenizer):
    from trainer_ext.benchmark import onnx_session, onnx_session_settings
    from trainer_ext.quantization import export_onnx

    make_bert(tokenizer, seed=1).save_pretrained(tmp_path / "m")
    session = onnx_session(export_onnx(tmp_path / "m", tmp_path / "onnx"), num_threads=2)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    settings = onnx_session_settings(2)
    assert settings["intra_op_num_threads"] == 2 and settings["intra_op_allow_spinning"] is True
    assert settings["version"] == __import__("onnxruntime").__version__
