"""DistributedDataParallel on CPU: two gloo processes under torchrun keep identical networks, compute the same
update as one process with the combined batch, and resume exactly."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cyclegan.checkpoint import safe_torch_load
from cyclegan.config import config_from_dict
from cyclegan.data import write_toy_patches
from cyclegan.train import NETS, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]

# constant LR (decay_start 1): a run for 3 steps then resumed to 6 follows the same schedule as 6 straight steps
CFG = {"seed": 2, "steps": 6, "decay_start": 1.0, "batch_size": 2, "crop_px": 16, "num_workers": 0, "log_every": 1,
       "image_every": 1000, "checkpoint_every": 3, "pool_size": 3, "device": "cpu",
       "generator": {"width": 4, "n_blocks": 1}, "discriminator": {"width": 4, "n_layers": 2},
       "dashboard": {"enabled": False},
       # float32: the update is compared at 1e-6 (on a CPU with native bf16, "auto" would round to bf16)
       "precision": "fp32"}

HELPER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import torch.distributed as dist
    from cyclegan.config import config_from_dict
    from cyclegan.train import train
    from stem_denoise.commands.train_cyclegan import main

    data, out, cfg = Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
    dist.init_process_group("gloo")  # one group for several runs; train() joins it
    rank = dist.get_rank()
    results = {}
    # 1. no image pool: the update must equal one process with the combined batch
    results["nopool"] = train(config_from_dict({**cfg, "pool_size": 0, "steps": 4}), data, out / "nopool",
                              progress=False)["digests"]
    # 2. straight run, and 3. the same run stopped at step 3 then resumed through the script
    results["straight"] = train(config_from_dict(cfg), data, out / "straight", progress=False)["digests"]
    train(config_from_dict({**cfg, "steps": 3}), data, out / "resumed", progress=False)
    main(["--data", str(data), "--out", str(out / "resumed"), "--resume", "--steps", str(cfg["steps"]),
          "--no-progress"])
    results["resumed"] = train(config_from_dict(cfg), data, out / "resumed", resume=True,
                               progress=False)["digests"]  # already at the end: reports the weights
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()
""")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "data"
    write_toy_patches(data, n_a=9, n_b=6, patch_px=20, atoms_per_patch=2.5, noise=0.3, seed=3)
    helper = tmp / "helper.py"
    helper.write_text(HELPER)
    out = tmp / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(helper),
           str(ROOT), str(data), str(out), json.dumps(CFG)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return data, out, ranks, proc


def test_networks_identical_across_ranks(ddp_run):
    _, _, ranks, _ = ddp_run
    for run in ("nopool", "straight", "resumed"):
        assert set(ranks[0][run]) == set(NETS)
        assert ranks[0][run] == ranks[1][run], run


def test_resumed_ddp_run_is_bit_identical(ddp_run):
    _, out, ranks, proc = ddp_run
    assert ranks[0]["resumed"] == ranks[0]["straight"]
    ckpt = safe_torch_load(out / "resumed" / "last.pt")
    assert ckpt["step"] == 6 and ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    # each rank kept its own image pool, and both were saved
    pools = [r["pools"]["B"]["images"] for r in ckpt["ranks"]]
    assert pools[0].shape[0] == 3 and not torch.equal(pools[0], pools[1])
    assert proc.stdout.count("trained to step 6") == 1  # only rank 0 reports


def test_ddp_update_equals_single_process_with_combined_batch(ddp_run, tmp_path):
    data, out, _, _ = ddp_run
    single = train(config_from_dict({**CFG, "pool_size": 0, "steps": 4, "batch_size": 4}), data, tmp_path / "one",
                   progress=False)
    assert single["step"] == 4
    a = safe_torch_load(out / "nopool" / "last.pt")["models"]
    b = safe_torch_load(tmp_path / "one" / "last.pt")["models"]
    for net in NETS:
        for key, value in a[net].items():
            assert torch.allclose(value, b[net][key], atol=1e-6, rtol=1e-5), (net, key)
    # and the runs did move away from their initial weights
    assert not torch.equal(a["G"]["stem.0.weight"], safe_torch_load(out / "straight" / "last.pt")["models"]["G"]
                           ["stem.0.weight"])
