# Environment for a multi-node NCCL job: source it on every node before torchrun
# (`source tools/launch/nccl_env.sh`). Values marked CLUSTER depend on the machines: ask the
# cluster's documentation (`ibstat`, `ip -br link` show the names). docs/launch.md explains each.

# Which network interface NCCL's bootstrap and the c10d rendezvous use (CLUSTER): the one the
# nodes reach each other on, e.g. eth0, ens, ib0. Prefixes work ("ens" matches ens1f0).
export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-eth0}"
export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-$NCCL_SOCKET_IFNAME}"

# InfiniBand HCAs to use across nodes (CLUSTER), one per GPU on A100/H100 nodes; unset lets
# NCCL pick them all. Set NCCL_IB_DISABLE=1 only on clusters without InfiniBand/RoCE.
# export NCCL_IB_HCA=mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_7
# GPUDirect RDMA between the NIC and GPU memory when they share a PCIe switch.
export NCCL_NET_GDR_LEVEL="${NCCL_NET_GDR_LEVEL:-PHB}"

# A rank that hits a NCCL error or a hang tears the job down (instead of hanging until the
# scheduler's limit): the process-group timeout is parallel.timeout_minutes in the recipe.
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
# On a timeout, each rank dumps its last collectives (torch's flight recorder) to files named
# by TORCH_NCCL_DEBUG_INFO_TEMP_FILE (default /tmp/nccl_trace_rank_<rank>); read them with
# `python -m torch.distributed.flight_recorder.fr_trace DIR` to see which rank hung where.
export TORCH_NCCL_TRACE_BUFFER_SIZE="${TORCH_NCCL_TRACE_BUFFER_SIZE:-2000}"
export TORCH_NCCL_DUMP_ON_TIMEOUT="${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}"

# Warnings only; INFO prints the rings and transports chosen (check NVLink and IB are used).
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

# One CPU thread per rank for intra-op work unless set: 8 ranks x all cores oversubscribe.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
