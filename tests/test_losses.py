import math

import pytest
import torch
import torch.nn.functional as F

from trainer_ext.training.losses import (
    distillation_loss,
    hidden_state_mse_loss,
    kl_divergence_loss,
    logit_mse_loss,
    mean_pool,
    pooled_mse_loss,
    soft_cross_entropy_loss,
)


def test_identical_logits_give_zero_mse_and_kl():
    logits = torch.randn(5, 3)
    assert logit_mse_loss(logits, logits.clone()).item() == 0.0
    assert kl_divergence_loss(logits, logits.clone(), temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_ce_of_identical_logits_is_the_teacher_entropy_times_t2():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    probs = F.softmax(logits / 2.0, dim=-1)
    entropy = -(probs * probs.log()).sum().item()
    assert soft_cross_entropy_loss(logits, logits, temperature=2.0).item() == pytest.approx(4.0 * entropy, rel=1e-6)


def test_hand_computed_values():
    # MSE averages over classes: ((1-0)^2 + (2-0)^2) / 2.
    assert logit_mse_loss(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(2.5)
    # Teacher probabilities (0.75, 0.25), student (0.5, 0.5): KL = 0.75 ln 1.5 + 0.25 ln 0.5.
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl_divergence_loss(torch.zeros(1, 2), teacher).item() == pytest.approx(expected, rel=1e-6)


def test_kl_matches_torch_batchmean_with_t_squared_scaling():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 4), torch.randn(6, 4)
    for temperature in (1.0, 2.0, 5.0):
        reference = (
            F.kl_div(
                F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1), reduction="batchmean"
            )
            * temperature**2
        )
        got = kl_divergence_loss(student, teacher, temperature=temperature)
        assert got.item() == pytest.approx(reference.item(), rel=1e-5)


def test_soft_ce_and_kl_have_the_same_gradient():
    torch.manual_seed(1)
    teacher = torch.randn(4, 3)
    s1 = torch.randn(4, 3, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    kl_divergence_loss(s1, teacher, temperature=2.0).backward()
    soft_cross_entropy_loss(s2, teacher, temperature=2.0).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["mse", "kl", "ce"])
def test_reductions(loss_type):
    torch.manual_seed(2)
    student, teacher = torch.randn(7, 3), torch.randn(7, 3)
    per_example = distillation_loss(student, teacher, loss_type, temperature=2.0, reduction="none")
    assert per_example.shape == (7,)
    mean = distillation_loss(student, teacher, loss_type, temperature=2.0, reduction="mean")
    total = distillation_loss(student, teacher, loss_type, temperature=2.0, reduction="sum")
    assert mean.item() == pytest.approx(per_example.mean().item(), rel=1e-6)
    assert total.item() == pytest.approx(7 * mean.item(), rel=1e-5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same labels"):
        logit_mse_loss(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="Unknown distillation loss"):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), "l1")
    with pytest.raises(ValueError, match="reduction"):
        logit_mse_loss(torch.zeros(1, 2), torch.zeros(1, 2), reduction="max")


def test_hidden_state_mse_ignores_padding():
    student = torch.zeros(1, 4, 2)
    teacher = torch.zeros(1, 4, 2)
    teacher[0, 3] = 100.0  # a padding position: must not count
    teacher[0, 0] = 1.0
    mask = torch.tensor([[1, 1, 1, 0]])
    # Real tokens: one position with squared error 1 per unit, averaged over 3 tokens.
    assert hidden_state_mse_loss(student, teacher, mask).item() == pytest.approx(1.0 / 3.0)
    assert hidden_state_mse_loss(student, teacher).item() > 1000
    with pytest.raises(ValueError, match="Project"):
        hidden_state_mse_loss(torch.zeros(1, 4, 2), torch.zeros(1, 4, 3))


def test_pooled_loss_ignores_padding_and_has_known_values():
    torch.manual_seed(0)
    sentence = torch.randn(1, 5, 4)  # one sentence's token states
    padded = torch.cat([sentence, 100 * torch.randn(1, 3, 4)], dim=1)  # the same, padded to 8 with garbage states
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    assert torch.allclose(mean_pool(padded, mask), mean_pool(sentence, torch.ones(1, 5)), atol=1e-6)
    assert torch.allclose(mean_pool(padded, mask), sentence.mean(dim=1), atol=1e-6)
    assert torch.allclose(mean_pool(sentence), sentence.mean(dim=1))
    assert mean_pool(padded, mask).shape == (1, 4)

    pooled = mean_pool(padded, mask)
    assert pooled_mse_loss(pooled, mean_pool(sentence)).item() == pytest.approx(0.0, abs=1e-10)
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert pooled_mse_loss(student, teacher, reduction="none").tolist() == [2.0, 5.0]  # (0 + 4) / 2, (9 + 1) / 2
    assert pooled_mse_loss(student, teacher).item() == 3.5
    with pytest.raises(ValueError, match="Project the student's"):
        pooled_mse_loss(torch.zeros(2, 3), torch.zeros(2, 4))
