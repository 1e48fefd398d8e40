# NOTE: the best plan cannot be written for Megatron-LM: ZeRO-3 cannot be expressed in Megatron-LM arguments (its distributed optimizer is ZeRO-1); nearest expressible plan: ZeRO-1, e.g. rerun with --zero 0,1. Written instead: the fastest Megatron-LM-expressible plan among the best 5 of a search over that part of the space, predicted 17.047 s per step vs 15.362 s (+11.0%)
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
