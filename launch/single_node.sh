#!/usr/bin/env bash
# One node, all its GPUs (or N CPU processes), torchrun. Extra arguments are config overrides.
#   launch/single_node.sh configs/paper/deltanet_340m_neg.yaml train.deepspeed=configs/deepspeed/zero2.json
# NPROC (default: the node's GPU count, else 2) and MASTER_PORT (default: a free port) may be set.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launch/single_node.sh CONFIG.yaml [key=value ...]}
shift
PY=${PYTHON:-python}
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
nproc=${NPROC:-$([ "${gpus:-0}" -gt 0 ] && echo "$gpus" || echo 2)}
port=${MASTER_PORT:-$($PY -c "from trainer.distributed import free_port; print(free_port())")}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec $PY -m torch.distributed.run --standalone --nproc_per_node "$nproc" --master_port "$port" \
    train.py --config "$config" "$@"
