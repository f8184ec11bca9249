"""OpenVINO as a second runtime for the INT8 search: optional (`pip install trainer-ext[openvino]`).

Two candidates join the search beside ONNX Runtime's, built from the exported FP32 ONNX graph:

- `openvino_fp32`: the graph read by OpenVINO and saved as IR; it runs at the CPU's default inference precision
  (FP32 on AVX2 and AVX-512 CPUs, bf16 on AMX ones: recorded per candidate);
- `openvino_int8`: NNCF post-training quantization (`nncf.quantize(..., model_type=nncf.ModelType.TRANSFORMER)`)
  calibrated on training sentences.

Saved models follow optimum-intel's layout (`openvino_model.xml`/`.bin` beside `config.json` and the tokenizer), so
`OVModelForSequenceClassification.from_pretrained(folder)` loads them unchanged. optimum-intel itself is not a
dependency: its 2.x releases require `optimum~=2.3`, which conflicts with optimum-onnx 0.1.0's `optimum~=2.1`, so the
search uses openvino and nncf directly until optimum-onnx moves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

OV_FILE = "openvino_model.xml"
CANDIDATES = ("openvino_fp32", "openvino_int8")


def unavailable_reason() -> str | None:
    """None when openvino and nncf import; else why the OpenVINO candidates are skipped, and how to add them."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as err:
        return f"OpenVINO candidates skipped: {err.name or err} is not installed (pip install 'trainer-ext[openvino]')"
    return None


def version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


class OpenVINOSession:
    """An OpenVINO CPU model with ONNX Runtime's `run(["logits"], feed)` and its input `names`, so
    `benchmark.ClassifierRunner` measures it like an ONNX file.

    `static_shape=(batch, length)` compiles the model reshaped to that fixed shape (OpenVINO's fastest form for a
    fixed-shape deployment); a call with another shape is a clear error naming the shape it accepts.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int, static_shape: tuple[int, int] | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        # NNCF's INT8 models carry FakeQuantize operations (whatever the file is named).
        self.quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        if static_shape is not None:
            model.reshape({port.any_name: list(static_shape) for port in model.inputs})
        self.static_shape = static_shape
        self.compiled = core.compile_model(
            model, "CPU", {"INFERENCE_NUM_THREADS": num_threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        )
        self.request = self.compiled.create_infer_request()
        self.names = [port.any_name for port in self.compiled.inputs]
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "f32", "bf16", "f16"
        self.inference_precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.static_shape is not None:
            shape = next(iter(feed.values())).shape
            if tuple(shape) != tuple(self.static_shape):
                raise ValueError(
                    f"This OpenVINO model was compiled for the static shape {list(self.static_shape)} and was given "
                    f"{list(shape)}; pad to {self.static_shape[1]} tokens with batch {self.static_shape[0]}, or load "
                    "it without the reshape for any shape."
                )
        self.request.infer(feed)
        return [self.request.get_output_tensor(0).data.copy()]


def build_candidates(
    fp32_onnx: Path, cand_dir: Path, calibration_feeds: list[dict[str, np.ndarray]] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """IR files of the OpenVINO candidates in `cand_dir/<name>/`; returns (built, failed), each a trial entry.

    A candidate that cannot be built (an unreadable model, no or too small a calibration set) is a failed trial,
    never an exception: the ONNX Runtime candidates carry on.
    """
    import openvino as ov

    built, failed = [], []
    try:
        model = ov.Core().read_model(str(fp32_onnx))
    except Exception as err:  # OpenVINO raises its own RuntimeError subclasses for unreadable graphs
        return [], [_failed(name, f"OpenVINO cannot read {fp32_onnx.name}: {err}") for name in CANDIDATES]
    fp32 = {"name": "openvino_fp32", "backend": "openvino", "file": f"openvino_fp32/{OV_FILE}", "static": False}
    ov.save_model(model, cand_dir / fp32["file"], compress_to_fp16=False)
    fp32["size_mb"] = _size_mb(cand_dir / fp32["file"])
    built.append(fp32)
    int8 = {"name": "openvino_int8", "backend": "openvino", "file": f"openvino_int8/{OV_FILE}", "static": True}
    if not calibration_feeds:
        failed.append(_failed("openvino_int8", "failed: no calibration set (pass calibration_dataset=)"))
        return built, failed
    if len(calibration_feeds) < 8:
        failed.append(
            _failed("openvino_int8", f"failed: {len(calibration_feeds)} calibration examples; give 8 or more")
        )
        return built, failed
    try:
        import nncf

        quantized = nncf.quantize(
            ov.Core().read_model(str(fp32_onnx)),
            nncf.Dataset(calibration_feeds),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration_feeds),
        )
        ov.save_model(quantized, cand_dir / int8["file"], compress_to_fp16=False)
    except Exception as err:  # nncf wraps failures of its backends in several exception types
        failed.append(_failed("openvino_int8", f"failed: {type(err).__name__}: {err}"))
        return built, failed
    int8["size_mb"] = _size_mb(cand_dir / int8["file"])
    int8["calibration"] = f"nncf, {len(calibration_feeds)} training sentences"
    built.append(int8)
    return built, failed


def save_model_folder(xml: Path, folder: Path, file_name: str = OV_FILE) -> None:
    """Copy an IR (`.xml` and its `.bin`) into `folder` as `file_name` (optimum-intel's default name first)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(xml, folder / file_name)
    shutil.copy2(xml.with_suffix(".bin"), (folder / file_name).with_suffix(".bin"))


def _size_mb(xml: Path) -> float:
    return (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6


def _failed(name: str, status: str) -> dict[str, Any]:
    return {"name": name, "backend": "openvino", "status": status}


__all__ = ["CANDIDATES", "OV_FILE", "OpenVINOSession", "build_candidates", "save_model_folder", "unavailable_reason"]
