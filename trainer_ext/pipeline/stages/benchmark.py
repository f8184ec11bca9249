"""The benchmark stage: every variant (teacher, students, their INT8 and OpenVINO forms, the other selection
candidates) on the test split, latency timed in one interleaved group (`reporting.results.measure`), saved in
`benchmark/variants.json`. It reads every stage before it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trainer_ext.deployment.benchmark import ClassifierRunner
from trainer_ext.deployment.openvino_backend import OV_FILE
from trainer_ext.deployment.quantization import INT8_FILE, ONNX_SUBFOLDER, OPENVINO_SUBFOLDER, REPORT_FILE
from trainer_ext.files import write_json
from trainer_ext.pipeline.runner import PipelineError, Stage
from trainer_ext.pipeline.shared import candidate_dir, selection_record
from trainer_ext.pipeline.stages.teacher import load_teacher
from trainer_ext.reporting.results import INT8_VARIANT, measure

if TYPE_CHECKING:
    from trainer_ext.pipeline.pipeline import Pipeline

Models = dict[str, ClassifierRunner | str]  # a variant's runner, or why it was not measured


def _load(models: Models, name: str, path: Path) -> None:
    """A saved PyTorch classifier as the variant `name`."""
    model = AutoModelForSequenceClassification.from_pretrained(path)
    models[name] = ClassifierRunner(model, AutoTokenizer.from_pretrained(path))


def stage_benchmark(p: Pipeline) -> None:
    """Every variant on the test split, timed in one interleaved group; saved in `benchmark/variants.json`."""
    if not p.is_main:
        return
    models: Models = {"teacher": ClassifierRunner(*load_teacher(p))}
    students = ("student_no_distillation",) + (("student_distilled_original",) if p.args.augment else ())
    for name in (*students, "student_distilled"):
        path = p.out / name
        if not (path / "config.json").exists():
            raise PipelineError(f"{path} is missing; delete its stage marker to retrain it.")
        _load(models, name, path)
    # INT8 variant: (its folder, the PyTorch variant whose tokenizer and parameter count it shares)
    int8_folders = {"teacher_int8": ("teacher_int8", "teacher"), INT8_VARIANT: (p.shipped,) * 2}
    order = ("teacher", "teacher_int8", *students, "student_distilled", INT8_VARIANT)
    if p.selecting:  # every other trained candidate, FP32 and INT8, for the accuracy-latency frontier
        for record in selection_record(p)["candidates"]:
            if record.get("status") != "trained" or record["student"] == p.shape:
                continue
            name, path = f"candidate_{record['student']}", candidate_dir(p, record["student"])
            _load(models, name, path)
            int8_folders[f"{name}_int8"] = (str(path.relative_to(p.out)), name)
            order += (name, f"{name}_int8")
    for name, (folder, base) in int8_folders.items():
        int8, report = p.out / folder / ONNX_SUBFOLDER / INT8_FILE, p.out / folder / REPORT_FILE
        if int8.exists():
            models[name] = ClassifierRunner(int8, models[base].tokenizer, parameters=models[base].parameters)
        else:
            models[name] = (
                json.loads(report.read_text())["chosen"].get("reason")
                if report.exists()
                else "quantization did not run"
            )
    # The search's OpenVINO pick, when OpenVINO was the fastest runtime for some serving shape.
    openvino_xml = p.out / p.shipped / OPENVINO_SUBFOLDER / OV_FILE
    if openvino_xml.exists():
        student = models[p.shipped]
        models["student_openvino"] = ClassifierRunner(openvino_xml, student.tokenizer, parameters=student.parameters)
        order += ("student_openvino",)
    length = p.args.max_length  # the run's one length: the fixed-length shape and the truncation
    variants, latency = measure(
        {name: models[name] for name in order},
        p.data[p.args.test_split],
        runs=p.args.latency_runs,
        sequence_length=length,
        max_length=length,
    )
    variants = {name: asdict(v) for name, v in variants.items()}
    write_json(p.out / "benchmark" / "variants.json", {"variants": variants, "latency": latency})


STAGE = Stage("benchmark", stage_benchmark, lambda p: tuple(p.keys))
