"""Test-wide settings: the tests run many tiny tensor ops, where one intra-op thread is fastest and does not
oversubscribe the cores when several processes share a machine."""

import torch

torch.set_num_threads(1)
