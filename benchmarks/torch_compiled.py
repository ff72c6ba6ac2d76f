"""The torch.compile'd peer of a torch.func ensemble step, shared by
accelerator.py and vs_pytorch.py: both compile their whole per-step update, its
parameters (and any state) passed and returned functionally, so the compiled
step runs the eager one's own code.

Mode: torch.compile's default. On the 2-core development CPU (torch 2.13.0,
Ioffe's MLP ensemble with batch norm, K = 32, vs_pytorch.py's step),
"max-autotune-no-cudagraphs" took 18.7 s for its first call (the compile and
100 steps) against the default's 7.3 s, and ran at the same rate (3,593
against 3,545 model-steps/s): its autotuning
timed inductor's C++ GEMM templates against ATen's bmm for every matmul, and
bmm won each time, which is what the default calls. ("reduce-overhead" adds
CUDA graphs, which a CPU has none of.)

Inductor's on-disk caches are off, so that a first call's time is a compile
(a warm cache turned 7 s of compiling into 1.5 s on a second run).
"""

import time
import warnings

MODE = "default"


def compile_step(step, mode: str | None = None):
  """`step` under torch.compile with static shapes, after a reset of dynamo's
  caches: each ensemble (each K) gets a fresh compile, and no recompile with
  dynamic shapes can happen mid-timing."""
  import torch
  import torch._inductor.config
  torch._inductor.config.force_disable_caches = True
  warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
  torch._dynamo.reset()
  return torch.compile(step, dynamic=False, mode=mode or MODE)


def first_call_seconds(call) -> float:
  """Seconds of one call: for a compiled step's first call, its compile time
  and one call's work."""
  t = time.perf_counter()
  call()
  return time.perf_counter() - t
