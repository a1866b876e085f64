"""stem_denoise.evaluation.finetune: both arms train on the same simulated data and are scored after each segment."""
from __future__ import annotations

import json

import pytest

from stem_denoise.evaluation.finetune import FinetuneStudy, run_finetune_study

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_study_scores_both_arms_and_counts_the_steps(tmp_path):
    from cyclegan.checkpoint import export_generator
    from cyclegan.models import GeneratorConfig, build_generator

    cfg = GeneratorConfig(width=4, n_blocks=1, n_down=1)
    export_generator(tmp_path / "g.pt", build_generator(cfg), cfg,
                     {"patch_px": 48, "atoms_per_patch": 4, "period_px": 12.0, "direction": "A2B"})
    study = FinetuneStudy(lattice="square", period_px=12.0, n_train=2, n_val=1, size=128, per_image=8,
                          checkpoints=(0, 2), batch_size=2, crop_px=32, init=str(tmp_path / "g.pt"),
                          extra={"discriminator": {"width": 8, "n_layers": 1}})
    lines = []
    res = run_finetune_study(study, tmp_path / "out", log=lines.append)
    assert [c["step"] for c in res["curves"]["finetuned"]] == [0, 2] == [c["step"] for c in res["curves"]["scratch"]]
    # the identity export at step 0 scores the noisy input itself; a fresh network is also the identity here
    assert res["curves"]["finetuned"][0]["psnr"] == pytest.approx(res["noisy_psnr"], abs=0.05)
    assert res["target_psnr"] == max(c["psnr"] for c in res["curves"]["scratch"])
    assert res["steps_to_target"]["scratch"] in (0, 2)
    on_disk = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert on_disk["curves"] == res["curves"] and (tmp_path / "out" / "finetune.png").stat().st_size > 5000
    assert (tmp_path / "out" / "run_finetuned" / "generator.pt").is_file()
    assert any("validation PSNR" in line for line in lines)
    with pytest.raises(Exception, match="architecture"):
        run_finetune_study(FinetuneStudy(init=str(tmp_path / "g.pt"), extra={"generator": {"width": 8}}),
                           tmp_path / "o2", log=lines.append)
