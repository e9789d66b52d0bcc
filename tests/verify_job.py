"""A tiny DDP training job for ``dynamiccl verify``'s tests (run under torchrun on gloo).

Each step: forward and backward of one linear layer (DDP all-reduces its gradients), a sleep that
stands in for the step's compute (``--compute-ms``), and an optimizer step, which the step timer
takes as the step's end. ``--slow-ms`` adds a sleep to every step of the arms whose
``DYNAMICCL_VERIFY_ARM`` starts with ``--slow-arm`` (a regression injected into arm B, say).
Run without torchrun (no ``RANK`` in the environment) it trains the layer alone, without DDP.
"""

import argparse
import gc
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--compute-ms", type=float, default=20.0)
parser.add_argument("--slow-arm", default="B")
parser.add_argument("--slow-ms", type=float, default=0.0)
args = parser.parse_args()

distributed = "RANK" in os.environ
if distributed:
    dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.Linear(64, 64)
if distributed:
    model = DistributedDataParallel(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
inputs = torch.randn(16, 64)
slow_s = args.slow_ms / 1e3 if os.environ.get("DYNAMICCL_VERIFY_ARM", "").startswith(args.slow_arm) else 0.0
for _ in range(args.steps):
    model(inputs).square().mean().backward()
    time.sleep(args.compute_ms / 1e3 + slow_s)
    optimizer.step()
    optimizer.zero_grad()
if distributed:
    dist.destroy_process_group()
# Dropped while the interpreter is whole: a gloo group (DDP's) destroyed during its finalization can
# abort the process from its worker threads (pytorch/pytorch PR #179291).
del model, optimizer
gc.collect()
