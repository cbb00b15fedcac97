"""The least-squares refit that follows MLP channel removal, and the selection built on it (compress/passes/refit.py)."""

import pytest
import torch

from compress.passes.refit import greedy_kept_inputs, refit_kept_inputs, relative_output_error


def calibration(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.t() @ x / x.shape[0], x.mean(0)


def test_a_removed_channel_that_is_a_mix_of_kept_ones_is_rebuilt_exactly():
    torch.manual_seed(0)
    kept = torch.randn(4096, 6)
    removed = kept[:, :2] @ torch.tensor([[0.5], [-2.0]])  # channel 6 = 0.5 * x0 - 2 * x1
    x = torch.cat([kept, removed], 1)
    weight = torch.randn(5, 7)
    gram, mean = calibration(x)
    keep = torch.arange(6)
    new, delta = refit_kept_inputs(weight, gram, None, keep, damp=1e-9)
    assert delta is None and new.shape == (5, 6)
    assert torch.allclose(x[:, keep] @ new.t(), x @ weight.t(), atol=1e-3)
    assert relative_output_error(weight, gram, mean, keep, new) < 1e-8
    assert relative_output_error(weight, gram, mean, keep, weight[:, keep]) > 0.01  # plain removal loses it


def test_with_a_bias_the_removed_channels_mean_moves_into_the_bias():
    torch.manual_seed(1)
    kept = torch.randn(4096, 5)
    constant = torch.full((4096, 1), 3.0)  # a channel that is always 3: only a bias can carry it
    x = torch.cat([kept, constant], 1)
    weight = torch.randn(4, 6)
    gram, mean = calibration(x)
    keep = torch.arange(5)
    new, delta = refit_kept_inputs(weight, gram, mean, keep, damp=1e-9)
    assert torch.allclose(delta, 3.0 * weight[:, 5], atol=1e-4)
    assert torch.allclose(new, weight[:, keep], atol=1e-4)  # independent kept channels keep their weights
    assert relative_output_error(weight, gram, mean, keep, new, delta) < 1e-8
    without_bias, _ = refit_kept_inputs(weight, gram, None, keep, damp=1e-9)
    assert relative_output_error(weight, gram, mean, keep, without_bias) > 0.1


@pytest.mark.parametrize("damp", [1e-6, 1e-3, 1e-1])
def test_the_refit_never_does_worse_than_plain_removal_on_its_own_calibration_data(damp):
    torch.manual_seed(2)
    x = torch.nn.functional.gelu(torch.randn(2048, 32) @ torch.randn(32, 48))  # correlated, like MLP activations
    weight = torch.randn(16, 48)
    gram, mean = calibration(x)
    keep = torch.randperm(48)[:36].sort().values
    for with_bias in (False, True):
        new, delta = refit_kept_inputs(weight, gram, mean if with_bias else None, keep, damp=damp)
        refit = relative_output_error(weight, gram, mean, keep, new, delta)
        assert refit < relative_output_error(weight, gram, mean, keep, weight[:, keep])


def test_the_greedy_selection_removes_a_strong_channel_that_the_others_can_rebuild():
    torch.manual_seed(3)
    kept = torch.randn(4096, 5)
    strong_copy = 4 * kept[:, :1]  # the loudest channel, but exactly 4 x channel 0
    weak = 0.3 * torch.randn(4096, 1)  # the quietest, and independent: no other channel can stand in for it
    x = torch.cat([kept, strong_copy, weak], 1)
    weight = torch.randn(8, 7)
    gram, mean = calibration(x)
    keep = greedy_kept_inputs(weight, gram, None, 6, damp=1e-9)
    assert keep.tolist() in ([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 6])  # one of the pair goes, the weak one stays
    new, _ = refit_kept_inputs(weight, gram, None, keep, damp=1e-9)
    assert relative_output_error(weight, gram, mean, keep, new) < 1e-6


def test_the_greedy_selection_is_never_worse_after_the_refit_than_keeping_the_loudest_channels():
    torch.manual_seed(4)
    x = torch.nn.functional.gelu(torch.randn(2048, 24) @ torch.randn(24, 64))
    weight = torch.randn(16, 64)
    gram, mean = calibration(x)
    for with_bias in (False, True):
        m = mean if with_bias else None
        greedy = greedy_kept_inputs(weight, gram, m, 40)
        assert len(greedy) == 40 and torch.equal(greedy, greedy.sort().values)
        loudest = (gram.diagonal().sqrt() * weight.pow(2).sum(0).sqrt()).topk(40).indices.sort().values
        errors = [relative_output_error(weight, gram, mean, k, *refit_kept_inputs(weight, gram, m, k)) for k in (greedy, loudest)]
        assert errors[0] <= errors[1]
