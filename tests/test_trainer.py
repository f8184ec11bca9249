import os

import numpy as np
import pytest
import torch
from conftest import args_for, make_bert, make_dataset, make_sentences, train_wordpiece_tokenizer
from datasets import Dataset
from transformers import BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from trainer_ext.training.losses import mean_pool
from trainer_ext.training.trainer import (
    POOLED_PROJECTION_FILE,
    PROJECTION_FILE,
    DistillationError,
    DistillationTrainer,
)


class TeacherCallCounter:
    """Counts the examples a model's forward sees."""

    def __init__(self, model):
        self.examples = 0
        self.calls = 0
        model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.calls += 1
        self.examples += output.logits.shape[0]


@pytest.fixture
def data(tokenizer):
    return make_dataset(tokenizer, n=48)


@pytest.fixture
def teacher(tokenizer):
    model = make_bert(tokenizer, hidden_size=48, num_hidden_layers=3, seed=1)
    with torch.no_grad():  # a confident teacher, so its logits are far from a fresh student's
        model.classifier.weight.mul_(30.0)
    return model


def test_without_teacher_it_is_exactly_trainer(tmp_path, tokenizer, data):
    results = []
    for cls in (Trainer, DistillationTrainer):
        model = make_bert(tokenizer, seed=3)
        args = args_for(tmp_path / cls.__name__, cls=TrainingArguments)
        trainer = cls(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer)
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        results.append((losses, trainer.evaluate()["eval_loss"], model.state_dict()))
    (losses_a, eval_a, state_a), (losses_b, eval_b, state_b) = results
    assert len(losses_a) == 12 and losses_a == losses_b
    assert eval_a == eval_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_distillation_moves_the_student_towards_the_teacher(tmp_path, tokenizer, data, teacher):
    student = make_bert(tokenizer, seed=2)
    trainer = DistillationTrainer(
        model=student,
        args=args_for(tmp_path, num_train_epochs=4),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
    )
    gap_before = _logit_gap(student, teacher, data, tokenizer)
    trainer.train()
    gap_after = _logit_gap(student, teacher, data, tokenizer)
    assert gap_after < 0.5 * gap_before
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert all("distill_loss" in e for e in logged)
    # distillation_weight=1.0: the loss is the distillation term alone.
    assert logged[0]["loss"] == pytest.approx(logged[0]["distill_loss"], rel=1e-3)


def _logit_gap(student, teacher, data, tokenizer) -> float:
    batch = tokenizer(list(data["text"]), padding=True, return_tensors="pt")
    student.eval()
    teacher.eval()
    with torch.no_grad():
        gap = torch.mean((student(**batch).logits - teacher(**batch).logits) ** 2).item()
    student.train()
    return gap


def test_teacher_runs_once_per_example_and_cache_is_reused_on_resume(tmp_path, tokenizer, data, teacher):
    counter = TeacherCallCounter(teacher)
    trainer = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, num_train_epochs=3),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
    )
    trainer.train()
    assert counter.examples == len(data)  # three epochs, one teacher pass
    cache_files = sorted(os.listdir(tmp_path / "out" / "_teacher_logits"))
    assert [f for f in cache_files if f.endswith(".npy")], cache_files
    cached = trainer.train_dataset["teacher_logits"]
    with torch.no_grad():
        teacher.eval()
        direct = teacher(**tokenizer(list(data["text"])[:4], padding=True, return_tensors="pt")).logits
    assert np.allclose(np.asarray(list(cached)[:4]), direct.numpy(), atol=1e-5)

    # A second run in the same output directory (a resume) reuses the stored logits: no teacher forward at all.
    counter.examples = 0
    again = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, num_train_epochs=1),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
    )
    again.train()
    assert counter.examples == 0

    # Changed data gets new logits.
    changed = data.select(range(40))
    DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, num_train_epochs=1),
        train_dataset=changed,
        processing_class=tokenizer,
        teacher_model=teacher,
    ).train()
    assert counter.examples == 40


def test_online_teacher_when_caching_is_off(tmp_path, tokenizer, data, teacher):
    counter = TeacherCallCounter(teacher)
    DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, num_train_epochs=2, cache_teacher_logits=False),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
    ).train()
    assert counter.examples == 2 * len(data)
    assert not (tmp_path / "out" / "_teacher_logits").exists()


def test_logits_column_needs_no_teacher(tmp_path, tokenizer, data, teacher):
    with torch.no_grad():
        teacher.eval()
        logits = teacher(**tokenizer(list(data["text"]), padding=True, return_tensors="pt")).logits.numpy()
    with_logits = data.add_column("teacher_logits", logits.tolist())
    trainer = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path),
        train_dataset=with_logits,
        processing_class=tokenizer,
    )
    assert trainer.distilling
    trainer.train()
    assert "distill_loss" in trainer.state.log_history[0]

    bad = data.add_column("teacher_logits", np.zeros((len(data), 3)).tolist())
    with pytest.raises(DistillationError, match="3 logits per example"):
        DistillationTrainer(model=make_bert(tokenizer), args=args_for(tmp_path), train_dataset=bad)


def test_teacher_with_its_own_tokenizer_reads_raw_text(tmp_path, tokenizer, data):
    teacher_tokenizer = train_wordpiece_tokenizer(make_sentences(300, seed=9)[0], vocab_size=120)
    assert teacher_tokenizer.get_vocab() != tokenizer.get_vocab()
    teacher = make_bert(teacher_tokenizer, hidden_size=48, seed=4)
    args = args_for(tmp_path, num_train_epochs=1)
    with pytest.raises(DistillationError, match="vocabularies differ"):
        DistillationTrainer(model=make_bert(tokenizer), args=args, train_dataset=data, teacher_model=teacher)
    trainer = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
        teacher_tokenizer=teacher_tokenizer,
    )
    assert trainer.teacher_reads_text
    trainer.train()
    with torch.no_grad():
        teacher.eval()
        expected = teacher(**teacher_tokenizer(list(data["text"]), padding=True, return_tensors="pt")).logits.numpy()
    assert np.allclose(np.asarray(list(trainer.train_dataset["teacher_logits"])), expected, atol=1e-5)

    no_text = data.remove_columns("text")
    with pytest.raises(DistillationError, match="raw text column 'text'"):
        DistillationTrainer(
            model=make_bert(tokenizer),
            args=args,
            train_dataset=no_text,
            processing_class=tokenizer,
            teacher_model=teacher,
            teacher_tokenizer=teacher_tokenizer,
        )


def test_teacher_given_as_a_path(tmp_path, tokenizer, data, teacher):
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    trainer = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, num_train_epochs=1),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=str(tmp_path / "teacher"),
    )
    assert not trainer.teacher_reads_text  # same vocabulary: the teacher reads the student's token ids
    trainer.train()


def test_mismatched_labels_are_rejected(tmp_path, tokenizer, data, teacher):
    args = args_for(tmp_path)
    three = make_bert(tokenizer, num_labels=3)
    with pytest.raises(DistillationError, match="predicts 2 labels but the student 3"):
        DistillationTrainer(model=three, args=args, train_dataset=data, teacher_model=teacher)
    swapped = make_bert(tokenizer, id2label={0: "pos", 1: "neg"})
    with pytest.raises(DistillationError, match="label orders differ"):
        DistillationTrainer(model=swapped, args=args, train_dataset=data, teacher_model=teacher)


def test_bad_datasets_are_rejected_before_training(tmp_path, tokenizer, data, teacher):
    args = args_for(tmp_path)
    student = make_bert(tokenizer)
    out_of_range = data.cast_column("label", data.features["label"].__class__(names=["a", "b", "c"]))
    out_of_range = out_of_range.map(lambda e, i: {"label": 2 if i == 0 else e["label"]}, with_indices=True)
    with pytest.raises(DistillationError, match=r"outside \[0, 2\)"):
        DistillationTrainer(model=student, args=args, train_dataset=out_of_range, teacher_model=teacher)
    strings = data.cast_column("label", data.features["text"])
    with pytest.raises(DistillationError, match="class_encode_column"):
        DistillationTrainer(model=student, args=args, train_dataset=strings, teacher_model=teacher)
    with pytest.raises(DistillationError, match="empty"):
        DistillationTrainer(model=student, args=args, train_dataset=data.select([]), teacher_model=teacher)
    with pytest.raises(DistillationError, match="no 'label'/'labels' column"):
        DistillationTrainer(
            model=student,
            args=args_for(tmp_path, distillation_weight=0.5),
            train_dataset=data.remove_columns("label"),
            teacher_model=teacher,
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"distillation_loss": "l1"}, "distillation_loss='l1'"),
        ({"distillation_weight": 1.5}, r"\[0.0, 1.0\]"),
        ({"temperature": 0}, "temperature"),
        ({"hidden_layer_map": "1-2"}, "not JSON"),
        ({"pooled_distillation_weight": -1.0}, "pooled_distillation_weight must be >= 0"),
    ],
)
def test_arguments_validate(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        args_for(tmp_path, **kwargs)


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, tokenizer, data, teacher):
    finals = []
    for batch, accumulation in ((16, 1), (8, 2)):
        student = make_bert(tokenizer, seed=5)
        student.config.hidden_dropout_prob = 0.0
        for module in student.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        DistillationTrainer(
            model=student,
            args=args_for(
                tmp_path / f"b{batch}",
                per_device_train_batch_size=batch,
                gradient_accumulation_steps=accumulation,
                num_train_epochs=1,
                distillation_weight=0.5,
                optim="sgd",
                learning_rate=0.5,
                lr_scheduler_type="constant",
            ),
            train_dataset=data,
            processing_class=tokenizer,
            teacher_model=teacher,
        ).train()
        finals.append(student.classifier.weight.detach().clone())
    moved = (finals[0] - make_bert(tokenizer, seed=5).classifier.weight).abs().max().item()
    assert moved > 1e-2
    # Padding to different batch lengths alone gives ~5e-5 here (plain Trainer too); a mis-scaled term gives >1e-2.
    assert torch.allclose(finals[0], finals[1], atol=2e-4)


class KwargsBert(BertForSequenceClassification):
    """A classifier whose `forward` takes `**kwargs`, as Llama's and ModernBERT's do: Trainer then passes it
    `num_items_in_batch` and no longer divides the loss by the accumulation steps. Its own loss is Llama-style: the
    labelled items' summed cross-entropy over the accumulation window's item count when given one."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        output_hidden_states=None,
        num_items_in_batch=None,
        **kwargs,
    ):
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        loss = None
        if labels is not None:
            reduction = "mean" if num_items_in_batch is None else "sum"
            loss = torch.nn.functional.cross_entropy(outputs.logits, labels, ignore_index=-100, reduction=reduction)
            if num_items_in_batch is not None:
                loss = loss / num_items_in_batch
        return SequenceClassifierOutput(loss=loss, logits=outputs.logits, hidden_states=outputs.hidden_states)


def _fixed_length_data(tokenizer, n: int, labels: str) -> Dataset:
    """`n` rows padded to one length (so batching never changes the padding), with a `teacher_logits` column and
    all, some (-100 = deliberately unlabelled) or no labels."""
    texts, label_ids = make_sentences(n, seed=11)
    columns = dict(tokenizer(texts, padding="max_length", max_length=24, truncation=True))
    if labels == "all":
        columns["label"] = label_ids
    elif labels == "some":
        columns["label"] = [-100 if i % 3 == 0 else y for i, y in enumerate(label_ids)]
    columns["teacher_logits"] = (3.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(7))).tolist()
    return Dataset.from_dict(columns)


def _one_sgd_step(tmp_path, tokenizer, model_cls, dataset, teacher, batch, accumulation, **distillation):
    base = make_bert(tokenizer, seed=5)
    config = base.config
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0  # sdpa reads the rate, not the module
    student = model_cls(config)
    student.load_state_dict(base.state_dict())
    trainer = DistillationTrainer(
        model=student,
        args=args_for(
            tmp_path / f"{model_cls.__name__}-{batch}x{accumulation}",
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,  # clipping would hide a loss scaled by a constant factor
            **distillation,
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
        teacher_model=teacher if distillation.get("hidden_distillation_weight") else None,
    )
    assert trainer.model_accepts_loss_kwargs == (model_cls is KwargsBert)  # Trainer reads `forward`'s signature
    trainer.train()
    assert trainer.state.global_step == 1
    weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
    if trainer.hidden_projection is not None:
        weights["projection"] = trainer.accelerator.unwrap_model(trainer.hidden_projection).weight.detach().clone()
    return weights, base.classifier.weight.detach()


@pytest.mark.parametrize(
    "rows,labels,distillation_weight,hidden_distillation_weight",
    [
        (8, "all", 1.0, 0.0),  # the case: the distillation term alone
        (7, "some", 1.0, 0.0),  # unequal batches (4 + 3) and rows without a label
        (7, "some", 0.5, 0.0),  # the hard-label term is normalised by the window's labelled items
        (8, "all", 0.5, 1.0),  # the hidden-state term too
        (8, "none", 1.0, 1.0),  # no labels: no num_items_in_batch, and Trainer divides by the accumulation steps
    ],
)
def test_gradient_accumulation_follows_trainer_contract_for_a_kwargs_forward(
    tmp_path, tokenizer, teacher, rows, labels, distillation_weight, hidden_distillation_weight
):
    """Accumulating 2 batches of a `**kwargs` student gives the update of one batch of all the rows, and that is the
    update a plain BERT student gets: the loss does not depend on how `forward` is declared."""
    dataset = _fixed_length_data(tokenizer, rows, labels)
    weights = dict(distillation_weight=distillation_weight, hidden_distillation_weight=hidden_distillation_weight)
    reference, initial = _one_sgd_step(
        tmp_path, tokenizer, BertForSequenceClassification, dataset, teacher, rows, 1, **weights
    )
    assert (reference["classifier.weight"] - initial).abs().max() > 5e-3  # a real step, so a scale error shows
    for batch, accumulation in ((rows, 1), (4, 2)):
        result, _ = _one_sgd_step(tmp_path, tokenizer, KwargsBert, dataset, teacher, batch, accumulation, **weights)
        worst = max((result[k] - reference[k]).abs().max().item() for k in reference)
        assert worst < 1e-5, f"batch {batch} x accumulation {accumulation}: weights differ by up to {worst:.3g}"


def test_hidden_distillation_of_a_built_student_follows_its_teacher_layers_and_embedding_map(
    tmp_path, tokenizer, data, teacher
):
    from trainer_ext import build_student

    student = build_student(teacher, num_hidden_layers=2, hidden_size=24, encoder_init="projected")  # layers [0, 2]
    assert student.config.trainer_ext_teacher_layers == [0, 2]
    trainer = DistillationTrainer(
        model=student,
        args=args_for(tmp_path, hidden_distillation_weight=1.0),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
    )
    assert trainer.hidden_layer_map == {0: 0, 1: 1, 2: 3}  # hidden state i + 1 is layer i's output
    # The projection starts at the least-squares map between the embedding tables, so the embedding output (before
    # its LayerNorm) is already reconstructed far better than through a randomly initialised projection.
    student_words = student.get_input_embeddings().weight.detach()
    teacher_words = teacher.get_input_embeddings().weight.detach()
    with torch.no_grad():
        error = (trainer.hidden_projection(student_words) - teacher_words).norm() / teacher_words.norm()
        random_error = (torch.nn.Linear(24, 48)(student_words) - teacher_words).norm() / teacher_words.norm()
    assert error < 0.9 and error < random_error / 1.5, (error, random_error)


def test_hidden_distillation_trains_a_projection_that_is_never_saved(tmp_path, tokenizer, data, teacher):
    student = make_bert(tokenizer, seed=2)  # hidden 32 vs the teacher's 48
    trainer = DistillationTrainer(
        model=student,
        args=args_for(tmp_path, hidden_distillation_weight=1.0, save_strategy="steps", save_steps=6),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
    )
    assert trainer.hidden_layer_map == {1: 2, 2: 3}
    before = trainer.hidden_projection.weight.detach().clone()
    trainer.train()
    assert not torch.equal(before, trainer.hidden_projection.weight)
    assert all("hidden_loss" in e for e in trainer.state.log_history if "loss" in e)
    checkpoint = tmp_path / "out" / "checkpoint-6"
    assert (checkpoint / PROJECTION_FILE).exists()
    trainer.save_model(str(tmp_path / "final"))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert set(saved) == set(student.state_dict())
    assert not any("projection" in k for k in saved)

    # Resuming restores the projection from the checkpoint.
    resumed = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, hidden_distillation_weight=1.0, save_strategy="no"),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
    )
    saved_projection = torch.load(checkpoint / PROJECTION_FILE)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 12
    assert not torch.equal(resumed.hidden_projection.weight.detach(), saved_projection["weight"])


def _pooled_gap(student, projection, teacher, texts, student_tokenizer, teacher_tokenizer) -> float:
    """The pooled term on `texts`: MSE between the projected mean-pooled student and the mean-pooled teacher."""
    student_batch = student_tokenizer(texts, padding=True, return_tensors="pt")
    teacher_batch = teacher_tokenizer(texts, padding=True, return_tensors="pt")
    student.eval()
    with torch.no_grad():
        s = mean_pool(
            student(**student_batch, output_hidden_states=True).hidden_states[-1], student_batch.attention_mask
        )
        t = mean_pool(
            teacher(**teacher_batch, output_hidden_states=True).hidden_states[-1], teacher_batch.attention_mask
        )
        gap = torch.mean((projection(s) - t) ** 2).item()
    student.train()
    return gap


@pytest.mark.parametrize("own_tokenizer", [True, False])
def test_pooled_distillation_across_tokenizers_trains_a_projection_that_is_never_saved(
    tmp_path, tokenizer, data, own_tokenizer
):
    """The MPNet-teacher / MiniLM-student case in small: different widths (48 vs 32), depths and vocabularies."""
    teacher_tokenizer = train_wordpiece_tokenizer(make_sentences(300, seed=9)[0], vocab_size=120)
    if own_tokenizer:
        assert len(teacher_tokenizer) < len(tokenizer)  # the student's ids would overflow the teacher's embeddings
    else:
        teacher_tokenizer = tokenizer
    teacher = make_bert(teacher_tokenizer, hidden_size=48, num_hidden_layers=3, seed=4)
    student = make_bert(tokenizer, seed=2)
    fitted = {}

    class AfterFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                fitted["weight"] = trainer.pooled_projection.weight.detach().clone()
                fitted["projection"] = torch.nn.Linear(32, 48)
                fitted["projection"].load_state_dict(trainer.pooled_projection.state_dict())
                fitted["student"] = make_bert(tokenizer, seed=2)
                fitted["student"].load_state_dict(student.state_dict())

    trainer = DistillationTrainer(
        model=student,
        args=args_for(
            tmp_path, pooled_distillation_weight=1.0, num_train_epochs=4, save_strategy="steps", save_steps=6
        ),
        train_dataset=data,
        eval_dataset=data,  # evaluation batches carry no teacher tokens and still work
        processing_class=tokenizer,
        callbacks=[AfterFirstStep()],
        teacher_model=teacher,
        teacher_tokenizer=teacher_tokenizer,
    )
    assert trainer.teacher_reads_text == own_tokenizer
    assert trainer.hidden_projection is None and trainer.pooled_projection is not None
    texts = list(data["text"])
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 24 and all("pooled_loss" in e and "distill_loss" in e for e in logged)
    assert trainer.evaluate()["eval_loss"] > 0
    # The projection is trained (not only fitted) and the pooled term falls over training.
    assert not torch.equal(fitted["weight"], trainer.pooled_projection.weight)
    before = _pooled_gap(fitted["student"], fitted["projection"], teacher, texts, tokenizer, teacher_tokenizer)
    after = _pooled_gap(student, trainer.pooled_projection, teacher, texts, tokenizer, teacher_tokenizer)
    assert after < 0.8 * before, (before, after)

    checkpoint = tmp_path / "out" / "checkpoint-6"
    assert (checkpoint / POOLED_PROJECTION_FILE).exists() and not (checkpoint / PROJECTION_FILE).exists()
    trainer.save_model(str(tmp_path / "final"))
    from safetensors.torch import load_file

    for folder in (tmp_path / "final", checkpoint):
        saved = load_file(str(folder / "model.safetensors"))
        assert set(saved) == set(student.state_dict())
        assert not any("projection" in k for k in saved)

    # Resuming restores the trained projection instead of fitting a new one.
    resumed = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, pooled_distillation_weight=1.0, max_steps=7),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
        teacher_tokenizer=teacher_tokenizer,
    )
    resumed.projections.fit_pooled = lambda *args: pytest.fail("a resumed run must not refit the projection")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 7


@pytest.mark.parametrize("weight", ["pooled_distillation_weight", "hidden_distillation_weight"])
def test_teacher_state_terms_without_a_teacher_model_are_refused(tmp_path, tokenizer, data, weight):
    cached = data.add_column("teacher_logits", np.zeros((len(data), 2)).tolist())
    with pytest.raises(DistillationError, match=rf"{weight}=1.0 .*pass `teacher_model=`"):
        DistillationTrainer(
            model=make_bert(tokenizer),
            args=args_for(tmp_path, **{weight: 1.0}),
            train_dataset=cached,
            processing_class=tokenizer,
        )


def test_trainer_features_keep_working(tmp_path, tokenizer, data, teacher):
    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    def accuracy(eval_pred):
        return {"accuracy": float((eval_pred.predictions.argmax(-1) == eval_pred.label_ids).mean())}

    trainer = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, eval_strategy="epoch", save_strategy="epoch", distillation_weight=0.5),
        train_dataset=data,
        eval_dataset=data,
        processing_class=tokenizer,
        compute_metrics=accuracy,
        callbacks=[Recorder()],
        teacher_model=teacher,
    )
    trainer.train()
    assert any("eval_accuracy" in logs for logs in seen)
    assert any("distill_loss" in logs and "hard_loss" in logs for logs in seen)
    metrics = trainer.evaluate()
    # Evaluation scores the student alone, as a plain Trainer would: the same accuracy as its own predictions.
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(**tokenizer(list(data["text"]), padding=True, return_tensors="pt")).logits
    assert metrics["eval_accuracy"] == pytest.approx(float((logits.argmax(-1).numpy() == data["label"]).mean()))

    # Resume from the first epoch's checkpoint finishes the run.
    resumed = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, eval_strategy="no", save_strategy="epoch", distillation_weight=0.5),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-6"))
    assert resumed.state.global_step == 12


def test_push_to_hub_uploads_the_student_not_the_cache(tmp_path, tokenizer, data, teacher, monkeypatch):
    import transformers.trainer as trainer_module

    uploads = []

    def fake_upload_folder(**kwargs):
        from huggingface_hub.utils import filter_repo_objects

        folder = kwargs["folder_path"]
        files = [os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs]
        uploads.append(sorted(filter_repo_objects(files, ignore_patterns=kwargs.get("ignore_patterns"))))

        class Info:
            commit_url = "https://huggingface.co/me/student/commit/0"

        return Info()

    class FakeRepo:
        repo_id = "me/student"

    monkeypatch.setattr(trainer_module, "create_repo", lambda *a, **k: FakeRepo())
    monkeypatch.setattr(trainer_module, "upload_folder", fake_upload_folder)
    trainer = DistillationTrainer(
        model=make_bert(tokenizer, seed=2),
        args=args_for(tmp_path, num_train_epochs=1, hub_model_id="me/student", hub_token="x"),
        train_dataset=data,
        processing_class=tokenizer,
        teacher_model=teacher,
    )
    trainer.train()
    trainer.push_to_hub()
    files = uploads[-1]
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(f.startswith("_teacher_logits") for f in files)
