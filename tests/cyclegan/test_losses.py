"""Losses with known answers, the low-pass used by the low-frequency term, and the image pool."""
import numpy as np
import pytest
import torch

from cyclegan.data import toy_lattice
from cyclegan.losses import ImagePool, LowPass, cycle_l1, gaussian_kernel1d, identity_l1, lowfreq_l1, lsgan_loss

torch.set_num_threads(1)


def test_lsgan_known_values():
    ones, zeros = torch.ones(2, 1, 5, 5), torch.zeros(2, 1, 5, 5)
    assert lsgan_loss(ones, True).item() == 0.0
    assert lsgan_loss(ones, False).item() == 1.0
    assert lsgan_loss(zeros, True).item() == 1.0
    assert lsgan_loss(torch.full((1, 1, 3, 3), 0.5), True).item() == pytest.approx(0.25)


def test_l1_losses():
    a = torch.zeros(1, 1, 4, 4)
    b = torch.full((1, 1, 4, 4), 0.3)
    assert cycle_l1(a, b).item() == pytest.approx(0.3)
    assert identity_l1(b, b).item() == 0.0


def test_kernel_is_normalised_gaussian():
    k = gaussian_kernel1d(2.0)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert k.numel() == 2 * 8 + 1  # radius 4 sigma
    x = torch.arange(-8, 9, dtype=torch.float32)
    assert (k * x ** 2).sum().item() == pytest.approx(4.0, rel=0.02)  # variance sigma^2


def test_lowpass_removes_the_lattice_keeps_the_dent_and_constants():
    period = 12.8
    rng = np.random.default_rng(0)
    lattice = toy_lattice((160, 160), period, rng=rng)
    yy, xx = np.mgrid[0:160, 0:160]
    dent = (1 - 0.5 * np.exp(-((yy - 80) ** 2 + (xx - 80) ** 2) / (2 * (2.5 * period) ** 2))).astype(np.float32)
    lp = LowPass(period)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None, None]  # noqa: E731
    flat = lp(t(lattice))[0, 0]
    # a blur over one period leaves the lattice as its mean level: < 0.2 % ripple away from the borders
    inner = flat[60:100, 60:100]
    assert (inner.max() - inner.min()).item() < 0.002 * lattice.mean()
    assert inner.mean().item() == pytest.approx(lattice.mean(), rel=0.02)
    const = lp(torch.full((1, 1, 20, 30), 0.7))
    assert torch.allclose(const, torch.full_like(const, 0.7), atol=1e-6)  # normalised convolution: no border bias
    # the dent survives the blur: low-pass of the dented lattice follows lattice level x thickness
    dented = lp(t(lattice * dent))[0, 0].numpy()
    expected = flat.numpy() * lp(t(dent))[0, 0].numpy()
    assert np.corrcoef(dented.ravel(), expected.ravel())[0, 1] > 0.99
    assert dented[60:100, 60:100].min() < 0.7 * inner.mean().item()  # about half of the dent's depth is kept
    # so the low-frequency loss sees a removed dent, and hardly sees removed noise
    noisy = lattice * dent + 0.3 * rng.standard_normal(lattice.shape).astype(np.float32)
    removed_noise = lowfreq_l1(t(lattice * dent), t(noisy), lp).item()
    removed_dent = lowfreq_l1(t(lattice), t(noisy), lp).item()
    assert removed_dent > 3 * removed_noise


def test_lowpass_any_size_even_smaller_than_kernel():
    lp = LowPass(12.8)
    x = torch.rand(2, 1, 7, 11)
    y = lp(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_image_pool_behaviour_and_state_round_trip():
    pool = ImagePool(size=4, seed=1)
    first = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: the new images come back
    seen_old = seen_new = 0
    stored = set(range(4))
    for i in range(20):
        batch = torch.full((2, 1, 1, 1), 100.0 + i)
        out = pool.query(batch)
        assert out.shape == batch.shape
        for v in out.flatten().tolist():
            if v == 100.0 + i:
                seen_new += 1
            else:
                assert v in stored  # an image that was in the pool
                seen_old += 1
        stored = {float(im.item()) for im in pool.images}
        assert len(pool.images) == 4
    assert seen_old > 5 and seen_new > 5
    # state round trip: the copy answers exactly like the original from here on
    copy = ImagePool(size=1, seed=99)
    copy.load_state_dict(pool.state_dict())
    for _ in range(10):
        b = torch.rand(3, 1, 1, 1)
        assert torch.equal(pool.query(b), copy.query(b))


def test_image_pool_size_zero_passes_through():
    pool = ImagePool(size=0)
    b = torch.rand(3, 1, 4, 4)
    assert torch.equal(pool.query(b), b)
    assert pool.state_dict()["images"].numel() == 0
