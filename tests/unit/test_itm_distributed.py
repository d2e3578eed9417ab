"""ITM with negatives mined over the global batch equals single-process ITM on the whole batch.

Each of W gloo processes holds B rows of a seeded global batch of N = W * B pairs. Mining is made
deterministic by a huge similarity scale (every draw's distribution is one-hot on the hardest
non-positive candidate; the test checks that premise on the full batch), so the distributed
draws and the single-process draws pick the same pairs. Expected (the `training.losses`
convention): mean over ranks of the losses == full-batch loss; rank r's gradient on its own
embeddings == W * full-batch gradient of its rows; mean over ranks of parameter gradients ==
full-batch parameter gradients. With a flat similarity, negatives come from other ranks too and
never share a group id with the pair, wherever that id sits in the global batch.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vlmkit.models.coca import CoCa, CocaConfig
from vlmkit.models.common.init import init_weights
from vlmkit.models.itm import ItmHead, PairItmHead
from vlmkit.training.itm import coca_scorer, itm_loss, two_tower_scorer
from vlmkit.training.itm import coca_scorer_distributed, itm_loss_distributed, two_tower_scorer_distributed

B, E, SCALE = 3, 6, 1e7


def _pairs(world: int):
    g = torch.Generator().manual_seed(7)
    img = F.normalize(torch.randn(world * B, E, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(world * B, E, generator=g, dtype=torch.float64), dim=-1)
    return img, txt


def _head() -> PairItmHead:
    torch.manual_seed(3)
    return PairItmHead(E, 8).double()


def _coca_inputs(world: int):
    g = torch.Generator().manual_seed(5)
    pix = torch.randn(world * B, 3, 32, 32, generator=g, dtype=torch.float64)
    ids = torch.randint(3, 64, (world * B, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[-1, 3:] = 0
    return pix, ids, mask


def _coca() -> tuple[CoCa, ItmHead]:
    model = init_weights(CoCa(CocaConfig.from_preset("debug")), std=0.1, seed=0).double()
    torch.manual_seed(4)
    return model, ItmHead(model.cfg.width).double()


def _two_tower(img, txt, distributed: bool):
    head = _head()
    img, txt = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    if distributed:
        result = itm_loss_distributed(two_tower_scorer_distributed(head, img, txt), img, txt, SCALE, g)
    else:
        result = itm_loss(two_tower_scorer(head, img, txt), SCALE * img @ txt.T, g)
    grads = torch.autograd.grad(result.loss, [img, txt, *head.parameters()])
    return result.loss.detach(), [x.detach() for x in grads]


def _coca_itm(pix, ids, mask, distributed: bool):
    model, head = _coca()
    out = model(pix, ids, mask)
    g = torch.Generator().manual_seed(0)
    if distributed:
        score = coca_scorer_distributed(model, head, out)
        result = itm_loss_distributed(score, out.image_embeds, out.text_embeds, SCALE, g)
    else:
        result = itm_loss(coca_scorer(model, head, out), SCALE * out.image_embeds @ out.text_embeds.T, g)
    # The head, the multimodal decoder, and the parts that feed the gathered inputs (caption
    # tokens, unimodal text states): their gradients cross ranks through the gather.
    params = [head.proj.weight, model.multimodal_layers[0].cross_attn.q_proj.weight,
              model.caption_pooler.queries, model.token_embedding.weight]
    grads = torch.autograd.grad(result.loss, params)
    return result.loss.detach(), [x.detach() for x in grads]


def _drawn_pairs(img, txt, group_ids):
    """(image, text) global indices of the negatives drawn on this rank with a flat similarity."""
    drawn = []

    def score(i, t):
        drawn.append(torch.stack([i, t], 1)[len(i) // 3 :])  # the 2B negative pairs
        return torch.zeros(len(i), 2, dtype=torch.float64)

    g = torch.Generator().manual_seed(dist.get_rank())
    for _ in range(100):
        itm_loss_distributed(score, img, txt, 0.0, g, group_ids)
    return torch.cat(drawn)


def _worker(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        rows = slice(rank * B, (rank + 1) * B)
        img, txt = _pairs(world)
        pix, ids, mask = _coca_inputs(world)
        ids_global = torch.arange(world * B)
        ids_global[B] = 0  # rank 1's first pair shows the same image as rank 0's first pair
        results = {
            "two_tower": _two_tower(img[rows], txt[rows], distributed=True),
            "coca": _coca_itm(pix[rows], ids[rows], mask[rows], distributed=True),
            "drawn": _drawn_pairs(img[rows], txt[rows], ids_global[rows]),
        }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _assert_one_hot(sim: torch.Tensor) -> None:
    """The premise: with SCALE every draw is certain (softmax over non-positives is one-hot)."""
    for s in (sim, sim.T):
        probs = s.float().masked_fill(torch.eye(len(s), dtype=torch.bool), float("-inf")).softmax(1)
        assert (probs.max(dim=1).values == 1.0).all()


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_itm_mined_over_global_batch_equals_full_batch(world, tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    img, txt = _pairs(world)
    _assert_one_hot(SCALE * img @ txt.T)
    pix, ids, mask = _coca_inputs(world)
    model, _ = _coca()
    with torch.no_grad():
        out = model(pix, ids, mask)
    _assert_one_hot(SCALE * out.image_embeds @ out.text_embeds.T)
    full = {"two_tower": _two_tower(img, txt, distributed=False),
            "coca": _coca_itm(pix, ids, mask, distributed=False)}
    tol = {"rtol": 1e-5, "atol": 1e-8}  # float64 inputs, but ITM's cross-entropy runs in float32
    for name, n_local in (("two_tower", 2), ("coca", 0)):
        full_loss, full_grads = full[name]
        torch.testing.assert_close(sum(r[name][0] for r in per_rank) / world, full_loss, **tol)
        for k in range(len(full_grads)):
            if k < n_local:  # the rank's own embeddings: W x its rows of the full gradient
                for rank, result in enumerate(per_rank):
                    rows = slice(rank * B, (rank + 1) * B)
                    torch.testing.assert_close(result[name][1][k], world * full_grads[k][rows], **tol)
            else:  # parameters: averaged over ranks by DDP
                mean_grad = sum(r[name][1][k] for r in per_rank) / world
                torch.testing.assert_close(mean_grad, full_grads[k], **tol)
                assert full_grads[k].abs().sum() > 0
    ids_global = torch.arange(world * B)
    ids_global[B] = 0
    for rank, result in enumerate(per_rank):
        drawn = result["drawn"]  # [draws, 2] global (image, text) of negative pairs
        assert (ids_global[drawn[:, 0]] != ids_global[drawn[:, 1]]).all()
        other = torch.ones(world * B, dtype=torch.bool)
        other[rank * B : (rank + 1) * B] = False
        assert other[drawn].any(dim=1).float().mean() > 0.3  # negatives come from other ranks
