#!/usr/bin/env bash
# Several nodes with torchrun's c10d rendezvous. Run this same command on every node:
#   NNODES=4 RDZV_HOST=node001 launch/multi_node_torchrun.sh configs/paper/deltanet_1.3b_neg.yaml \
#       train.deepspeed=configs/deepspeed/zero3.json
# NNODES (required), RDZV_HOST (required: a host every node reaches), RDZV_PORT (default 29400), NPROC_PER_NODE
# (default: the GPU count), RDZV_ID (default: the config's name). out_dir must be on a filesystem all nodes share.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: NNODES=N RDZV_HOST=host launch/multi_node_torchrun.sh CONFIG.yaml [key=value ...]}
shift
: "${NNODES:?set NNODES to the number of nodes}" "${RDZV_HOST:?set RDZV_HOST to the rendezvous host}"
PY=${PYTHON:-python}
nproc=${NPROC_PER_NODE:-$(nvidia-smi -L | wc -l)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec $PY -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$nproc" \
    --rdzv_backend c10d --rdzv_endpoint "$RDZV_HOST:${RDZV_PORT:-29400}" \
    --rdzv_id "${RDZV_ID:-$(basename "$config" .yaml)}" train.py --config "$config" "$@"
