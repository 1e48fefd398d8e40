# Megatron-LM pretrain_gpt.py arguments for gpt3-175b on 1024 x A100-80GB (128 nodes x 8), written by llm-planner (plan --emit)
# targets: Megatron-LM core_r0.16 (megatron-core 0.16)
# plan: TP 4 x PP 4 x DP 64, micro-batch 1 (24 per step), interleaved 1F1B, 8 chunks per stage, ZeRO-1 (distributed optimizer), no recompute, sequence parallel
MEGATRON_ARGS=(
    --num-layers 96
    --hidden-size 12288
    --ffn-hidden-size 49152
    --num-attention-heads 96
    --seq-length 2048
    --max-position-embeddings 2048
    --position-embedding-type learned_absolute
    --tensor-model-parallel-size 4 --pipeline-model-parallel-size 4
    --sequence-parallel
    --num-layers-per-virtual-pipeline-stage 3
    --micro-batch-size 1 --global-batch-size 1536
    --use-distributed-optimizer
    --overlap-grad-reduce --overlap-param-gather
    --optimizer adam
    --fp16
    --attention-backend flash
)
