"""Generator and discriminator: shapes, identity start, tile invariance, receptive field, no checkerboard."""
import pytest
import torch
from torch import nn

from cyclegan.models import (
    DiscriminatorConfig,
    GeneratorConfig,
    ReferenceResnetGenerator,
    build_discriminator,
    build_generator,
    discriminator_receptive_field,
    generator_receptive_field,
)
from stem_denoise.common.errors import ConfigError

torch.set_num_threads(1)


def _randomised(cfg: GeneratorConfig, seed: int = 0) -> nn.Module:
    """A generator with every weight non-zero (the head starts at zero for the identity)."""
    torch.manual_seed(seed)
    g = build_generator(cfg)
    nn.init.normal_(g.head.weight, 0.0, 0.05)
    nn.init.normal_(g.head.bias, 0.0, 0.01)
    return g.eval()


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (2, 1, 37, 50), (1, 1, 9, 64), (1, 1, 1, 5)])
def test_generator_any_size_and_identity_at_start(shape):
    g = build_generator(GeneratorConfig(width=8, n_blocks=2, n_down=2)).eval()
    x = torch.rand(shape) * 3 - 1  # normalised units are not clipped to [0, 1]
    with torch.no_grad():
        y = g(x)
    assert y.shape == x.shape
    assert torch.equal(y, x)  # residual output with a zero head: exactly the identity before training


def test_no_per_sample_normalisation_and_no_transposed_conv():
    for cfg in (GeneratorConfig(), GeneratorConfig(width=8, n_blocks=1, n_down=0)):
        kinds = {type(m) for m in build_generator(cfg).modules()}
        bad = {nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.ConvTranspose2d}
        assert not kinds & bad
    kinds = {type(m) for m in build_discriminator(DiscriminatorConfig()).modules()}
    assert not kinds & {nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d}
    # the benchmark's reference network is the classic one, with both
    ref_kinds = {type(m) for m in ReferenceResnetGenerator(width=4, n_blocks=1).modules()}
    assert nn.InstanceNorm2d in ref_kinds and nn.ConvTranspose2d in ref_kinds


def test_crop_of_whole_image_output_equals_output_of_crop():
    """What tiling needs: away from the borders, a tile's output is the whole image's output (no tile statistics)."""
    cfg = GeneratorConfig(width=8, n_blocks=2)
    g = _randomised(cfg)
    rf = generator_receptive_field(cfg)
    margin = 2 * ((rf // 2 + 3) // 2)  # past half the receptive field, and even (tile starts on the stride grid)
    torch.manual_seed(1)
    x = torch.rand(1, 1, 96, 112)
    with torch.no_grad():
        whole = g(x)
        top, left, size = 20, 24, 48  # even offsets: the same stride-2 grid as the whole image
        tile = g(x[..., top - margin: top + size + margin, left - margin: left + size + margin])
    inner = tile[..., margin: margin + size, margin: margin + size]
    assert torch.allclose(inner, whole[..., top: top + size, left: left + size], atol=1e-5)
    assert (whole - x).abs().max() > 1e-3  # the check is not on an identity network
    # and each sample of a batch is processed on its own (no batch statistics)
    with torch.no_grad():
        pair = g(torch.cat([x, torch.rand_like(x)]))
    assert torch.allclose(pair[:1], whole, atol=1e-6)


@pytest.mark.parametrize("cfg", [GeneratorConfig(width=4, n_blocks=2, n_down=1),
                                 GeneratorConfig(width=4, n_blocks=1, n_down=2),
                                 GeneratorConfig(width=4, n_blocks=3, n_down=0)])
def test_receptive_field_matches_impulse_response(cfg):
    g = _randomised(cfg, seed=3)
    n = 161
    x = torch.rand(1, 1, n, n, requires_grad=True)
    g(x)[0, 0, n // 2, n // 2].backward()
    rows = (x.grad[0, 0].abs() > 0).any(1).nonzero()
    extent = int(rows.max() - rows.min() + 1)
    assert extent == generator_receptive_field(cfg)


def test_default_receptive_field_is_a_few_periods():
    rf = generator_receptive_field(GeneratorConfig())
    assert 3 * 12.8 < rf < 6 * 12.8  # uses the local periodicity, does not see a whole 5 x 5-atom patch plus
    assert discriminator_receptive_field(DiscriminatorConfig()) == 34
    assert discriminator_receptive_field(DiscriminatorConfig(n_layers=3)) == 70  # the classic 70 px PatchGAN


def test_no_checkerboard_on_constant_input():
    """Resize + conv upsampling maps a constant image to a constant one away from the borders."""
    g = _randomised(GeneratorConfig(width=8, n_blocks=1, n_down=2), seed=5)
    with torch.no_grad():
        y = g(torch.full((1, 1, 96, 96), 0.4))
    inner = y[0, 0, 32:64, 32:64]
    assert (inner - 0.4).abs().max() > 1e-4  # the network does change the level
    assert inner.std() < 1e-5


def test_discriminator_patch_map():
    d = build_discriminator(DiscriminatorConfig(width=8, n_layers=2))
    out = d(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, 1, 14, 14)
    assert build_discriminator(DiscriminatorConfig(width=8, n_layers=3))(torch.rand(1, 1, 64, 64)).shape[-1] == 6


@pytest.mark.parametrize("bad", [dict(width=0), dict(n_blocks=-1), dict(n_down=5), dict(res_scale=0.0),
                                 dict(upsample="transposed"), dict(padding="circular")])
def test_generator_config_validation(bad):
    with pytest.raises(ConfigError):
        GeneratorConfig(**bad)


def test_discriminator_config_validation():
    with pytest.raises(ConfigError):
        DiscriminatorConfig(n_layers=0)
