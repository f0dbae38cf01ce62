"""Run a script under ``torchrun`` with Accelerate in FSDP2 on CPU processes.

Accelerate enables FSDP only on accelerators: on CPUs a launch with an FSDP config becomes plain data
parallelism. Here every ``Accelerator`` is built with an FSDP2 plugin and its distributed type set to FSDP, as
on GPUs; after ``prepare`` each process prints how many of its parameters are sharded (DTensors), so a test can
tell a real FSDP2 run from a silent fallback.

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp2_launch.py SCRIPT [ARGS ...]
"""

import os
import runpy
import sys

import accelerate
import torch
from accelerate import FullyShardedDataParallelPlugin
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

SHARDED = "FSDP2 sharded parameters:"
build, prepare = accelerate.Accelerator.__init__, accelerate.Accelerator.prepare


def fsdp2_init(self, *args, **kwargs):
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            state_dict_type="FULL_STATE_DICT", reshard_after_forward=True)
    build(self, *args, **{**kwargs, "cpu": True, "fsdp_plugin": plugin})
    PartialState().distributed_type = DistributedType.FSDP
    self.state.distributed_type = DistributedType.FSDP
    self.state.fsdp_plugin = plugin


def reporting_prepare(self, *args, **kwargs):
    prepared = prepare(self, *args, **kwargs)
    modules = [obj for obj in (prepared if isinstance(prepared, (tuple, list)) else [prepared])
               if isinstance(obj, torch.nn.Module)]
    parameters = [p for module in modules for p in module.parameters()]
    # one write of the whole line: the processes share the test's pipe, and print() writes its pieces one by one
    # where Python runs unbuffered (PYTHONUNBUFFERED), so two reports could interleave
    sys.stdout.flush()
    report = f"{SHARDED} {sum(isinstance(p, DTensor) for p in parameters)} of {len(parameters)}\n"
    os.write(sys.stdout.fileno(), report.encode())
    return prepared


accelerate.Accelerator.__init__ = fsdp2_init
accelerate.Accelerator.prepare = reporting_prepare

if __name__ == "__main__":
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
