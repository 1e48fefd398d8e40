#!/bin/bash
# The form of Megatron-LM's earlier launch examples (examples/pretrain_gpt_distributed_with_mp.sh, 2023):
# arguments in quoted variables, expanded unquoted on the torchrun line. Written for these tests.
GPUS_PER_NODE=8
NNODES=128
TP=8
PP=16
DISTRIBUTED_ARGS="--nproc_per_node $GPUS_PER_NODE --nnodes $NNODES --node_rank $NODE_RANK"

GPT_ARGS="
    --tensor-model-parallel-size $TP \
    --pipeline-model-parallel-size $PP \
    --sequence-parallel \
    --num-layers 96 \
    --hidden-size 12288 \
    --num-attention-heads 96 \
    --seq-length 2048 \
    --max-position-embeddings 2048 \
    --micro-batch-size 1 \
    --global-batch-size 1536 \
    --lr 0.00015 \
    --train-iters 500000 \
    --bf16
"

DATA_ARGS="
    --data-path $DATA_PATH \
    --vocab-file $VOCAB_FILE \
    --split 949,50,1
"

torchrun $DISTRIBUTED_ARGS pretrain_gpt.py \
    $GPT_ARGS \
    $DATA_ARGS \
    --save $CHECKPOINT_PATH
