import itertools
import platform
import time

import numpy as np
import pytest
import torch
from conftest import make_bert, make_dataset

from trainer_ext.deployment.benchmark import ClassifierRunner, cpu_name, interleaved_latency, measure_variants


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
    from trainer_ext.deployment.quantization import export_onnx

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
    from trainer_ext.deployment.benchmark import SERVING_SHAPES, serving_latency

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
    from trainer_ext.deployment.benchmark import onnx_session, onnx_session_settings
    from trainer_ext.deployment.quantization import export_onnx

    make_bert(tokenizer, seed=1).save_pretrained(tmp_path / "m")
    session = onnx_session(export_onnx(tmp_path / "m", tmp_path / "onnx"), num_threads=2)
    options = session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    settings = onnx_session_settings(2)
    assert settings["intra_op_num_threads"] == 2 and settings["intra_op_allow_spinning"] is True
    assert settings["version"] == __import__("onnxruntime").__version__


def test_every_call_in_a_timing_group_times_the_same_sentences_in_the_same_order(tokenizer):
    """Variants of different speeds run different numbers of time-based warm-up calls; their timed calls (and the
    real-length and tokenized shapes of one runner) still see the same sentences, in the same order."""
    texts = [" ".join(["film"] * (i + 1)) for i in range(32)]
    sentence = {len(tokenizer(t)["input_ids"]): i for i, t in enumerate(texts)}  # each has its own length
    assert len(sentence) == len(texts)
    calls: list[tuple[str, int]] = []  # (call name, sentence), every call in the order it ran, warm-up included

    def recording(name: str, seconds: float) -> ClassifierRunner:
        runner = ClassifierRunner(make_bert(tokenizer, seed=1), tokenizer)

        def forward(feed):
            calls.append((name, sentence[int(feed["input_ids"].shape[1])]))
            time.sleep(seconds)
            return np.zeros((1, 2), dtype=np.float32)

        runner._forward = forward
        return runner

    group = {}
    for name, seconds in (("slow", 0.004), ("fast", 0.0)):
        for shape in ("real_length", "real_length_tokenized"):
            group[f"{name} {shape}"] = recording(f"{name} {shape}", seconds).shape_call(shape, texts)
    rounds, per_round = 3, 5
    interleaved_latency(group, rounds=rounds, runs_per_round=per_round, warmup=2, warmup_s=0.02)

    bursts = [list(burst) for _, burst in itertools.groupby(calls, key=lambda call: call[0])]
    assert len(bursts) == rounds * len(group)
    warmups = {name: [len(b) - per_round for b in bursts if b[0][0] == name] for name in group}
    assert min(warmups["fast real_length"]) > max(warmups["slow real_length"])  # the warm-ups did differ
    timed = {name: [s for b in bursts if b[0][0] == name for _, s in b[-per_round:]] for name in group}
    assert timed["slow real_length"] == timed["fast real_length"] == list(range(rounds * per_round))
    assert timed == {name: timed["slow real_length"] for name in group}


def test_a_tokenized_figure_faster_than_without_the_tokenizer_is_flagged_beyond_noise():
    from trainer_ext.deployment.benchmark import TOKENIZER_NOISE, inconsistent_shapes

    # The figures once published silently: OpenVINO student, 4.70 ms at real length (p90 10.1), 1.61 ms tokenized.
    seen = {
        "real_length": {"median_ms": 4.70, "p90_ms": 10.1},
        "real_length_tokenized": {"median_ms": 1.61, "p90_ms": 2.0},
        "fixed_length": {"median_ms": 3.0, "p90_ms": 3.5},
    }
    (flag,) = inconsistent_shapes(seen)
    assert "real_length_tokenized 1.61 ms (p90 2.00)" in flag and "real_length 4.70 ms (p90 10.10)" in flag
    # Within the noise allowed (a share of the untokenized median), or slower as it should be: no flag.
    within = 4.70 * (1 - TOKENIZER_NOISE) + 0.01
    assert inconsistent_shapes({**seen, "real_length_tokenized": {"median_ms": within}}) == []
    assert inconsistent_shapes({**seen, "real_length_tokenized": {"median_ms": 5.2}}) == []
    assert inconsistent_shapes({"real_length": {"median_ms": 4.7}}) == [] == inconsistent_shapes({})
    assert len(inconsistent_shapes({**seen, "real_length_tokenized": {"median_ms": 4.4}}, tolerance=0.05)) == 1


def test_measure_variants_records_and_logs_inconsistent_figures(tokenizer, caplog):
    """A runner whose tokenized calls skip the model (a broken measurement) is flagged in its measured figures."""
    from transformers.utils import logging as hf_logging

    broken, honest = (ClassifierRunner(make_bert(tokenizer, seed=s), tokenizer) for s in (1, 2))
    forward = broken._forward
    broken._forward = lambda feed: (time.sleep(0.002), forward(feed))[1]
    broken._encode_and_forward = lambda text, max_length: np.zeros((1, 2), dtype=np.float32)
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING", logger="trainer_ext.deployment.benchmark"):
            measured = measure_variants({"broken": broken, "honest": honest}, runs=5)
    finally:
        hf_logging.disable_propagation()
    assert measured["honest"]["warnings"] == []
    (flag,) = measured["broken"]["warnings"]
    ms = {s: measured["broken"]["shapes"][s]["median_ms"] for s in ("real_length", "real_length_tokenized")}
    assert f"real_length_tokenized {ms['real_length_tokenized']:.2f} ms" in flag
    assert f"real_length {ms['real_length']:.2f} ms" in flag
    assert any("broken" in r.getMessage() and flag in r.getMessage() for r in caplog.records)


AVX2_ONLY = "fpu sse2 avx fma avx2 bmi2"  # AMD EPYC 7763 (Zen 3)
ZEN4 = "fpu sse2 avx2 avx512f avx512dq avx512_bf16 avx512_vnni avx512vl"  # AMD EPYC 9654 (Zen 4)
SAPPHIRE_RAPIDS = "fpu avx2 avx512f avx_vnni avx512_bf16 avx512_vnni amx_bf16 avx512_fp16 amx_tile amx_int8"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (AVX2_ONLY, ["AVX2"]),
        (ZEN4, ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX512-BF16"]),
        (SAPPHIRE_RAPIDS, ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-VNNI", "AVX512-BF16", "AMX-BF16", "AMX-INT8"]),
        ("fpu sse sse2", []),
    ],
)
def test_cpu_features_name_the_instruction_sets_that_decide_speed(tmp_path, flags, expected):
    from trainer_ext.deployment.benchmark import cpu_description, cpu_features
    from trainer_ext.training.precision import bf16_flags_support

    info = tmp_path / "cpuinfo"
    info.write_text(
        f"processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\nflags\t\t: {flags}\n\n"
        f"processor\t: 1\nmodel name\t: AMD EPYC 7763 64-Core Processor\nflags\t\t: {flags}\n"
    )
    assert cpu_features(info) == expected
    assert cpu_description(info) == f"AMD EPYC 7763 64-Core Processor ({', '.join(expected) or 'no AVX2'})"
    # The same machine's bf16 verdict (precision.py) agrees with the instruction sets recorded beside the figures.
    assert bf16_flags_support(flags)[0] == bool({"AVX512-BF16", "AMX-BF16"} & set(expected))


def test_cpu_features_off_x86_linux(tmp_path):
    from trainer_ext.deployment.benchmark import cpu_description, cpu_features

    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm bf16\nCPU implementer\t: 0x41\n")
    assert cpu_features(arm) == ["NEON dot product", "I8MM", "BF16", "SVE"]
    # No cpuinfo (macOS, Windows): unknown, never "none".
    assert cpu_features(tmp_path / "missing") is None
    described = cpu_description(tmp_path / "missing")
    assert described.startswith(platform.processor() or platform.machine())
    assert f"instruction sets unknown; PyTorch uses {torch.backends.cpu.get_cpu_capability()}" in described
