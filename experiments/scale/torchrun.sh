#!/usr/bin/env bash
# Multi-node DDP with torchrun: run this script once on every node, with the same CONFIG and arguments.
#
#   CONFIG=experiments/stage1_corpus.yaml NNODES=4 NODE_RANK=K MASTER_ADDR=node0 \
#     experiments/scale/torchrun.sh --data.init_args.data_dir /shared/data/cc12m
#
# Environment (what torchrun needs to find the other nodes):
#   CONFIG          the run config (experiments/stage1_corpus.yaml, ...)
#   STRATEGY        the strategy overlay composed after it (default experiments/scale/ddp.yaml; or fsdp2.yaml)
#   NNODES          nodes in the job
#   NODE_RANK       this node: 0 .. NNODES-1 (node 0 hosts the rendezvous)
#   MASTER_ADDR     node 0's address, reachable from every node
#   MASTER_PORT     a free TCP port on node 0 (default 29500)
#   NPROC_PER_NODE  processes per node: one per GPU (default gpu = every GPU of the node)
#   PYTHON          the interpreter with genlip_lit installed (default python)
# Arguments after the script go to `genlip fit` (--trainer.max_steps 1000, --distributed.timeout 1200, ...).
#
# Every node must see the same data_dir (shared filesystem or s3://...) and the same run directory
# (trainer.logger.init_args.save_dir: rank 0 writes the checkpoints there, every rank reads them on --ckpt_path,
# and a rank that loses its peers writes rank<R>-error.log there). docs/multinode.md.
set -euo pipefail
: "${CONFIG:?set CONFIG to the run config, e.g. experiments/stage1_corpus.yaml}"
: "${NNODES:?set NNODES to the number of nodes}"
: "${NODE_RANK:?set NODE_RANK to this node's index (0 .. NNODES-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR to node 0's address}"
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_PER_NODE=${NPROC_PER_NODE:-gpu}
DEVICES=${NPROC_PER_NODE/gpu/auto}   # Lightning's devices per node: torchrun's process count

exec "${PYTHON:-python}" -m torch.distributed.run \
  --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  -m genlip_lit.cli fit --config "$CONFIG" --config "${STRATEGY:-experiments/scale/ddp.yaml}" \
  --trainer.num_nodes "$NNODES" --trainer.devices "$DEVICES" "$@"
