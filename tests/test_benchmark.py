import os

import pytest
from conftest import make_bert, make_dataset

from trainer_ext.benchmark import fixed_length_inputs, measure_pytorch_latency, profile_onnx, profile_pytorch


def test_pytorch_latency_and_profiles(tmp_path, tokenizer):
    model = make_bert(tokenizer)
    texts = list(make_dataset(tokenizer, n=40)["text"])
    latency = measure_pytorch_latency(model, fixed_length_inputs(tokenizer, texts, 64), runs=5, warmup=1)
    assert latency.sequence_length == 64 and latency.batch_size == 1 and latency.median_ms > 0
    assert latency.p90_ms >= latency.median_ms * 0.5 and latency.runs == 5
    profile = profile_pytorch(model, tokenizer, texts, runs=5, warmup=1, throughput_batch=8)
    for key in ("latency_fixed", "latency_real", "latency_end_to_end"):
        assert profile[key]["median_ms"] > 0
    assert profile["throughput_per_s"] > 0 and profile["size_mb"] > 0 and profile["num_threads"] >= 1


def test_onnx_profile(tmp_path, tokenizer):
    from trainer_ext.quantization import export_onnx

    model = make_bert(tokenizer)
    model.save_pretrained(tmp_path / "m")
    path = export_onnx(tmp_path / "m", tmp_path / "onnx")
    texts = list(make_dataset(tokenizer, n=20)["text"])
    profile = profile_onnx(str(path), tokenizer, texts, runs=5, warmup=1, throughput_batch=8)
    assert profile["latency_fixed"]["median_ms"] > 0
    assert profile["size_mb"] == pytest.approx(path.stat().st_size / 1e6)


def test_cpu_name_is_the_model_name_where_linux_gives_one():
    from trainer_ext.benchmark import cpu_name

    name = cpu_name()
    assert isinstance(name, str) and name
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            models = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        if models:
            assert name == models[0]
