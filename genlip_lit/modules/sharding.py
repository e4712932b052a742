"""FSDP2 for genlip modules under Lightning's `ModelParallelStrategy` (experiments/scale/fsdp2.yaml).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_strategy_worker.py fsdp2

Each unit the model names (`shard_units()`: GenLIP's blocks, the captioner's encoder and decoder blocks) becomes
its own FSDP2 unit, so only one block's full parameters exist at a time during forward and backward; the network
that holds them is sharded last, covering the embeddings, final norm and LM head. Parameters are cast to bf16 for compute when the trainer
runs in bf16 (gradients are reduced in fp32). Pure data parallelism: tensor parallelism is not implemented.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genlip_lit.errors import GenLIPUserError


def apply_fsdp2(network: nn.Module, device_mesh: Any, precision: str) -> None:
    """Shard `network` in place over the mesh's data-parallel dimension, one unit per `network.shard_units()`,
    then the rest."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    names = device_mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() != 1:
        raise GenLIPUserError(
            "tensor parallelism is not implemented: set the strategy's tensor_parallel_size: 1 and "
            "data_parallel_size to the number of processes (experiments/scale/fsdp2.yaml)"
        )
    mesh = device_mesh["data_parallel"] if "data_parallel" in names else device_mesh
    param_dtype = torch.bfloat16 if str(precision).startswith("bf16") else None
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for unit in network.shard_units():  # the model says what its units are: no list of block types here
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(network, mesh=mesh, mp_policy=policy)
    # FSDP2 gathers the root's own parameters (embeddings, LM head) in a hook on forward(); training and
    # validation enter through loss(), so that method gets the same hook.
    register_fsdp_forward_method(network, "loss")
