"""The Noise2Void (CAREamics) adapter: planning, training stacks and padding in plain numpy, tested with a fake
backend; the real CAREamics run only where the optional extra is installed."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from stem_denoise.common.errors import ConfigError, InputError
from stem_denoise.evaluation import benchmark as B
from stem_denoise.evaluation import peers as P
from stem_denoise.evaluation.filters import FilterUnavailable


def _row_correlated(shape=(64, 64), rho=0.4, seed=0) -> np.ndarray:
    """White noise through a variance-keeping MA(1) filter along the rows (axis 1): lag-1 row correlation rho."""
    rng = np.random.default_rng(seed)
    c = (1 - np.sqrt(1 - 4 * rho * rho)) / (2 * rho)
    e = rng.normal(size=(shape[0], shape[1] + 1))
    return ((e[:, 1:] + c * e[:, :-1]) / np.sqrt(1 + c * c)).astype(np.float32)


def _lag1(a: np.ndarray, axis: int) -> float:
    a = a - a.mean()
    if axis == 1:
        return float(np.mean(a[:, 1:] * a[:, :-1]) / a.var())
    return float(np.mean(a[1:] * a[:-1]) / a.var())


class FakeBackend:
    """Records what it was given and returns ``scale * image``."""

    def __init__(self, scale=0.5, bad_shape=False):
        self.scale, self.bad_shape, self.calls = scale, bad_shape, []

    def fit_predict(self, stack, image, plan, workdir):
        self.calls.append({"stack": stack.copy(), "image": image.copy(), "plan": plan, "workdir": workdir})
        assert workdir.is_dir()
        return image[:-1] if self.bad_shape else self.scale * image


def test_dihedral_gives_the_eight_distinct_transforms():
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    outs = [P.dihedral(img, k) for k in range(8)]
    assert all(o.shape == (3, 4) for o in outs[:4]) and all(o.shape == (4, 3) for o in outs[4:])
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8
    assert np.array_equal(outs[0], img) and np.array_equal(outs[1], img[:, ::-1])


def test_struct_variant_trains_on_flips_that_keep_the_scan_rows():
    noise = _row_correlated()
    struct = P.plan_training(noise.shape, P.STRUCT_N2V)
    plain = P.plan_training(noise.shape, P.N2V2)
    assert struct.transforms == (0, 1, 2, 3) and plain.transforms == tuple(range(8))
    for member in P.training_stack(noise, struct)[:4]:
        assert _lag1(member, 1) > 0.3 and abs(_lag1(member, 0)) < 0.1  # rows stay rows
    turned = [m for m in P.training_stack(noise, plain)[:8] if _lag1(m, 0) > 0.3]
    assert len(turned) == 4  # the plain variant also sees the transposed ones


def test_plan_holds_enough_patches_and_fits_the_patch_to_small_images():
    s = P.N2VSettings(steps=50, batch_size=8)
    plan = P.plan_training((128, 128), s, seed=0)
    per_image = (128 // plan.patch_px) ** 2
    assert plan.patch_px == 64 and plan.stack_len * per_image >= 50 * 8 + s.val_patches
    assert plan.seed >= 1  # CAREamics refuses a seed of 0
    assert P.plan_training((40, 70), s).patch_px == 32
    with pytest.raises(InputError):
        P.plan_training((12, 70), s)
    with pytest.raises(ConfigError):
        P.N2VSettings(patch_px=48).validate()
    with pytest.raises(ConfigError):
        P.N2VSettings(struct_axis="diagonal").validate()


def test_adapter_pads_for_the_unet_and_crops_back():
    rng = np.random.default_rng(1)
    img = rng.normal(10, 2, size=(50, 45)).astype(np.float32)
    fake = FakeBackend(scale=0.5)
    notes = {}
    out = P.n2v_denoise(img, P.N2VSettings(steps=5, batch_size=2), seed=3, backend=fake, notes=notes)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.5 * img, rtol=1e-6)
    call = fake.calls[0]
    assert call["image"].shape == (52, 48) and np.array_equal(call["image"][:50, :45], img)
    assert call["stack"].shape[0] == call["plan"].stack_len and call["plan"].seed == 4
    assert notes["steps"] == 5 and notes["transforms"] == 8 and notes["trained_on"] == "this image"
    with pytest.raises(RuntimeError, match="shape"):
        P.n2v_denoise(img, P.N2V2, backend=FakeBackend(bad_shape=True))


def test_n2v_method_in_the_benchmark_with_a_fake_backend():
    case = B.simulate_case(B.CaseSpec("sq", "square", 20.0, 64, seed=2))
    fake = FakeBackend(scale=1.0)
    m = B.n2v_method("structn2v", steps=7, backend=fake)
    rows, outputs, _, skipped, errors = B.run_case(case, [m])
    assert not errors and not skipped and rows[0]["method"] == "structn2v"
    assert "structN2V" in rows[0]["label"] and '"steps": 7' in rows[0]["notes"]
    assert rows[0]["s_per_mp"] == pytest.approx(rows[0]["time_s"] / (64 * 64 / 1e6))
    assert fake.calls[0]["plan"].settings.struct_axis == "horizontal"
    np.testing.assert_allclose(outputs["structn2v"], case.noisy)


def test_missing_careamics_is_said_clearly(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "careamics", None)
    assert not P.careamics_available()
    with pytest.raises(FilterUnavailable, match=r"pip install '\.\[bench\]'"):
        P.n2v_denoise(np.zeros((32, 32), np.float32), P.N2V2)
    cfg = B.BenchConfig(out_dir=tmp_path, methods=("noisy", "n2v2", "structn2v"))
    methods, skipped = B.build_methods(cfg, log=lambda *a: None)
    assert [m.name for m in methods] == ["noisy"]
    assert len(skipped) == 2 and all("careamics" in s and "[bench]" in s for s in skipped)


def test_peers_join_the_default_methods_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "careamics", None)
    monkeypatch.setitem(sys.modules, "bm3d", None)
    trained = []
    monkeypatch.setattr(B, "prepare_supervised", lambda cfg, log=print: trained.append(cfg) or "g.pt")
    monkeypatch.setattr(B, "supervised_method", lambda path, **kw: B.Method("supervised", None, "sup"))
    plain, _ = B.build_methods(B.BenchConfig(out_dir=tmp_path, dip=False), log=lambda *a: None)
    assert not trained and not {"n2v2", "structn2v", "supervised"} & {m.name for m in plain}
    with_peers, skipped = B.build_methods(B.BenchConfig(out_dir=tmp_path, dip=False, peers=True),
                                          log=lambda *a: None)
    assert len(trained) == 1 and with_peers[-1].name == "supervised"
    assert sum("careamics" in s for s in skipped) == 2


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("STEM_DENOISE_TEST_EXTRAS") != "1",
                    reason="a real CAREamics run takes about a minute on a CPU: set STEM_DENOISE_TEST_EXTRAS=1")
def test_real_careamics_denoises_a_tiny_image():
    pytest.importorskip("careamics", reason="CAREamics is an optional extra (pip install '.[bench]')")
    case = B.simulate_case(B.CaseSpec("sq", "square", 20.0, 32, seed=3))
    notes = {}
    out = P.n2v_denoise(case.noisy, P.N2VSettings(steps=2, batch_size=2, patch_px=32, struct_axis="horizontal"),
                        notes=notes)
    assert out.shape == case.noisy.shape and np.all(np.isfinite(out))
    assert abs(float(out.mean()) - float(case.noisy.mean())) < 0.5 * float(case.noisy.std())  # input units kept
    assert notes["steps"] == 2
