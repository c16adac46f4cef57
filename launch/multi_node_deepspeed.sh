#!/usr/bin/env bash
# Several nodes with the deepspeed launcher (passwordless ssh from this node to every host in the hostfile):
#   HOSTFILE=launch/hostfile.example launch/multi_node_deepspeed.sh configs/paper/deltanet_1.3b_neg.yaml \
#       train.deepspeed=configs/deepspeed/zero3.json
# The launcher starts every process itself; run it on one node only. out_dir must be on a shared filesystem.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: HOSTFILE=path launch/multi_node_deepspeed.sh CONFIG.yaml [key=value ...]}
shift
: "${HOSTFILE:?set HOSTFILE (lines of 'hostname slots=GPUS'; see launch/hostfile.example)}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec deepspeed --hostfile "$HOSTFILE" --master_port "${MASTER_PORT:-29500}" \
    train.py --config "$config" "$@"
