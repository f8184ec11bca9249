"""ONNX export of a saved text classifier through Optimum, and ONNX Runtime graph optimisation of the export."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers.utils import logging

from trainer_ext.deployment.quantization_args import FP32_FILE, QuantizationError

logger = logging.get_logger(__name__)


def export_onnx(model_dir: str | os.PathLike, save_dir: str | os.PathLike) -> Path:
    """Export a saved text-classification model with Optimum; raise a clear error for unsupported architectures."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    try:
        ort_model = ORTModelForSequenceClassification.from_pretrained(model_dir, export=True)
    except (ValueError, KeyError, NotImplementedError) as err:
        config = (
            json.loads((Path(model_dir) / "config.json").read_text())
            if (Path(model_dir) / "config.json").exists()
            else {}
        )
        raise QuantizationError(
            f"Optimum cannot export this model to ONNX (model_type={config.get('model_type')!r}, architectures="
            f"{config.get('architectures')}): {err}. Use an architecture Optimum supports (BERT, RoBERTa, "
            "DistilBERT, ...) or export it yourself and pass the folder."
        ) from err
    ort_model.save_pretrained(save_dir)
    return Path(save_dir) / FP32_FILE


def optimize_graph(export_dir: Path, save_dir: Path, level: int) -> Path | None:
    """The exported graph optimised by ORTOptimizer at `level` (CPU), or None (with a warning) when that fails."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    try:
        optimizer = ORTOptimizer.from_pretrained(export_dir, file_names=[FP32_FILE])
        optimizer.optimize(
            save_dir=save_dir, optimization_config=OptimizationConfig(optimization_level=level, optimize_for_gpu=False)
        )
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as err:
        logger.warning(f"ONNX graph optimisation level {level} failed: {err}")
        return None
    return save_dir / "model_optimized.onnx"
