#!/usr/bin/env bash
# Launch `optiml train` on several nodes with torchrun and a c10d rendezvous: run this same line
# on every node (by hand, pdsh, or your scheduler); the agents find each other through the
# rendezvous endpoint on the first node and number the nodes themselves.
#
#   NNODES=16 MASTER_ADDR=node001 tools/launch/torchrun_multinode.sh \
#       recipes/opt-iml-175b.yaml parallel.tp=8 ...
#
# NNODES          nodes in the job (every one runs this script)
# GPUS_PER_NODE   processes per node (default 8: one per GPU)
# MASTER_ADDR     a host every node reaches: the rendezvous store runs there (first node)
# MASTER_PORT     its port (default 29500); open between the nodes
# JOB_ID          the same on every node of one job, different for two jobs sharing hosts
#
# Check the layout first: `optiml plan RECIPE --gpus $((NNODES * GPUS_PER_NODE)) --gpu ...` and
# `optiml train --dry-run RECIPE --gpus ...`. docs/launch.md has the rest.
set -euo pipefail
: "${NNODES:?set NNODES}" "${MASTER_ADDR:?set MASTER_ADDR}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
MASTER_PORT="${MASTER_PORT:-29500}"
JOB_ID="${JOB_ID:-optiml-$MASTER_ADDR-$MASTER_PORT}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=nccl_env.sh
source "$here/nccl_env.sh"

exec torchrun \
    --nnodes "$NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" \
    --rdzv-id "$JOB_ID" \
    --max-restarts 0 \
    -m optiml_engine train "$@"
