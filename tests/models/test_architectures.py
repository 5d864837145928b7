"""Every registered model: shapes, gradients, attention gates, channels_last; paper model sizes."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from galaxy_models.cli import app
from galaxy_models.models.architectures import count_macs, count_parameters, create_model, list_models, model_table
from galaxy_models.models.attention import CBAM, ChannelAttention, SpatialAttention
from galaxy_models.models.resnet import Bottleneck, ResNet

MODELS = list_models()
# The paper models are too slow to push a 224 batch through backward in every test on 2 cores;
# they run the same checks at a smaller input, which exercises every layer just the same.
SIZE = 64


def cbam_parameters(model: torch.nn.Module) -> int:
    return sum(count_parameters(m) for m in model.modules() if isinstance(m, CBAM))


def test_registry_holds_the_paper_models_and_small_variants() -> None:
    assert {"resnet50", "cs_resnet50", "resnet_tiny", "cs_resnet_tiny"} <= set(MODELS)


def test_resnet50_matches_torchvision_parameter_count() -> None:
    ours = count_parameters(create_model("resnet50"))
    assert ours == count_parameters(torchvision.models.resnet50(num_classes=5)) == 23_518_277


def test_cs_resnet50_is_resnet50_plus_cbam() -> None:
    model = create_model("cs_resnet50")
    # 16 bottlenecks; CBAM per block: 2*C*C/16 (shared MLP) + 98 (7x7 conv on 2 maps) + 2 (BN).
    widths = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    expected_cbam = sum(2 * c * (c // 16) + 98 + 2 for c in widths)
    assert cbam_parameters(model) == expected_cbam == 2_516_544
    assert count_parameters(model) == 23_518_277 + expected_cbam == 26_034_821


def test_attention_sits_in_every_bottleneck() -> None:
    blocks = [m for m in create_model("cs_resnet50").modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16
    assert all(isinstance(b.attention, CBAM) for b in blocks)
    plain = [m for m in create_model("resnet50").modules() if isinstance(m, Bottleneck)]
    assert not any(isinstance(m, CBAM) for b in plain for m in b.modules())


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_and_features(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (2, 5)
    assert features.shape == (2, model.num_features)
    torch.testing.assert_close(model.head(features), logits)


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, SIZE, SIZE)), torch.tensor([0, 4]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


@pytest.mark.parametrize("name", MODELS)
def test_attention_weights_in_unit_interval(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    gates: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: gates.append(mod.gate(inp[0])))
        for m in model.modules()
        if isinstance(m, ChannelAttention | SpatialAttention)
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, SIZE, SIZE) * 3)
    for hook in hooks:
        hook.remove()
    if not name.startswith("cs_"):
        assert gates == []
        return
    assert len(gates) == 2 * sum(isinstance(m, Bottleneck) for m in model.modules())
    assert all(((g >= 0) & (g <= 1)).all() for g in gates)


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_gives_the_same_logits(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_is_configurable(name: str) -> None:
    assert create_model(name, num_classes=3).head.out_features == 3


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet51'.*cs_resnet50.*resnet50"):
        create_model("resnet51")


def test_bad_architecture_options_are_named() -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        ResNet(layers=(3, 4))
    with pytest.raises(ValueError, match="num_classes.*0"):
        create_model("resnet_tiny", num_classes=0)


def test_full_size_input_224() -> None:
    model = create_model("cs_resnet50").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 5)


def test_macs_match_the_known_resnet50_figure() -> None:
    table = {row["name"]: row for row in model_table()}
    assert table["resnet50"]["gmacs"] == pytest.approx(4.09, abs=0.02)  # about 4.1 GMAC
    # CBAM adds its 1x1 MLPs and 7x7 convs: well under 1% more MACs.
    assert 0 < table["cs_resnet50"]["gmacs"] - table["resnet50"]["gmacs"] < 0.01 * table["resnet50"]["gmacs"]
    assert count_macs(create_model("resnet_tiny"), 64) < count_macs(create_model("resnet_tiny"), 224)


def test_models_list_cli_json() -> None:
    result = CliRunner().invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(MODELS)
    assert by_name["resnet50"]["params"] == 23_518_277
    assert by_name["cs_resnet50"]["params"] == 26_034_821
    assert all(set(r) == {"name", "params", "gmacs"} for r in rows)


def test_models_list_cli_table() -> None:
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "26,034,821" in result.output
    assert "GMACs" in result.output
