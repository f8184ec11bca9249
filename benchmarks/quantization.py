"""Side-by-side latency of the reference's models and ours, one run, same sentences, batch 1, length 64.

BERT-Base-shaped PyTorch FP32 and ONNX INT8 (random weights: latency does not depend on them), the teacher in
PyTorch FP32, and the distilled student in PyTorch FP32, ONNX FP32 and ONNX INT8 (the accuracy-aware search's choice).

    python benchmarks/quantization.py --teacher outputs/demo/teacher --student outputs/demo/student_distilled
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from trainer_ext.benchmark import (  # noqa: E402
    fixed_length_runner,
    interleaved_latency,
    profile_onnx,
    profile_pytorch,
)
from trainer_ext.data import load_offline_rotten_tomatoes  # noqa: E402
from trainer_ext.quantization import QuantizationArguments, quantize_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="outputs/demo/teacher")
    parser.add_argument("--student", default="outputs/demo/student_distilled")
    parser.add_argument("--output-dir", default="outputs/bench_quantization")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10, help="Interleaved rounds of 20 runs per model.")
    cli = parser.parse_args()
    hf_logging.set_verbosity_error()
    out = Path(cli.output_dir)
    data = load_offline_rotten_tomatoes()
    texts = list(data["test"]["text"])
    tokenizer = AutoTokenizer.from_pretrained(cli.student)
    kwargs = {"runs": cli.runs}
    rows = {}

    # The reference's baseline shape, random weights, the same vocabulary as ours.
    base = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, num_labels=2)).eval()
    rows["BERT-Base-shaped PyTorch FP32"] = profile_pytorch(base, tokenizer, texts, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Random weights make accuracy meaningless, so no accuracy gate; otherwise the same search as the student
        # gets (fused graphs included), so the comparison is with the best INT8 BERT-Base we can make here.
        report = quantize_model(
            tmp,
            tokenizer,
            data["validation"].select(range(64)),
            out / "bert_base",
            QuantizationArguments(approach="dynamic", max_absolute_drop=1.0, latency_runs=20),
        )
    base_int8 = f"BERT-Base-shaped ONNX INT8 ({report['chosen']['name']})"
    rows[base_int8] = profile_onnx(out / "bert_base" / "onnx" / "model_quantized.onnx", tokenizer, texts, **kwargs)
    teacher = AutoModelForSequenceClassification.from_pretrained(cli.teacher)
    rows["teacher PyTorch FP32"] = profile_pytorch(teacher, tokenizer, texts, **kwargs)
    student = AutoModelForSequenceClassification.from_pretrained(cli.student)
    rows["student PyTorch FP32"] = profile_pytorch(student, tokenizer, texts, **kwargs)
    report = quantize_model(
        cli.student,
        tokenizer,
        data["validation"],
        out / "student",
        QuantizationArguments(),
        calibration_dataset=data["train"],
    )
    rows["student ONNX FP32"] = profile_onnx(out / "student" / "onnx" / "model.onnx", tokenizer, texts, **kwargs)
    int8 = out / "student" / "onnx" / "model_quantized.onnx"
    if int8.exists():
        rows[f"student ONNX INT8 ({report['chosen']['name']})"] = profile_onnx(int8, tokenizer, texts, **kwargs)

    # The headline column: all six models at batch 1, length 64, timed in alternation (see interleaved_latency).
    sources = {
        "BERT-Base-shaped PyTorch FP32": base,
        base_int8: out / "bert_base" / "onnx" / "model_quantized.onnx",
        "teacher PyTorch FP32": teacher,
        "student PyTorch FP32": student,
        "student ONNX FP32": out / "student" / "onnx" / "model.onnx",
    }
    if int8.exists():
        sources[f"student ONNX INT8 ({report['chosen']['name']})"] = int8
    runners = {name: fixed_length_runner(src, tokenizer, texts[0]) for name, src in sources.items()}
    interleaved = interleaved_latency(runners, rounds=cli.rounds)
    for name, latency in interleaved.items():
        rows[name]["latency_interleaved"] = latency

    ref = interleaved["BERT-Base-shaped PyTorch FP32"]["median_ms"]
    print(
        f"batch 1, length 64, {rows['student PyTorch FP32']['num_threads']} threads; 'ms (64)' = median of "
        f"{cli.rounds} interleaved rounds x 20 runs, other columns per model ({cli.runs} runs)"
    )
    print(
        f"{'model':<52} {'ms (64)':>8} {'p90':>7} {'ms (real)':>9} {'e2e ms':>7} {'sent/s@32':>9} {'MB':>7} {'vs Base':>8}"
    )
    for name, row in rows.items():
        ms = row["latency_interleaved"]["median_ms"]
        print(
            f"{name:<52} {ms:>8.2f} {row['latency_interleaved']['p90_ms']:>7.2f} "
            f"{row['latency_real']['median_ms']:>9.2f} {row['latency_end_to_end']['median_ms']:>7.2f} "
            f"{row['throughput_per_s']:>9.1f} {row['size_mb']:>7.1f} {ref / ms:>7.1f}x"
        )
    names = list(rows)
    student_int8 = next((n for n in names if n.startswith("student ONNX INT8")), None)
    if student_int8:
        s8 = interleaved[student_int8]["median_ms"]
        print(f"student INT8 vs BERT-Base PyTorch FP32: {ref / s8:.1f}x (target >= 40x; reference 16.47x)")
        b8 = interleaved[base_int8]["median_ms"]
        print(f"student INT8 vs BERT-Base ONNX INT8: {b8 / s8:.1f}x (target >= 15x; reference 8.77x)")
        s32 = interleaved["student ONNX FP32"]["median_ms"]
        print(f"student INT8 vs its own ONNX FP32: {s32 / s8:.2f}x (target >= 1.5x)")
    else:
        print(f"no INT8 student kept: {report['chosen']}")
    fp32 = report["fp32"]
    print(
        f"student accuracy (validation): ONNX FP32 {100 * fp32['accuracy']:.2f}%, chosen "
        f"{report['chosen']['name']} {100 * report['chosen'].get('accuracy', fp32['accuracy']):.2f}%"
    )
    (out / "results.json").write_text(json.dumps({"rows": rows, "student_report": report}, indent=2, default=str))


if __name__ == "__main__":
    main()
