"""Test-session settings shared by all test modules."""
import os

import torch

# Under pytest-xdist, share the cores between the workers: each worker's default of one torch
# thread per core oversubscribes the machine, and OpenMP's spinning threads then made single
# tests up to 6.7x slower and the suite take 593 s instead of 245 s (2-core CI machine).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
