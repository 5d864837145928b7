"""Channel attention, spatial attention and CBAM; the cheap modules against the op-by-op reference."""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from galaxy_models.models.architectures import create_model
from galaxy_models.models.attention import CBAM, ChannelAttention, SpatialAttention, attention_factory
from galaxy_models.models.resnet import ResNet


@pytest.fixture
def features() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 32, 9, 7) * 5


def test_channel_gate_is_per_channel_and_in_unit_interval(features: torch.Tensor) -> None:
    gate = ChannelAttention(32, reduction=4).gate(features)
    assert gate.shape == (2, 32, 1, 1)
    assert ((gate >= 0) & (gate <= 1)).all()


def test_spatial_gate_is_per_position_and_in_unit_interval(features: torch.Tensor) -> None:
    gate = SpatialAttention().eval().gate(features)
    assert gate.shape == (2, 1, 9, 7)
    assert ((gate >= 0) & (gate <= 1)).all()


def test_channel_attention_matches_the_paper_equation(features: torch.Tensor) -> None:
    """w = sigmoid(MLP(avgpool) + MLP(maxpool)) with one shared MLP, then x * w."""
    module = ChannelAttention(32, reduction=4)
    mlp = module.mlp
    avg = features.mean(dim=(2, 3), keepdim=True)
    peak = features.amax(dim=(2, 3), keepdim=True)
    expected = features * torch.sigmoid(mlp(avg) + mlp(peak))
    torch.testing.assert_close(module(features), expected)


def test_spatial_attention_uses_mean_and_max_over_channels(features: torch.Tensor) -> None:
    module = SpatialAttention(norm=False)
    stacked = torch.stack([features.mean(1), features.amax(1)], dim=1)
    expected = features * torch.sigmoid(module.conv(stacked))
    torch.testing.assert_close(module(features), expected)


def test_cbam_is_channel_then_spatial(features: torch.Tensor) -> None:
    module = CBAM(32, reduction=8).eval()
    torch.testing.assert_close(module(features), module.spatial(module.channel(features)))


def test_parameter_counts() -> None:
    # MLP C->C/r->C without biases; 7x7 conv on 2 maps plus BatchNorm's weight and bias.
    assert sum(p.numel() for p in ChannelAttention(256).parameters()) == 2 * 256 * 16
    assert sum(p.numel() for p in SpatialAttention().parameters()) == 2 * 7 * 7 + 2
    assert sum(p.numel() for p in CBAM(256).parameters()) == 2 * 256 * 16 + 100


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="0"):
        ChannelAttention(0)
    with pytest.raises(ValueError, match="kernel_size.*4"):
        SpatialAttention(kernel_size=4)
    with pytest.raises(ValueError, match="unknown attention 'se'"):
        attention_factory("se")
    assert attention_factory(None) is None


# The op-by-op CBAM the library had before it was made cheap: the paper's equations written directly,
# kept in benchmarks/cbam.py (which measures the two against each other). The library's modules must
# compute the same outputs and gradients and load the same state dicts.
def _reference_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cbam_benchmark", Path(__file__).parents[2] / "benchmarks" / "cbam.py"
    )
    if spec is None or spec.loader is None:
        raise ImportError("benchmarks/cbam.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ReferenceCBAM = _reference_module().ReferenceCBAM


def _twins(inplace: bool = False) -> tuple[_ReferenceCBAM, CBAM]:
    """A reference CBAM with trained-looking BatchNorm statistics, and the library's with its weights."""
    torch.manual_seed(1)
    reference = _ReferenceCBAM(32, reduction=4, kernel_size=5)
    trained = {"running_mean": 0.3, "running_var": 2.0, "weight": 1.5}
    norm = reference.spatial.norm
    norm.load_state_dict(norm.state_dict() | {k: torch.full((1,), v) for k, v in trained.items()})
    module = CBAM(32, reduction=4, kernel_size=5, inplace=inplace)
    module.load_state_dict(reference.state_dict(), strict=True)
    return reference, module


def _grads(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().clone().requires_grad_()
    out = module(x)
    out.backward(grad)
    assert x.grad is not None
    return (out, x.grad, *(p.grad for p in module.parameters()))


def _close(actual: torch.Tensor | None, expected: torch.Tensor | None) -> None:
    # the MLP sums in a different order (one matrix product for both descriptors)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_cbam_outputs_and_gradients_equal_the_reference(
    features: torch.Tensor, train: bool, channels_last: bool
) -> None:
    reference, module = _twins()
    reference.train(train)
    module.train(train)
    x = features.contiguous(memory_format=torch.channels_last) if channels_last else features
    grad = torch.randn_like(x)
    for actual, expected in zip(_grads(module, x, grad), _grads(reference, x, grad), strict=True):
        _close(actual, expected)
    for actual, expected in zip(module.buffers(), reference.buffers(), strict=True):  # BatchNorm statistics
        torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_channel_and_spatial_modules_equal_the_reference(features: torch.Tensor, channels_last: bool) -> None:
    reference, module = _twins()
    x = features.contiguous(memory_format=torch.channels_last) if channels_last else features
    grad = torch.randn_like(x)
    for ours, theirs in ((module.channel, reference.channel), (module.spatial, reference.spatial)):
        for actual, expected in zip(_grads(ours, x, grad), _grads(theirs, x, grad), strict=True):
            _close(actual, expected)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_in_place_inference_equals_the_reference_and_spares_hooked_inputs(
    features: torch.Tensor, channels_last: bool
) -> None:
    reference, module = _twins(inplace=True)
    reference.eval()
    module.eval()
    x = features.contiguous(memory_format=torch.channels_last) if channels_last else features
    with torch.inference_mode():
        expected = reference(x)
        _close(module(x.clone()), expected)
        # explain.py recomputes the spatial gate from the module's input in a forward hook
        seen: list[torch.Tensor] = []
        module.spatial.register_forward_hook(lambda m, inputs, output: seen.append(inputs[0].clone()))
        _close(module(x.clone()), expected)
        _close(seen[0], reference.channel(x))


def test_out_of_place_modules_leave_their_input_alone(features: torch.Tensor) -> None:
    _, module = _twins()
    before = features.clone()
    with torch.no_grad():
        module.eval()(features)
    torch.testing.assert_close(features, before)


def test_ties_keep_the_gradient_total(features: torch.Tensor) -> None:
    """Where a maximum ties, the reference splits its gradient and the library gives it to one element:
    the gradient per channel map sums to the same."""
    reference, module = _twins()
    x = features.amax(dim=(2, 3), keepdim=True).expand_as(features).contiguous()  # every position ties
    grad = torch.randn_like(x)
    _, ours, *_ = _grads(module, x, grad)
    _, theirs, *_ = _grads(reference, x, grad)
    _close(ours.sum(dim=(2, 3)), theirs.sum(dim=(2, 3)))


def test_backward_can_run_again_on_a_retained_graph(features: torch.Tensor) -> None:
    _, module = _twins()
    x = features.detach().requires_grad_()
    out = module(x).square().sum()
    (first,) = torch.autograd.grad(out, x, retain_graph=True)
    (second,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(first, second)


def test_frozen_attention_parameters_get_no_gradient(features: torch.Tensor) -> None:
    _, module = _twins()
    module.channel.requires_grad_(False)
    x = features.detach().requires_grad_()
    module(x).sum().backward()
    assert x.grad is not None
    assert module.spatial.conv.weight.grad is not None
    assert all(p.grad is None for p in module.channel.parameters())


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gates_computed_wider_leave_the_activations_dtype(
    features: torch.Tensor, train: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA's bf16 autocast runs some of the gates' small ops in fp32 (``sum`` among them): the gates may
    come out wider than the activations. Simulated here on the CPU with gates made fp32 for bf16 inputs:
    outputs and input gradients stay bf16, and the fused backward (index_put, scatter_add) runs."""
    wide_channel, wide_spatial = ChannelAttention.from_descriptors, SpatialAttention.from_maps
    monkeypatch.setattr(ChannelAttention, "from_descriptors", lambda self, p: wide_channel(self, p).float())
    monkeypatch.setattr(SpatialAttention, "from_maps", lambda self, m: wide_spatial(self, m).float())
    module = CBAM(32, reduction=8).to(torch.bfloat16).train(train)  # out of place: a product would widen
    x = features.to(torch.bfloat16).requires_grad_(train)
    with torch.set_grad_enabled(train):
        out = module(x if train else x.clone())
    assert out.dtype == torch.bfloat16
    if train:
        out.float().square().sum().backward()
        assert x.grad is not None
        assert x.grad.dtype == torch.bfloat16
        assert module.spatial.conv.weight.grad is not None


def _reference_cs_resnet(layers: tuple[int, int, int, int], base_width: int) -> ResNet:
    return ResNet(layers=layers, base_width=base_width, attention=partial(_ReferenceCBAM, reduction=16, kernel_size=7))


def test_cs_resnet50_state_dicts_of_the_reference_load_strictly() -> None:
    with torch.device("meta"):
        reference, model = _reference_cs_resnet((3, 4, 6, 3), 64), create_model("cs_resnet50")
    model.load_state_dict(reference.state_dict(), strict=True, assign=True)
    assert {k: v.shape for k, v in reference.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_a_reference_cs_resnet_round_trips_into_the_library_model() -> None:
    torch.manual_seed(0)
    reference, model = _reference_cs_resnet((1, 1, 1, 1), 16), create_model("cs_resnet_tiny")
    model.load_state_dict(reference.state_dict(), strict=True)
    # 4 images of 48 px (2x2 maps at the last stage): BatchNorm over 2 images of 1x1 maps would amplify
    # rounding a thousandfold
    x, labels = torch.randn(4, 3, 48, 48), torch.tensor([1, 3, 0, 2])
    for net in (reference, model):
        F.cross_entropy(net(x), labels).backward()
    for (name, actual), expected in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert actual.grad is not None, name
        _close(actual.grad, expected.grad)
    reference.eval()
    model.eval()
    with torch.inference_mode():
        _close(model(x), reference(x))
    reference.load_state_dict(model.state_dict(), strict=True)
