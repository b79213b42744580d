"""Sharding the protocol over 2 CPU processes (gloo) gives exactly the single-process numbers."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vaebench.families.vae import ModelConfig, build_model
from vaebench.protocol.evaluate import per_example_estimates

KS = (1, 5, 20)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(x_dim=20, z_dim=3, hidden=16, depth=1, prior="vamp", n_components=5))
    x = torch.bernoulli(torch.full((23, 20), 0.3), generator=torch.Generator().manual_seed(1))
    return model.eval(), x


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, x = _setup()
    estimates = per_example_estimates(model, x, KS, seed=3, batch_size=4, chunk_size=5)
    if rank == 0:
        torch.save(estimates, out_file)
    dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    out = tmp_path / "out.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    model, x = _setup()
    estimates = per_example_estimates(model, x, KS, seed=3, batch_size=4, chunk_size=5)
    got = torch.load(out, weights_only=True)
    assert got.keys() == estimates.keys()
    for field, value in estimates.items():
        assert value.shape[-1] == len(x)
        assert torch.equal(got[field].nan_to_num(-1.0), value.nan_to_num(-1.0)), field
