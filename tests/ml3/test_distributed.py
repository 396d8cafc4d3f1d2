"""Data-parallel meta-training (issue 15): 2 gloo processes give the same learned loss as 1."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ml3_robotics.core.distributed import SINGLE, World, item_generator, item_mean
from ml3_robotics.core.meta_trainer import MetaTrainConfig, MetaTrainer

N_ITEMS = 5  # odd: the ranks get 3 and 2 items


class ToyItems:
    """A mean of per-item regression terms of a small network (stands in for goals or arms).

    Even items also return an output (their mean prediction) and report a metric of their own;
    ``finish_iteration`` folds every item's output into a shift of the next iteration's data,
    the way the reacher collects data with every item's policies and refits its model.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.shift = 0.0

    def items(self, iteration, generator):
        return torch.randperm(8, generator=generator)[:N_ITEMS].tolist()

    def item_loss(self, item, generator):
        x = torch.randn(16, 3, generator=generator) + item + self.shift
        y = torch.sin(x).sum(-1)
        prediction = self.net(x).squeeze(-1)
        err = (prediction - y).pow(2).mean()
        metrics = {"err": float(err.detach()), "item": float(item)}
        if item % 2:
            return err, metrics
        return err, {**metrics, "even_item": float(item)}, float(prediction.detach().mean())

    def finish_iteration(self, iteration, outputs):
        self.shift += 0.1 * sum(o for o in outputs if o is not None)
        return {"shift": self.shift, "outputs": float(sum(o is not None for o in outputs))}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def _train(world: World, checkpoint) -> tuple[nn.Module, MetaTrainer]:
    net = _net()
    trainer = MetaTrainer(
        net, ToyItems(net), MetaTrainConfig(6, lr=1e-2, seed=5, checkpoint_every=2),
        checkpoint_path=checkpoint, world=world,
    )  # fmt: skip
    trainer.run()
    return net, trainer


def _worker(rank: int, size: int, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=size)
    try:
        net, trainer = _train(World(rank, size), f"{out}/ckpt.safetensors")
        torch.save({"state": net.state_dict(), "history": trainer.history}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_learn_the_same_loss_as_one(tmp_path):
    single_dir = tmp_path / "single"
    single_dir.mkdir()
    net, trainer = _train(SINGLE, single_dir / "ckpt.safetensors")
    mp.spawn(_worker, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        doc = torch.load(tmp_path / f"rank{rank}.pt")
        # bit-identical: each item's gradient is summed in item order on every rank
        for key, value in net.state_dict().items():
            assert torch.equal(doc["state"][key], value), key
        for a, b in zip(doc["history"], trainer.history, strict=True):
            for key in ("meta_loss", "meta_grad_norm", "err", "item", "shift", "outputs"):
                assert a[key] == b[key], key
            assert a.get("even_item") == b.get("even_item")
    assert any(row["shift"] != 0 for row in trainer.history)
    # rank 0 alone wrote the checkpoint, which equals the single process's
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "ckpt.safetensors"), load_file(single_dir / "ckpt.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_item_mean_is_the_mean_of_the_items_and_their_gradients():
    net = _net()
    objective = ToyItems(net)
    params = list(net.parameters())
    mean = item_mean(objective, params, 0, torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    items = objective.items(0, g)
    results = [objective.item_loss(it, item_generator(g, p)) for p, it in enumerate(items)]
    direct = torch.stack([r[0] for r in results]).mean()
    assert mean.value == pytest.approx(float(direct.detach()), rel=1e-6)
    for a, b in zip(mean.grads, torch.autograd.grad(direct, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert mean.metrics["item"] == pytest.approx(sum(items) / len(items))
    # a metric only some items report is their mean; outputs come back in item order
    even = [it for it in items if it % 2 == 0]
    if even:
        assert mean.metrics["even_item"] == pytest.approx(sum(even) / len(even))
    assert mean.outputs == [r[2] if len(r) == 3 else None for r in results]
    assert World(0, 2).positions(5) == [0, 2, 4] and World(1, 2).positions(5) == [1, 3]
    assert World(3, 4).positions(2) == []  # more ranks than items: nothing, not an error
    g1, g2 = item_generator(g, 3), item_generator(torch.Generator().manual_seed(11), 3)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_bad_worlds_and_objectives_are_refused():
    with pytest.raises(ValueError, match="rank: expected an int in"):
        World(2, 2)
    with pytest.raises(ValueError, match="size: expected"):
        World(0, 0)
    net = _net()
    with pytest.raises(ValueError, match="needs a mean of items"):
        MetaTrainer(net, lambda i, g: net[0].weight.sum(), MetaTrainConfig(1), world=World(0, 2))
