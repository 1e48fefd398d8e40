# Megatron-LM pretrain_gpt.py arguments for gpt3-175b on 1024 x A100-80GB (128 nodes x 8), written by llm-planner (plan --emit)
# plan: TP 4 x PP 8 x DP 32, micro-batch 2 (24 per step), interleaved 1F1B, 8 chunks per stage, ZeRO-1 (distributed optimizer), no recompute, sequence parallel
MEGATRON_ARGS=(
    --num-layers 96
    --hidden-size 12288
    --ffn-hidden-size 49152
    --num-attention-heads 96
    --seq-length 2048
    --max-position-embeddings 2048
    --position-embedding-type learned_absolute
    --tensor-model-parallel-size 4 --pipeline-model-parallel-size 8
    --sequence-parallel
    --pipeline-model-parallel-layout "Et*2|,(t*2|)*31,(t|)*31,tL"
    --micro-batch-size 2 --global-batch-size 1536
    --use-distributed-optimizer
    --optimizer adam
    --fp16
    --attention-backend flash
)
