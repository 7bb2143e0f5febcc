"""How much memory a training step needs, term by term.

Weights, gradients, optimizer states and the activations autograd keeps, followed through the
step's timeline (forward, backward, optimizer step); `estimate_memory` is the one entry.
"""

from affiner.planner.memory.peak import (
    MemoryEstimate,
    block_params,
    estimate_memory,
    trainable_shapes,
)
from affiner.planner.memory.weights import quantizable_params

__all__ = [
    "MemoryEstimate",
    "block_params",
    "estimate_memory",
    "quantizable_params",
    "trainable_shapes",
]
