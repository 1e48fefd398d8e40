#!/usr/bin/env bash
# Launch on 128 node(s) x 8 GPUs: run on every node with NODE_RANK and
# MASTER_ADDR set, from the Megatron-LM checkout. Add your data, tokenizer and checkpoint arguments.
# megatron/training/arguments.py validate_args: tensor or context parallelism needs one CUDA connection
# per device (kernel order for the overlapped collectives)
export CUDA_DEVICE_MAX_CONNECTIONS=1
source "$(dirname "$0")/megatron_args.sh"
torchrun --nnodes 128 --nproc-per-node 8 --node-rank "${NODE_RANK:-0}" --master-addr "${MASTER_ADDR:-localhost}" --master-port 6000 \
    pretrain_gpt.py "${MEGATRON_ARGS[@]}" "$@"
