"""Run under torchrun by test_ddp.py (and tests/sparsify/test_distributed.py): the real
`mtlcompress` command, plus a dump of each rank's final weights after `train` so the test
can compare ranks; rank 0 writes each sparsify stage's output late, so a rank that did
not wait for it would not find it in the plan's next stage."""

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

import mtlcompress.sparsify.common as sparsify_common
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


real_write_stage_output = sparsify_common.write_stage_output


def write_stage_output_late(*args, **kwargs):
    time.sleep(2)
    return real_write_stage_output(*args, **kwargs)


single_task.run_training = run_training_and_dump
sparsify_common.write_stage_output = write_stage_output_late
torch.set_num_threads(1)
main()
