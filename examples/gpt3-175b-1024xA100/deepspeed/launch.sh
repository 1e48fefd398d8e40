#!/usr/bin/env bash
# DeepSpeed launch for gpt3-175b on 1024 x A100-80GB (128 nodes x 8), written by llm-planner (plan --emit)
# targets: DeepSpeed 0.19
# plan: TP 1 x PP 16 x DP 64, micro-batch 1 (24 per step), ZeRO-1 (distributed optimizer), full recompute
# note: DeepSpeed recomputes every layer or none: the plan's fully recomputed layers per stage [3, 4, 4, 4, 4, 1, 1, 2, 0, 1, 0, 0, 0, 0, 0, 0] become all layers
# note: DeepSpeed's PipelineModule balances the transformer layers: layers per stage [5, 6, 6, 6, 6, 5, 5, 6, 5, 6, 6, 6, 7, 7, 7, 7] become [6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6]
# note: predicted step time of the plan written: 33.469 s (the plan asked for: 28.608 s, +17.0%)
# Set in train.py (DeepSpeed takes the stage count from code, not from ds_config.json):
#   pipeline: deepspeed.pipe.PipelineModule(layers, num_stages=16, partition_method='type:<your transformer layer class>'), which gives layers per stage [6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6]; ds_config['pipeline']['stages'] records the count for the script to read, while its activation_checkpoint_interval is applied by DeepSpeed's pipeline engine itself (deepspeed/runtime/pipe/engine.py)
# Run with a hostfile listing the nodes (deepspeed --hostfile) on more than one node.
deepspeed --num_nodes 128 --num_gpus 8 train.py --deepspeed --deepspeed_config "$(dirname "$0")/ds_config.json" "$@"
