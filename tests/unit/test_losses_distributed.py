"""Distributed losses equal the single-process full-batch computation (2 and 4 gloo processes).

Each rank holds B rows of a seeded global batch of N = W * B pairs (float64). Expected, per the
convention in vlmkit.training.losses:
- mean over ranks of the returned losses == full-batch loss;
- gradient on rank r's embeddings == W * (gradient of the full-batch loss)[rows of rank r]
  (= d(sum of all ranks' losses)/d(local rows); DDP's 1/W averaging then gives the full gradient);
- mean over ranks of the logit_scale / logit_bias gradients == their full-batch gradients.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vlmkit.training.losses import (
    ClipLoss,
    SigLipLoss,
    clip_loss,
    clip_loss_distributed,
    siglip_loss,
    siglip_loss_distributed,
)

LOCAL_BATCH, DIM = 3, 5


def _global_batch(world: int):
    g = torch.Generator().manual_seed(1234)
    n = world * LOCAL_BATCH
    img = F.normalize(torch.randn(n, DIM, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(n, DIM, generator=g, dtype=torch.float64), dim=-1)
    # Make some pairs agree so the loss is not dominated by noise.
    txt[::2] = F.normalize(img[::2] + 0.3 * txt[::2], dim=-1)
    log_t = torch.tensor(2.0, dtype=torch.float64)
    bias = torch.tensor(-3.0, dtype=torch.float64)
    return img, txt, log_t, bias


def _loss_and_grads(loss_fn, img, txt, log_t, bias, with_bias: bool):
    """Loss value and gradients w.r.t. (img, txt, log_t[, bias]) of loss_fn(img, txt, t[, b])."""
    leaves = [x.clone().requires_grad_(True) for x in (img, txt, log_t, bias)]
    args = leaves[:2] + [leaves[2].exp()] + ([leaves[3]] if with_bias else [])
    loss = loss_fn(*args)
    grads = torch.autograd.grad(loss, leaves[: 4 if with_bias else 3])
    return loss.detach(), [g.detach() for g in grads]


def _worker(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    try:
        img, txt, log_t, bias = _global_batch(world)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local = (img[rows], txt[rows], log_t, bias)
        results = {
            "clip": _loss_and_grads(clip_loss_distributed, *local, with_bias=False),
            "siglip": _loss_and_grads(siglip_loss_distributed, *local, with_bias=True),
            "clip_module": _loss_and_grads(ClipLoss(), *local, with_bias=False),
            "siglip_module": _loss_and_grads(SigLipLoss(), *local, with_bias=True),
        }
        # The ring keeps only local inputs for backward: nothing saved grows with the world size.
        ring_loss = siglip_loss_distributed(img[rows].requires_grad_(True), txt[rows], 1.0, 0.0)
        results["ring_saved_shapes"] = [tuple(x.shape) for x in ring_loss.grad_fn.saved_tensors]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 4])
def test_distributed_losses_equal_full_batch(world, tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world,
             join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    img, txt, log_t, bias = _global_batch(world)
    full = {
        "clip": _loss_and_grads(clip_loss, img, txt, log_t, bias, with_bias=False),
        "siglip": _loss_and_grads(siglip_loss, img, txt, log_t, bias, with_bias=True),
    }
    for result in per_rank:
        assert all(shape[:1] in ((), (LOCAL_BATCH,)) for shape in result["ring_saved_shapes"])
    for name in ("clip", "siglip", "clip_module", "siglip_module"):
        full_loss, full_grads = full[name.removesuffix("_module")]
        mean_loss = sum(r[name][0] for r in per_rank) / world
        torch.testing.assert_close(mean_loss, full_loss, rtol=1e-12, atol=1e-12)
        for rank, result in enumerate(per_rank):
            rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            grad_img, grad_txt = result[name][1][:2]
            tol = {"rtol": 1e-10, "atol": 1e-12}
            torch.testing.assert_close(grad_img, world * full_grads[0][rows], **tol)
            torch.testing.assert_close(grad_txt, world * full_grads[1][rows], **tol)
        for k in range(2, len(full_grads)):  # logit scale (and bias): local, averaged by DDP
            mean_grad = sum(r[name][1][k] for r in per_rank) / world
            torch.testing.assert_close(mean_grad, full_grads[k], rtol=1e-10, atol=1e-12)
