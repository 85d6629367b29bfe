import pytest
import torch
from torch.utils.data import Dataset

from mtlcompress.errors import TrainingDiverged
from mtlcompress.training.batches import batch_indices
from mtlcompress.training.loop import TrainConfig, run_training
from mtlcompress.training.state import load_training_state


def test_batches_are_deterministic_and_cover_each_epoch():
    first = [batch_indices(s, dataset_size=10, batch_size=4, seed=3) for s in range(2)]
    again = [batch_indices(s, dataset_size=10, batch_size=4, seed=3) for s in range(2)]
    assert first == again
    seen = first[0] + first[1]
    assert len(set(seen)) == 8  # two disjoint batches within one epoch
    assert batch_indices(0, dataset_size=10, batch_size=4, seed=4) != first[0]


def test_ranks_split_the_global_batch():
    whole = batch_indices(5, dataset_size=50, batch_size=8, seed=0)
    parts = [batch_indices(5, dataset_size=50, batch_size=8, seed=0, rank=r, world_size=2) for r in range(2)]
    assert parts[0] + parts[1] == whole
    assert not set(parts[0]) & set(parts[1])


class _Points(Dataset):
    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 3, 4, 4, generator=generator)
        self.y = self.x.mean(dim=(1, 2, 3), keepdim=False) * 3

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"image": self.x[i], "target": self.y[i]}


def _train(tmp_path, steps, before_step=None, lr=0.05, name="state.safetensors"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def compute_loss(batch, step):
        loss = ((model(batch["image"]).squeeze(1) - batch["target"]) ** 2).mean()
        return loss, {"loss": loss.item()}

    config = TrainConfig(steps=steps, batch_size=8, warmup_steps=2, checkpoint_every=3, eval_every=10**9)
    run_training(model=model, optimizer=optimizer, compute_loss=compute_loss, dataset=_Points(), config=config,
                 state_path=tmp_path / name, run_id={"test": 1}, show_progress=False, before_step=before_step)
    return model


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    reference = _train(tmp_path, steps=10, name="reference.safetensors")

    def crash(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, steps=10, before_step=crash)
    resumed = _train(tmp_path, steps=10)
    for a, b in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_nan_loss_stops_and_keeps_last_good_state(tmp_path):
    def poison(step):
        if step == 5:
            with torch.no_grad():
                model_holder[0].weight.fill_(float("nan"))

    model_holder = []
    torch.manual_seed(0)
    model = torch.nn.Linear(48, 1)
    model_holder.append(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)

    def compute_loss(batch, step):
        loss = ((model(batch["image"].flatten(1)).squeeze(1) - batch["target"]) ** 2).mean()
        return loss, {}

    config = TrainConfig(steps=10, batch_size=8, warmup_steps=1, checkpoint_every=3, eval_every=10**9)
    with pytest.raises(TrainingDiverged, match="at step 5.*step 3"):
        run_training(model=model, optimizer=optimizer, compute_loss=compute_loss, dataset=_Points(), config=config,
                     state_path=tmp_path / "s.safetensors", run_id={}, show_progress=False, before_step=poison)
    fresh = torch.nn.Linear(48, 1)
    step = load_training_state(tmp_path / "s.safetensors", model=fresh,
                               optimizer=torch.optim.AdamW(fresh.parameters()), run={})
    assert step == 3 and torch.isfinite(fresh.weight).all()


def test_resume_refuses_a_different_run(tmp_path):
    _train(tmp_path, steps=3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 1))
    from mtlcompress.errors import CheckpointError

    with pytest.raises(CheckpointError, match="different settings"):
        load_training_state(tmp_path / "state.safetensors", model=model,
                            optimizer=torch.optim.AdamW(model.parameters()), run={"test": 2})
