"""A diverged run keeps a state it can recover from (issue #21.6): only finite state is
saved, a state is written only once the next loss proved its weights good, and a
resume may lower the learning rate (recorded in the state's history)."""

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from mtlcompress.errors import CheckpointError, TrainingDiverged
from mtlcompress.training.loop import TrainConfig, run_training
from mtlcompress.training.state import load_training_state, save_training_state

CONFIG = TrainConfig(steps=10, batch_size=8, lr=0.05, warmup_steps=2, checkpoint_every=3, eval_every=10**9)


class _Points(Dataset):
    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 48, generator=generator)
        self.y = self.x.mean(dim=1) * 3

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"image": self.x[i], "target": self.y[i]}


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(48, 1)
        self.unused = torch.nn.Parameter(torch.zeros(3))  # the loss never sees it: NaN here keeps it finite

    def forward(self, x):
        return self.linear(x).squeeze(1)


def _train(path, config=CONFIG, *, loss_hook=None, before_step=None, after_update=None, seed=0):
    """Train a tiny regression; returns (model, result). Hooks poison it at chosen steps."""
    torch.manual_seed(seed)
    model = _Model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    if after_update is not None:
        optimizer.register_step_post_hook(lambda opt, args, kwargs: after_update(model, opt))

    def compute_loss(batch, step):
        loss = ((model(batch["image"]) - batch["target"]) ** 2).mean()
        if loss_hook is not None:
            loss = loss_hook(loss, step)
        return loss, {"loss": loss.item()}

    result = run_training(model=model, optimizer=optimizer, compute_loss=compute_loss, dataset=_Points(),
                          config=config, state_path=path, run_id={"stage": "test", "config": config.to_dict()},
                          show_progress=False, before_step=lambda s: before_step(model, optimizer, s)
                          if before_step else None)
    return model, result


def _saved(path, config=CONFIG):
    model = _Model()
    step = load_training_state(path, model=model, optimizer=torch.optim.AdamW(model.parameters()),
                               run={"stage": "test", "config": config.to_dict()})
    return step, model


def _document(path):
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["document"])


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_infinite_or_nan_loss_stops_and_keeps_the_last_good_state(tmp_path, bad):
    path = tmp_path / "s.safetensors"
    with pytest.raises(TrainingDiverged, match=rf"loss became {bad} at step 5; the last good state \(step 3\)"):
        _train(path, loss_hook=lambda loss, step: loss * bad if step == 5 else loss)
    step, model = _saved(path)
    assert step == 3 and torch.isfinite(model.linear.weight).all()


@pytest.mark.parametrize("target", ["weight", "optimizer"])
def test_non_finite_state_with_a_finite_loss_is_never_saved(tmp_path, target):
    path = tmp_path / "s.safetensors"

    def poison(model, optimizer, step):
        if step == 4:
            with torch.no_grad():
                if target == "weight":
                    model.unused[1] = float("nan")
                else:
                    optimizer.state[model.linear.weight]["exp_avg_sq"][0, 0] = float("inf")

    name = "model.unused" if target == "weight" else "optim.1.exp_avg_sq"  # parameter 1: linear.weight
    with pytest.raises(TrainingDiverged, match=rf"'{name}' became NaN or Inf with a finite loss at step 5; "
                                               r"the last good state \(step 3\)"):
        _train(path, before_step=poison)
    step, model = _saved(path)
    assert step == 3 and torch.isfinite(model.unused).all()


def test_huge_but_finite_weights_are_not_kept_as_the_last_good_state(tmp_path):
    path = tmp_path / "s.safetensors"
    updates = []

    def blow_up(model, optimizer):  # the 6th update (step 5) leaves finite but absurd weights
        updates.append(1)
        if len(updates) == 6:
            with torch.no_grad():
                model.linear.weight.mul_(1e19)

    with pytest.raises(TrainingDiverged, match=r"loss became inf at step 6; the last good state \(step 3\)"):
        _train(path, after_update=blow_up)
    step, model = _saved(path)
    assert step == 3 and model.linear.weight.abs().max() < 100


def test_resume_with_a_lower_learning_rate_is_accepted_used_and_recorded(tmp_path):
    reference, _ = _train(tmp_path / "reference.safetensors")
    path = tmp_path / "s.safetensors"
    with pytest.raises(TrainingDiverged, match="re-run with a lower learning rate"):
        _train(path, loss_hook=lambda loss, step: loss * float("nan") if step == 7 else loss)
    assert _document(path)["lr_changes"] == [{"step": 0, "lr": 0.05}]
    lower = dataclasses.replace(CONFIG, lr=0.01)
    resumed, result = _train(path, lower)
    assert result.resumed_from == 6
    assert result.lr_changes == [{"step": 0, "lr": 0.05}, {"step": 6, "lr": 0.01}]
    assert _document(path)["lr_changes"] == result.lr_changes
    # The lower rate really drove steps 6..9: the weights differ from the uninterrupted run.
    assert not torch.equal(resumed.linear.weight, reference.linear.weight)


def test_resume_at_the_same_learning_rate_adds_no_history_and_is_bit_exact(tmp_path):
    reference, _ = _train(tmp_path / "reference.safetensors")
    path = tmp_path / "s.safetensors"
    with pytest.raises(TrainingDiverged):
        _train(path, loss_hook=lambda loss, step: loss * float("nan") if step == 7 else loss)
    resumed, result = _train(path)
    assert result.lr_changes == [{"step": 0, "lr": 0.05}]
    assert torch.equal(resumed.linear.weight, reference.linear.weight)


def test_resume_still_refuses_any_other_changed_setting(tmp_path):
    path = tmp_path / "s.safetensors"
    with pytest.raises(TrainingDiverged):
        _train(path, loss_hook=lambda loss, step: loss * float("nan") if step == 7 else loss)
    for change in ({"batch_size": 4}, {"lr": 0.01, "weight_decay": 0.0}, {"seed": 1}):
        with pytest.raises(CheckpointError, match="different settings"):
            _train(path, dataclasses.replace(CONFIG, **change))


def test_a_state_holding_nan_is_refused_on_save_and_on_resume(tmp_path):
    model = _Model()
    optimizer = torch.optim.AdamW(model.parameters())
    with torch.no_grad():
        model.linear.bias[0] = float("nan")
    run = {"stage": "test", "config": CONFIG.to_dict()}
    path = tmp_path / "s.safetensors"
    with pytest.raises(CheckpointError, match="not saving training state at step 3: tensor 'model.linear.bias'"):
        save_training_state(path, step=3, model=model, optimizer=optimizer, run=run)
    assert not path.exists()
    # A file written by other means (or an older version) is refused on resume.
    from mtlcompress.io.container import write_container

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    write_container(path, tensors, format_name="mtlcompress.train_state", version=1,
                    document={"step": 3, "run": run, "param_groups": optimizer.state_dict()["param_groups"]})
    with pytest.raises(CheckpointError, match=r"s.safetensors: tensor 'model.linear.bias' holds NaN or Inf; "
                                              "this state cannot be resumed"):
        _saved(path)
