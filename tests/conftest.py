"""Test-wide settings: the tests run many tiny tensor ops, where one intra-op thread is fastest and does not
oversubscribe the cores when several processes share a machine."""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
