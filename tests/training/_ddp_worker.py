"""Run under torchrun by test_ddp.py: the real `mtlcompress train` command, plus a dump
of each rank's final weights so the test can compare ranks."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

import mtlcompress.training.single_task as single_task
from mtlcompress.cli.main import main

dump_dir = Path(sys.argv.pop(1))
real_run_training = single_task.run_training


def run_training_and_dump(*, model, **kwargs):
    result = real_run_training(model=model, **kwargs)
    state = (model.module if hasattr(model, "module") else model).state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
              str(dump_dir / f"rank{dist.get_rank()}.safetensors"))
    return result


single_task.run_training = run_training_and_dump
torch.set_num_threads(1)
main()
