"""Exported configs: the frameworks' own config classes accept them (DeepSpeedConfig, Megatron-core's
TransformerConfig / OptimizerConfig; skipped without the `frameworks` extra), importing an export gives
back the same strategy and predicted step time, and the CLI's --emit / --out / `plan import`."""
from __future__ import annotations

import ast
import dataclasses
import json
import re
import sys
import tomllib
from pathlib import Path
from unittest import mock

import pytest

import planner
from costmodels.presets import get_model
from costmodels.strategy import Strategy
from hardware import parse_cluster
from planner.cli import main
from planner.frameworks.api import export, export_best, nearest_layout, unsupported
from planner.frameworks.base import ConfigImportError, ExportError, canonical, chunks, strategy_from_plan
from planner.frameworks.deepspeed import deepspeed_config, deepspeed_split, read_deepspeed_config
from planner.frameworks.megatron import (megatron_args, megatron_layout_string, megatron_recompute_layers,
                                         megatron_recomputed, parse_megatron_args, read_megatron_args)
from planner.frameworks.torchtitan import torchtitan_config
from planner.solve.optimize import default_global_batch, evaluate_strategy
from planner.solve.space import SpaceOptions

# (model, cluster, search restrictions): small searches whose top-3 plans cover even and uneven stages,
# interleaving, context and expert parallelism, ZeRO 0-3 and partial recompute.
CASES = [
    ("175b", "1024xA100", dict(pp=(8, 16), zero_stage=(0, 1))),
    ("llama3-8b", "64xH100", dict(pp=(2, 4), zero_stage=(1,))),
    ("llama2-70b", "256xH100", dict(pp=(4, 8), zero_stage=(0, 1))),
    ("mixtral", "128xH100", dict(pp=(2, 4), zero_stage=(1,))),
    ("gpt3-13b", "64xA100", dict(tp=(1,), pp=(4,), zero_stage=(0, 1))),
    ("llama3-70b", "512xH100", dict(pp=(8,), zero_stage=(1,), cp=(2,))),
    ("gpt3-2.7b", "32xA100", dict(tp=(1,))),
    ("gpt3-6.7b", "16xA100", dict(tp=(1,), pp=(2, 4), zero_stage=(0, 1))),
    ("llama2-13b", "32xA100", dict(tp=(1,), zero_stage=(2, 3))),
    ("gpt3-1.3b", "4x4xA100", dict(tp=(1,), pp=(1, 2))),
    ("llama2-7b", "32xH100", dict(pp=(2,), zero_stage=(0, 1), recompute=("full",))),
    ("gpt3-350m", "8xA100", dict(tp=(1,), pp=(3, 4, 6), virtual_stages=(1,))),
    ("gpt3-2.7b", "16xA100", dict(tp=(1,), zero_stage=(3,))),
]


def _plans():
    out = []
    for name, gpus, kw in CASES:
        model, _ = get_model(name)
        cluster = parse_cluster(gpus)
        opts = SpaceOptions(global_batch=default_global_batch(model, cluster), precision=model.precision, **kw)
        for p in planner.search(model, cluster, top=3, space=opts).plans:
            out.append((model, cluster, strategy_from_plan(p.strategy), p.step_time_s))
    return out


@pytest.fixture(scope="module")
def plans():
    return _plans()


def _spread(model_name="gpt3-2.7b", gpus="32xA100"):
    """Hand-made DeepSpeed-expressible plans: ZeRO 0-3, optimizer and parameter offload, bf16/fp16/fp32,
    pipeline stages with and without recompute, SGD."""
    model, _ = get_model(model_name)
    c = parse_cluster(gpus)
    base = dict(global_batch=256, recompute="none", precision="bf16")
    sts = [Strategy(dp=32, micro_batch=2, zero_stage=z, **base) for z in (0, 1, 2, 3)]
    sts += [Strategy(dp=32, micro_batch=1, zero_stage=z, offload_optimizer=True, **{**base, "precision": "fp16"})
            for z in (1, 2, 3)]
    sts += [Strategy(dp=32, micro_batch=4, zero_stage=3, offload_optimizer=True, offload_params=True, **base),
            Strategy(dp=32, micro_batch=1, zero_stage=2, **{**base, "recompute": "full", "precision": "fp32"}),
            Strategy(dp=32, micro_batch=2, zero_stage=1, optimizer="sgd", **base),
            Strategy(dp=32, micro_batch=2, zero_stage=1, fp32_grads=False, **base),
            Strategy(pp=4, dp=8, micro_batch=2, zero_stage=1, stage_layers=(8, 8, 8, 8), **{**base, "recompute": "full"}),
            Strategy(pp=2, dp=16, micro_batch=1, zero_stage=0, stage_layers=(16, 16), **base)]
    return model, c, sts


# ---- round trip ---------------------------------------------------------------------------------------

def _import(fw, ex, model, cluster):
    if fw == "megatron":
        model2, st = read_megatron_args(ex.files["megatron_args.sh"], model, cluster)
        assert model2 == model
        return st
    if fw == "torchtitan":
        from planner.frameworks.torchtitan import read_torchtitan_config
        return read_torchtitan_config(ex.files["job.toml"], model, cluster)
    return read_deepspeed_config(ex.files["ds_config.json"], model, cluster)


def test_round_trip_gives_the_same_strategy_and_step_time(plans):
    exact = 0
    seen = set()
    for model, cluster, st, step in plans:
        for fw in ("megatron", "deepspeed", "torchtitan"):
            if unsupported(fw, model, st):
                continue
            ex = export("torchtitan@0.2" if fw == "torchtitan" else fw, model, st, cluster)   # 0.2: TOML, readable
            back = _import(fw, ex, model, cluster)
            assert back == ex.strategy, (fw, model.name, st)
            again = evaluate_strategy(model, cluster, back).plans[0].step_time_s
            assert again == pytest.approx(ex.step_time_s, rel=1e-12)
            if ex.strategy == canonical(model, st.with_(framework=fw)):   # expressible as it was: nothing changed
                assert not ex.notes
                if fw == "megatron":      # the search priced it in Megatron-core's accounting
                    assert again == pytest.approx(step, rel=1e-9)
                exact += 1
                seen.add((model.name, fw, st.pp > 1, st.virtual_stages > 1, st.cp > 1, st.ep > 1, st.zero_stage,
                          st.recompute))
    assert exact >= 30, exact
    assert {s[1] for s in seen} == {"megatron", "deepspeed", "torchtitan"}
    assert any(s[3] for s in seen) and any(s[4] for s in seen) and any(s[5] for s in seen)   # vpp, cp, ep
    assert {s[6] for s in seen} >= {0, 1, 2, 3}


def test_deepspeed_spread_round_trips():
    model, c, sts = _spread()
    for st in sts:
        ex = export("deepspeed", model, st, c)
        assert not ex.notes
        assert read_deepspeed_config(ex.files["ds_config.json"], model, c) == canonical(model, st.with_(framework="deepspeed"))


# ---- Megatron arguments ---------------------------------------------------------------------------

def test_megatron_layout_string_and_its_stages():
    s = megatron_layout_string([7, 8, 8, 7], 2)
    assert s == "Et*4|,(t*4|)*3,t*3|,(t*4|)*2,t*3L"   # chunk 0 of stages 0-3, then chunk 1
    # chunk c of stage i is entry c * pp + i; stage layers are the sums of their chunks
    assert chunks(7, 2) == [4, 3] and chunks(8, 3) == [3, 3, 2]
    args = parse_megatron_args(f'--pipeline-model-parallel-layout "{s}" --num-layers 30')
    from planner.frameworks.megatron import megatron_stage_layers
    assert megatron_stage_layers(args, 30, 4) == ([7, 8, 8, 7], 2)


def test_megatron_uses_first_last_flags_when_only_the_ends_differ():
    model, _ = get_model("gpt3-13b")     # 40 layers
    st = Strategy(pp=4, dp=2, global_batch=8, recompute="none", stage_layers=(8, 11, 11, 10))
    flat = [t for g in megatron_args(model, st) for t in g]
    assert "--decoder-first-pipeline-num-layers" in flat and flat[flat.index("--decoder-first-pipeline-num-layers") + 1] == "8"
    assert flat[flat.index("--decoder-last-pipeline-num-layers") + 1] == "10"
    assert "--pipeline-model-parallel-layout" not in flat
    uneven = st.with_(stage_layers=(10, 9, 11, 10))
    flat = [t for g in megatron_args(model, uneven) for t in g]
    assert "--pipeline-model-parallel-layout" in flat


def test_megatron_recompute_count_is_one_per_stage():
    # block recompute of N layers per model chunk (transformer_block.py): stages of 8 layers, 2 chunks
    assert megatron_recomputed([8, 8], 2, 3) == [6, 6]
    assert megatron_recompute_layers([8, 8], [6, 6], 2) == 3
    assert megatron_recompute_layers([10, 10, 10], [4, 2, 0], 1) == 4   # not expressible: the max
    model, _ = get_model("gpt3-13b")
    st = Strategy(pp=4, dp=2, global_batch=8, recompute="full", stage_layers=(10, 10, 10, 10),
                  recompute_layers=(4, 2, 0, 0))
    near, notes = nearest_layout("megatron", model, st)
    assert near.recompute_layers == (4, 4, 4, 4) and "[4, 2, 0, 0] become [4, 4, 4, 4]" in notes[0]
    ex = export("megatron", model, st, parse_cluster("8xA100"))
    assert "--recompute-method block --recompute-num-layers 4" in ex.files["megatron_args.sh"]
    assert ex.strategy == near and any("predicted step time of the plan written" in n for n in ex.notes)


def test_megatron_refuses_what_it_cannot_express():
    model, _ = get_model("gpt3-2.7b")
    z3 = Strategy(dp=32, global_batch=256, zero_stage=3, recompute="none")
    with pytest.raises(ExportError, match=r"ZeRO-3 .*--zero 0,1"):
        export("megatron", model, z3, parse_cluster("32xA100"))
    with pytest.raises(ExportError, match="parameter offload"):
        export("megatron", model, z3.with_(offload_optimizer=True, offload_params=True), parse_cluster("32xA100"))
    with pytest.raises(ExportError, match="GPipe"):
        export("megatron", model, Strategy(pp=2, dp=16, global_batch=256, pipeline_schedule="gpipe"),
               parse_cluster("32xA100"))


def test_megatron_import_checks_the_model_and_the_gpus():
    model, _ = get_model("gpt3-13b")
    c = parse_cluster("64xA100")
    with pytest.raises(ConfigImportError, match=r"--num-layers 48 does not match --model gpt3-13b \(40\)"):
        read_megatron_args("--num-layers 48 --tensor-model-parallel-size 1", model, c)
    with pytest.raises(ConfigImportError, match="does not divide the 64 GPUs"):
        read_megatron_args("--tensor-model-parallel-size 3", model, c)
    m2, st = read_megatron_args("torchrun --nnodes 8 pretrain_gpt.py --tensor-model-parallel-size 8 "
                                "--seq-length 4096 --micro-batch-size 2 --global-batch-size 64 --bf16 "
                                "--recompute-activations", model, c)
    assert (m2.seq_len, st.tp, st.dp, st.micro_batch, st.precision, st.recompute) == (4096, 8, 8, 2, "bf16", "selective")


# ---- DeepSpeed config -------------------------------------------------------------------------------

def test_deepspeed_config_values():
    model, _ = get_model("gpt3-2.7b")
    st = Strategy(pp=4, dp=8, micro_batch=2, global_batch=256, zero_stage=1, recompute="full",
                  stage_layers=(8, 8, 8, 8), offload_optimizer=True)
    cfg = deepspeed_config(model, st)
    assert cfg["train_batch_size"] == 256 == 2 * cfg["gradient_accumulation_steps"] * 8
    # deepspeed/runtime/zero/config.py keys; the bucket sizes the plan's memory counts, written out
    assert cfg["zero_optimization"] == {"stage": 1, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                        "contiguous_gradients": True, "reduce_bucket_size": 500_000_000,
                                        "allgather_bucket_size": 500_000_000}
    assert cfg["pipeline"] == {"stages": 4, "activation_checkpoint_interval": 1}
    assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg


def test_deepspeed_refuses_and_adjusts():
    model, _ = get_model("gpt3-2.7b")      # 32 layers
    c = parse_cluster("32xA100")
    with pytest.raises(ExportError, match="Megatron-DeepSpeed"):
        export("deepspeed", model, Strategy(tp=2, dp=16, global_batch=256, recompute="none"), c)
    with pytest.raises(ExportError, match="context parallelism"):
        export("deepspeed", model, Strategy(cp=2, dp=16, global_batch=256, recompute="none"), c)
    with pytest.raises(ExportError, match="interleaved"):
        export("deepspeed", model, Strategy(pp=2, dp=16, global_batch=256, recompute="none", virtual_stages=2), c)
    with pytest.raises(ExportError, match="selective"):
        export("deepspeed", model, Strategy(dp=32, global_batch=256), c)
    uneven = Strategy(pp=3, dp=8, global_batch=256, recompute="full", stage_layers=(10, 11, 11),
                      recompute_layers=(2, 1, 0))
    ex = export("deepspeed", model, uneven, parse_cluster("24xA100"))
    assert ex.strategy.stage_layers == (11, 11, 10) == tuple(deepspeed_split(32, 3))
    assert ex.strategy.recompute == "full" and ex.strategy.recompute_layers is None
    assert len(ex.notes) == 3


def test_deepspeed_import_checks_the_batch():
    model, _ = get_model("gpt3-2.7b")
    with pytest.raises(ConfigImportError, match=r"train_batch_size 100 is not .* = 2 x 4 x 32"):
        read_deepspeed_config({"train_batch_size": 100, "train_micro_batch_size_per_gpu": 2,
                               "gradient_accumulation_steps": 4}, model, parse_cluster("32xA100"))


# ---- torchtitan job config -------------------------------------------------------------------------------

def test_torchtitan_toml_parses_and_matches_the_plan():
    model, _ = get_model("llama3-8b")     # 32 layers
    c = parse_cluster("64xH100")
    st = Strategy(tp=2, pp=4, dp=8, micro_batch=1, global_batch=256, recompute="full", virtual_stages=2,
                  stage_layers=(7, 9, 8, 8))
    ex = export("torchtitan@0.2", model, st, c)
    doc = tomllib.loads(ex.files["job.toml"])
    par = doc["parallelism"]
    assert (doc["model"]["name"], doc["model"]["flavor"]) == ("llama3", "8B")
    assert par["tensor_parallel_degree"] * par["pipeline_parallel_degree"] * par["data_parallel_replicate_degree"] \
        * par["data_parallel_shard_degree"] * par["context_parallel_degree"] == 64
    assert par["pipeline_parallel_schedule"] == "Interleaved1F1B"
    parts = par["module_fqns_per_model_part"]
    assert len(parts) == 8 and parts[0][0] == "tok_embeddings" and parts[-1][-2:] == ["norm", "output"]
    layers = [int(m.split(".")[1]) for part in parts for m in part if m.startswith("layers.")]
    assert layers == list(range(32))
    per_stage = [sum(len([m for m in parts[k * 4 + i] if m.startswith("layers.")]) for k in range(2)) for i in range(4)]
    assert per_stage == [7, 9, 8, 8]
    assert doc["training"]["local_batch_size"] * 8 == 256 and par["pipeline_parallel_microbatch_size"] == 1
    assert doc["activation_checkpoint"]["mode"] == "full"
    fp8 = torchtitan_config(model, st.with_(precision="fp8"))
    assert fp8["model"]["converters"] == ["quantize.linear.float8"]
    with pytest.raises(ExportError, match="ZeRO-1"):
        export("torchtitan", model, st.with_(zero_stage=1), c)


def _tt03_kwargs(job: str) -> dict[str, dict]:
    """The literal keyword arguments of the TrainingConfig(...) and ParallelismConfig(...) calls in a job.py."""
    out = {}
    for node in ast.walk(ast.parse(job)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.endswith("Config"):
            out[node.func.id] = {k.arg: ast.literal_eval(k.value) for k in node.keywords
                                 if not isinstance(k.value, ast.Attribute)}
    return out


TT03_PLANS = [
    # (model, cluster, strategy): interleaved PP with FSDP, plain data parallel, TP with FP8, a model with no
    # torchtitan config function (GPT-3 13B: starts from llama3_8b and says so)
    ("llama3-8b", "64xH100", Strategy(tp=2, pp=4, dp=8, micro_batch=1, global_batch=256, recompute="full",
                                      virtual_stages=2, zero_stage=3, stage_layers=(7, 9, 8, 8))),
    ("llama3-8b", "8xH100", Strategy(dp=8, micro_batch=2, global_batch=64, zero_stage=0, recompute="selective")),
    ("llama3-70b", "64xH100", Strategy(tp=8, dp=8, micro_batch=1, global_batch=64, zero_stage=2, recompute="full",
                                       precision="fp8")),
    ("gpt3-13b", "16xA100", Strategy(tp=2, dp=8, micro_batch=1, global_batch=64, zero_stage=3, recompute="none")),
]


@pytest.mark.parametrize("name, gpus, st", TT03_PLANS, ids=lambda x: x if isinstance(x, str) else "")
def test_torchtitan_03_config_function_matches_the_plan(name, gpus, st):
    """torchtitan 0.3 reads a config function (--module job --config plan): job.py starts from torchtitan's own
    function for the model, writes the plan's degrees, batches and recompute over it, turns off the 405B preset's
    compile and float8 for a 16-bit plan, and disables CUDA graphs under pipeline parallelism (0.3 refuses them
    there); module names of pipeline parts follow 0.3's tree (lm_head, not output)."""
    model, c = get_model(name)[0], parse_cluster(gpus)
    ex = export("torchtitan", model, st.with_(framework="torchtitan"), c)
    job = ex.files["job.py"]
    kw = _tt03_kwargs(job)
    par, tr = kw["ParallelismConfig"], kw["TrainingConfig"]
    s = ex.strategy
    assert (par["tensor_parallel_degree"], par["pipeline_parallel_degree"], par["context_parallel_degree"]) == (s.tp, s.pp, s.cp)
    assert par["data_parallel_replicate_degree"] * par["data_parallel_shard_degree"] == s.dp
    assert (par["data_parallel_shard_degree"] > 1) == (s.zero_stage >= 2)
    assert tr["global_batch_size"] == s.global_batch and tr["seq_len"] == model.seq_len
    if s.pp > 1:
        assert tr["disable_cuda_graphs"] is True and par["pipeline_parallel_microbatch_size"] == s.micro_batch
        parts = par["module_fqns_per_model_part"]
        assert parts[-1][-2:] == ["norm", "lm_head"] and len(parts) == s.pp * s.virtual_stages
    else:
        assert tr["local_batch_size"] == s.micro_batch
    assert f"CompileConfig(enable={s.precision == 'fp8'})" in job
    assert ("Float8LinearConverter.Config" in job.split("def plan")[1]) == (s.precision == "fp8")
    ac = {"none": "= None", "full": "= FullAC.Config()", "selective": "= SelectiveAC.Config()"}[s.recompute]
    assert f"cfg.activation_checkpoint {ac}" in job
    assert ("starts from llama3_8b" in job) == (name == "gpt3-13b")
    assert "--module job --config plan" in ex.files["launch.sh"]


# torchtitan builds float8 linears (torchao) only on an SM89+ GPU, so on CPU the fp8 plan is checked by the
# structural test above alone
@pytest.mark.parametrize("name, gpus, st", [p for p in TT03_PLANS if p[2].precision != "fp8"],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_torchtitan_03_loads_the_config_function(name, gpus, st, tmp_path, monkeypatch):
    """torchtitan 0.3's own ConfigManager parses job.py as `torchtitan.train --module job --config plan` would,
    and its ParallelDims accepts the degrees for the cluster's GPUs (torchtitan 0.3 and triton come with the
    frameworks extra that CI installs)."""
    tt = pytest.importorskip("torchtitan.config.manager")
    parallel_dims = pytest.importorskip("torchtitan.distributed.parallel_dims")
    model, c = get_model(name)[0], parse_cluster(gpus)
    ex = export("torchtitan", model, st.with_(framework="torchtitan"), c)
    (tmp_path / "job.py").write_text(ex.files["job.py"])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "job", raising=False)      # each plan's own job.py
    cfg = tt.ConfigManager().parse_args(["--module", "job", "--config", "plan"])
    assert cfg.parallelism.tensor_parallel_degree == ex.strategy.tp
    assert cfg.training.global_batch_size == ex.strategy.global_batch
    dims = parallel_dims.ParallelDims.from_config(cfg.parallelism, world_size=c.num_gpus)
    assert dims.tp * dims.pp * dims.dp_shard * dims.dp_replicate * dims.cp == c.num_gpus


BRIDGE_PLANS = [
    ("llama3-70b", "64xH100", Strategy(tp=4, pp=4, dp=4, micro_batch=1, global_batch=512, zero_stage=1,
                                       recompute="none", virtual_stages=5)),
    ("llama3-8b", "16xH100", Strategy(tp=2, pp=2, dp=4, micro_batch=2, global_batch=256, zero_stage=1,
                                      recompute="full", precision="fp8", stage_layers=(15, 17))),
    ("mixtral-8x7b", "64xH100", Strategy(tp=2, pp=4, dp=8, ep=8, micro_batch=1, global_batch=256, zero_stage=1,
                                         recompute="selective", moe_dispatcher="deepep")),
    ("gpt3-13b", "32xA100", Strategy(tp=4, dp=8, micro_batch=1, global_batch=256, zero_stage=0, recompute="selective",
                                     precision="fp16")),
]
# Megatron-Bridge 0.3 names outside megatron-core: TrainingConfig's batch fields, GPTModelProvider's seq_length
# (its recipes set cfg.model.seq_length, recipes/llama/llama3.py) and the mixed-precision recipes it registers
# (megatron/bridge/training/config.py TrainingConfig; mixed_precision.py @register functions)
BRIDGE_TRAIN_FIELDS = {"micro_batch_size", "global_batch_size"}
BRIDGE_MODEL_FIELDS = {"seq_length"}
BRIDGE_PRECISIONS = {"bf16_mixed", "fp16_mixed", "bf16_with_fp8_delayed_scaling_mixed", "bf16_with_mxfp8_mixed",
                     "bf16_with_fp8_current_scaling_mixed", "bf16_with_fp8_subchannel_scaling_mixed", None}


@pytest.mark.parametrize("name, gpus, st", BRIDGE_PLANS, ids=lambda x: x if isinstance(x, str) else "")
def test_bridge_job_sets_megatron_core_fields_the_megatron_export_sets(name, gpus, st):
    """--emit bridge: Megatron-Bridge's own recipe with the plan's settings written over it. Every model.* /
    ddp.* / optimizer.* field it sets is a field of megatron-core's TransformerConfig, DistributedDataParallelConfig
    or OptimizerConfig (Megatron-Bridge's configs extend them; megatron-core 0.16 installed with the frameworks
    extra), with the value the Megatron-LM export writes for the same plan; a model without a recipe gets its
    shape written too."""
    import dataclasses as dc
    tc = pytest.importorskip("megatron.core.transformer.transformer_config")
    ddp = pytest.importorskip("megatron.core.distributed.distributed_data_parallel_config")
    opt = pytest.importorskip("megatron.core.optimizer.optimizer_config")
    from planner.frameworks.bridge import bridge_settings
    model, c = get_model(name)[0], parse_cluster(gpus)
    ex = export("bridge", model, st, c)
    job = ex.files["bridge_job.py"]
    ast.parse(job)
    fields = {"model": {f.name for f in dc.fields(tc.TransformerConfig)} | BRIDGE_MODEL_FIELDS,
              "ddp": {f.name for f in dc.fields(ddp.DistributedDataParallelConfig)},
              "optimizer": {f.name for f in dc.fields(opt.OptimizerConfig)},
              "train": BRIDGE_TRAIN_FIELDS, "dataset": {"seq_length"}}
    settings = bridge_settings(model, ex.strategy)
    for key, value in settings.items():
        if key == "mixed_precision":
            assert value in BRIDGE_PRECISIONS
            continue
        section, field = key.split(".")
        assert field in fields[section], key
    s = ex.strategy
    assert settings["model.tensor_model_parallel_size"] == s.tp
    assert settings["model.pipeline_model_parallel_size"] == s.pp
    assert settings["train.global_batch_size"] == s.global_batch and settings["train.micro_batch_size"] == s.micro_batch
    assert settings.get("ddp.use_distributed_optimizer", False) == (s.zero_stage == 1)
    # what a recipe sets and the plan does not is written over, so Megatron-Bridge runs this plan and not a mix
    # (checked by benchmarks/check_bridge.py with ConfigContainer.validate(): Llama 3 70B's recipe runs
    # context parallel 2 and sequence parallel, Llama 3.1 405B's counts embedding and loss as pipeline layers,
    # DeepSeek-V3's adds a multi-token-prediction layer and keeps 16-bit Adam moments)
    assert settings["model.context_parallel_size"] == s.cp and settings["model.expert_model_parallel_size"] == s.ep
    assert settings["model.sequence_parallel"] is s.sequence_parallel
    assert settings["ddp.use_distributed_optimizer"] is (s.zero_stage == 1)
    assert settings["model.mtp_num_layers"] is None
    if s.pp > 1:
        assert settings["model.account_for_embedding_in_pipeline_split"] is False
        assert settings["model.account_for_loss_in_pipeline_split"] is False
    assert "cfg.optimizer.exp_avg_dtype = torch.float32" in job and "import torch" in job
    if s.pp > 1 and s.virtual_stages > 1:
        assert settings["model.virtual_pipeline_model_parallel_size"] == s.virtual_stages
    # the same plan as Megatron-LM arguments: both read back to one strategy
    mg = read_megatron_args(export("megatron", model, s, c).files["megatron_args.sh"], model, c)[1]
    assert mg == s.with_(fp8_recipe=mg.fp8_recipe)      # an fp8 plan reads back with its recipe named
    assert ("cfg.model.num_layers = " in job) == (name in ("gpt3-13b", "mixtral-8x7b"))   # no recipe for these
    assert "# targets: Megatron-Bridge 0.3" in job and "pretrain(plan(), forward_step)" in job


def test_framework_tables_name_real_presets():
    """Every model the exporters map to a framework's own recipe, flavor or checkpoint id is a preset (a
    misspelt key would silently fall back to the generic recipe or a placeholder)."""
    from costmodels.presets import PRESETS
    from planner.frameworks.base import HF_IDS
    from planner.frameworks.bridge import RECIPES
    from planner.frameworks.torchtitan import TORCHTITAN_FLAVORS
    for table in (HF_IDS, RECIPES, TORCHTITAN_FLAVORS):
        assert set(table) <= set(PRESETS), set(table) - set(PRESETS)


def test_16bit_gradients_in_every_framework():
    # Megatron-LM arguments.py --grad-reduce-in-bf16; DeepSpeed "data_types": {"grad_accum_dtype": "bf16"}
    # (PR 4713; fp32 is its default); torchtitan training.mixed_precision_reduce. fp16 always keeps an fp32
    # gradient copy in both Megatron-LM and DeepSpeed, so 16-bit-only fp16 accounting is refused.
    model, _ = get_model("llama3-8b")
    c = parse_cluster("64xH100")
    st = Strategy(tp=2, pp=4, dp=8, micro_batch=1, global_batch=256, recompute="full", zero_stage=1,
                  stage_layers=(8, 8, 8, 8))
    for fp32 in (True, False):
        s = st.with_(fp32_grads=fp32)
        ex = export("megatron", model, s, c)
        assert ("--grad-reduce-in-bf16" in ex.files["megatron_args.sh"]) == (not fp32)
        assert read_megatron_args(ex.files["megatron_args.sh"], model, c)[1].fp32_grads == fp32
        ds = deepspeed_config(model, s.with_(tp=1, dp=16))
        assert ds.get("data_types") == (None if fp32 else {"grad_accum_dtype": "bf16"})
        assert read_deepspeed_config(ds, model, c).fp32_grads == fp32
        tt = torchtitan_config(model, s.with_(zero_stage=0))
        assert tt["training"]["mixed_precision_reduce"] == ("float32" if fp32 else "bfloat16")
    for fw in ("megatron", "deepspeed"):
        with pytest.raises(ExportError, match="--grads fp32"):
            export(fw, model, st.with_(tp=1, dp=16, precision="fp16", fp32_grads=False), c)


# ---- search + export ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exports_175b():
    """`plan --model 175b --gpus 1024xA100 --emit megatron|deepspeed`, through the Python API."""
    model, _ = get_model("175b")
    c = parse_cluster("1024xA100")
    opts = SpaceOptions(global_batch=default_global_batch(model, c), precision=model.precision)
    res = planner.search(model, c, top=3, space=opts)
    return model, res, {fw: export_best(fw, model, c, res, opts) for fw in ("megatron", "deepspeed")}


def test_export_best_for_175b_writes_the_best_expressible_plan(exports_175b):
    model, res, exports = exports_175b
    best = strategy_from_plan(res.plans[0].strategy)
    for fw, ex in exports.items():
        assert ex.fits and unsupported(fw, model, ex.strategy) is None
        if unsupported(fw, model, best):      # e.g. ZeRO-3 for Megatron, tp > 1 for DeepSpeed
            assert f"cannot be written for {'Megatron-LM' if fw == 'megatron' else 'DeepSpeed'}" in ex.notes[0]
            assert ex.step_time_s >= res.plans[0].step_time_s
        else:    # the plan itself as the framework writes it, or a runner-up it writes unchanged that is faster
            written = nearest_layout(fw, model, best.with_(framework=fw))[0]
            assert ex.strategy == written or (ex.notes and "another plan it writes unchanged" in ex.notes[0]
                                              and ex.step_time_s <= evaluate_strategy(model, parse_cluster("1024xA100"),
                                                                                       written).plans[0].step_time_s)
    assert exports["megatron"].strategy.zero_stage <= 1 and exports["deepspeed"].strategy.tp == 1


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_cli_emit_json_out_and_import(tmp_path, capsys):
    argv = ["--model", "gpt3-1.3b", "--gpus", "16xA100", "--tp", "1", "--zero", "0,1", "--pp", "2"]
    code, out, err = _run([*argv, "--emit", "megatron", "--format", "json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    emit = doc["plans"][0]["emit"]
    assert emit["framework"] == "megatron" and "--pipeline-model-parallel-size 2" in emit["files"]["megatron_args.sh"]
    code, out, err = _run([*argv, "--emit", "megatron", "--out", tmp_path], capsys)
    assert code == 0, err
    assert f"written: {tmp_path / 'megatron_args.sh'}, {tmp_path / 'launch.sh'}" in out
    code, out, err = _run(["import", "--megatron-args", tmp_path / "megatron_args.sh", "--model", "gpt3-1.3b",
                           "--gpus", "16xA100", "--format", "json"], capsys)
    assert code == 0, err
    imp = json.loads(out)
    assert imp["imported"]["plans"][0]["step_time_s"] == pytest.approx(emit["step_time_s"], rel=1e-12)
    assert imp["speedup"] == pytest.approx(emit["step_time_s"] / imp["best"]["plans"][0]["step_time_s"])
    assert imp["speedup"] >= 1.0 - 1e-9


def test_cli_import_deepspeed_config(tmp_path, capsys):
    argv = ["evaluate", "--model", "gpt3-1.3b", "--gpus", "16xA100", "--zero", "3", "--recompute", "full",
            "--global-batch", "64", "--micro-batch", "2"]
    code, out, err = _run([*argv, "--format", "json"], capsys)
    step = json.loads(out)["plans"][0]["step_time_s"]
    code, out, err = _run([*argv, "--emit", "deepspeed", "--out", tmp_path], capsys)
    assert code == 0, err
    code, out, err = _run(["import", "--deepspeed-config", tmp_path / "ds_config.json", "--model", "gpt3-1.3b",
                           "--gpus", "16xA100"], capsys)
    assert code == 0, err
    assert "Imported plan" in out and f"step time {step:.3f} s" in out and "What would be better" in out


def test_cli_evaluate_emit_deepspeed_table(capsys):
    code, out, err = _run(["evaluate", "--model", "gpt3-1.3b", "--gpus", "16xA100", "--zero", "2", "--recompute",
                           "none", "--global-batch", "64", "--emit", "deepspeed"], capsys)
    assert code == 0, err
    body = out[out.index('"train_batch_size"') - 4:]
    cfg = json.loads(body[:body.index("\n}\n") + 2])
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["train_batch_size"] == 64
    assert "deepspeed --num_nodes 2 --num_gpus 8 train.py" in out


@pytest.mark.parametrize("argv, needle", [
    (["--model", "gpt3-1.3b", "--gpus", "16xA100", "--out", "x"], "--out 'x' needs --emit"),
    (["evaluate", "--model", "gpt3-1.3b", "--gpus", "16xA100", "--emit", "deepspeed"], "selective"),
    (["evaluate", "--model", "gpt3-1.3b", "--gpus", "16xA100", "--zero", "3", "--emit", "megatron"], "ZeRO-3"),
    (["--model", "gpt3-1.3b", "--gpus", "16xA100", "--emit", "flax"], "flax"),
    (["--model", "gpt3-1.3b", "--gpus", "16xA100", "--emit", "megatron@0.9"], "writes for Megatron-LM core_r0.16"),
    (["--model", "gpt3-1.3b", "--gpus", "16xA100", "--emit", "vllm"], "plan serve"),
    (["import", "--model", "gpt3-1.3b", "--gpus", "16xA100"], "exactly one of"),
])
def test_cli_bad_export_input_is_one_line(argv, needle, capsys):
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err


# ---- the frameworks accept them (the `frameworks` extra) ----------------------------------------------------

@pytest.fixture
def ds_config_class(monkeypatch):
    pytest.importorskip("torch")
    cfg_mod = pytest.importorskip("deepspeed.runtime.config")
    # DeepSpeedConfig takes the data-parallel world size from an mpu object; it asks the process's rank
    # first, which needs torch.distributed unless answered here.
    monkeypatch.setattr(cfg_mod.dist, "get_rank", lambda group=None: 0)

    class MPU:
        def __init__(self, dp):
            self.dp = dp

        def get_data_parallel_world_size(self):
            return self.dp

    return lambda config, dp: cfg_mod.DeepSpeedConfig(config, mpu=MPU(dp))


def test_deepspeed_accepts_every_emitted_config(ds_config_class, plans):
    model, c, sts = _spread()
    cases = [(model, c, st) for st in sts]
    cases += [(m, cl, st) for m, cl, st, _ in plans if not unsupported("deepspeed", m, st)]
    assert len(cases) >= 15
    for m, cl, st in cases:
        ex = export("deepspeed", m, st, cl)
        cfg = json.loads(ex.files["ds_config.json"])
        ds = ds_config_class(cfg, ex.strategy.dp)
        s = ex.strategy
        assert (ds.train_batch_size, ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps) == \
            (s.global_batch, s.micro_batch, s.micro_batches)
        assert ds.zero_optimization_stage == s.zero_stage
        assert ds.bfloat16_config.enabled == (s.precision == "bf16") and ds.float16_config.enabled == (s.precision == "fp16")
        off = ds.zero_config.offload_optimizer
        assert (off is not None and off.device == "cpu") == s.offload_optimizer
        assert (ds.zero_config.offload_param is not None) == s.offload_params
        assert ds.pipeline["stages"] == (s.pp if s.pp > 1 else "auto")


def test_deepspeed_accepts_the_175b_export(ds_config_class, exports_175b):
    ex = exports_175b[2]["deepspeed"]
    ds = ds_config_class(json.loads(ex.files["ds_config.json"]), ex.strategy.dp)
    assert ds.train_batch_size == 1536 and ds.zero_optimization_stage == ex.strategy.zero_stage


def test_deepspeed_rejects_broken_configs(ds_config_class):
    model, c, sts = _spread()
    cfg = deepspeed_config(model, sts[1])
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        ds_config_class({**cfg, "train_batch_size": cfg["train_batch_size"] + 1}, 32)
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        ds_config_class(cfg, 16)                       # the wrong data-parallel size
    with pytest.raises(Exception, match="offload_optimiser"):
        ds_config_class({**cfg, "zero_optimization": {"stage": 1, "offload_optimiser": {"device": "cpu"}}}, 32)


# Megatron-LM training flags that are not TransformerConfig fields, and where they go (arguments.py,
# core_transformer_config_from_args); every other emitted flag must name a TransformerConfig field.
_TRAINING_FLAGS = {"--seq-length", "--max-position-embeddings", "--position-embedding-type",
                   "--untie-embeddings-and-output-weights", "--micro-batch-size", "--global-batch-size",
                   "--group-query-attention"}
_OPTIMIZER_FLAGS = {"--use-distributed-optimizer": "use_distributed_optimizer", "--optimizer": "optimizer",
                    "--optimizer-cpu-offload": "optimizer_cpu_offload",
                    "--optimizer-offload-fraction": "optimizer_offload_fraction",
                    "--use-precision-aware-optimizer": "use_precision_aware_optimizer"}


# flags that become DistributedDataParallelConfig fields (megatron/training/training.py get_model)
_DDP_FLAGS = {"--overlap-grad-reduce": "overlap_grad_reduce", "--overlap-param-gather": "overlap_param_gather",
              "--use-distributed-optimizer": "use_distributed_optimizer"}


def megatron_core_configs(model, st):
    """TransformerConfig and OptimizerConfig built from the emitted arguments (as Megatron-LM's
    core_transformer_config_from_args does), naming fields by TransformerConfig's own flag metadata."""
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("torch.nn.functional")
    tc_mod = pytest.importorskip("megatron.core.transformer.transformer_config")
    from megatron.core.optimizer import OptimizerConfig
    from megatron.core.transformer.enums import AttnBackend

    TransformerConfig = tc_mod.TransformerConfig
    by_flag = {}
    for f in dataclasses.fields(TransformerConfig):
        meta = f.metadata.get("argparse_meta", {})
        for flag in meta.get("arg_names", ["--" + f.name.replace("_", "-")]):
            by_flag[flag] = f
    args = parse_megatron_args(" ".join(" ".join(g) for g in megatron_args(model, st)).replace('"', "'"))
    tc, oc, ddp = {}, {}, {}
    for flag, val in args.items():
        if flag in _TRAINING_FLAGS:
            continue
        if flag in _DDP_FLAGS:
            ddp[_DDP_FLAGS[flag]] = True
            if flag != "--use-distributed-optimizer":
                continue
        if flag in _OPTIMIZER_FLAGS:
            oc[_OPTIMIZER_FLAGS[flag]] = float(val) if flag == "--optimizer-offload-fraction" else val
        elif flag == "--swiglu":
            tc.update(gated_linear_unit=True, activation_func=F.silu)
        elif flag == "--num-experts":
            tc["num_moe_experts"] = int(val)
        elif flag == "--moe-layer-freq":
            tc["moe_layer_freq"] = eval(val)   # noqa: S307 - Megatron's moe_freq_type evaluates the same list expression
        elif flag == "--decoder-first-pipeline-num-layers":
            tc["num_layers_in_first_pipeline_stage"] = int(val)
        elif flag == "--decoder-last-pipeline-num-layers":
            tc["num_layers_in_last_pipeline_stage"] = int(val)
        elif flag == "--num-layers-per-virtual-pipeline-stage":
            tc["virtual_pipeline_model_parallel_size"] = model.layers // st.pp // int(val)
        elif flag == "--num-virtual-stages-per-pipeline-rank":
            tc["virtual_pipeline_model_parallel_size"] = int(val)
        elif flag in ("--pipeline-model-parallel-layout", "--attention-backend", "--fp8-format") and flag not in by_flag:
            raise AssertionError(f"{flag} is not a TransformerConfig flag")
        elif flag == "--pipeline-model-parallel-layout":
            tc["pipeline_model_parallel_layout"] = val
        elif flag == "--attention-backend":
            tc["attention_backend"] = AttnBackend[val]
        elif flag == "--fp8-format":
            tc["fp8"] = val
        else:
            assert flag in by_flag, f"{flag} is neither a TransformerConfig field nor a known training flag"
            field = by_flag[flag]
            if val is True:
                tc[field.name] = flag not in ("--disable-bias-linear",)   # the 'disable' flag stores False
            else:
                tc[field.name] = int(val) if re.fullmatch(r"\d+", str(val)) else val
    dtype = torch.bfloat16 if tc.get("bf16") else torch.float16 if tc.get("fp16") else torch.float32
    tc["params_dtype"] = dtype
    if st.pp > 1:
        tc["pipeline_dtype"] = dtype
    occ = sys.modules[OptimizerConfig.__module__]
    with mock.patch.object(occ, "is_te_min_version", _te_min_version):
        opt = OptimizerConfig(bf16=bool(tc.get("bf16")), fp16=bool(tc.get("fp16")), **oc)
    # megatron/training/arguments.py validate_args: the parameter gather overlaps only with the distributed
    # optimizer and with --overlap-grad-reduce
    if ddp.get("overlap_param_gather"):
        assert ddp.get("use_distributed_optimizer") and ddp.get("overlap_grad_reduce"), ddp
    from megatron.core.distributed import DistributedDataParallelConfig
    DistributedDataParallelConfig(**ddp)
    return TransformerConfig(**tc), opt


def _te_min_version(version, *args, **kwargs):
    """--use-precision-aware-optimizer (needed for --optimizer-cpu-offload) asks Transformer Engine's version,
    which a CPU-only megatron-core without TE cannot answer (TypeError); answer as TE >= 2.1 would."""
    from megatron.core import utils

    try:
        return utils.is_te_min_version(version, *args, **kwargs)
    except (TypeError, ImportError):
        return True


def test_megatron_core_accepts_every_emitted_plan(plans):
    pytest.importorskip("megatron.core")
    n = 0
    for model, cluster, st, _ in plans:
        if unsupported("megatron", model, st) or st.precision == "fp8":
            continue
        ex = export("megatron", model, st, cluster)
        s = ex.strategy
        cfg, opt = megatron_core_configs(model, s)
        n += 1
        assert (cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, cfg.context_parallel_size,
                cfg.expert_model_parallel_size) == (s.tp, s.pp, s.cp, s.ep)
        assert cfg.num_layers == model.layers and cfg.num_query_groups == model.kv_heads
        assert cfg.sequence_parallel == s.sequence_parallel
        assert opt.use_distributed_optimizer == (s.zero_stage == 1)
        v = s.virtual_stages
        assert (cfg.virtual_pipeline_model_parallel_size or 1) == v
        layout = cfg.pipeline_model_parallel_layout
        if layout is not None:                    # Megatron's own parse of the layout string
            from megatron.core.transformer.enums import LayerType
            got = [sum(layout.layout[i][c].count(LayerType.decoder) for c in range(v)) for i in range(s.pp)]
            assert got == list(s.stage_layers)
        if s.recompute == "full":
            assert cfg.recompute_granularity == "full"
            if cfg.recompute_method == "block":
                assert megatron_recomputed(list(s.stage_layers), v, cfg.recompute_num_layers) == list(s.recompute_layers)
    assert n >= 20


def test_megatron_core_accepts_the_175b_export(exports_175b):
    model, _, exports = exports_175b
    ex = exports["megatron"]
    cfg, opt = megatron_core_configs(model, ex.strategy)
    assert (cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size) == (ex.strategy.tp, ex.strategy.pp)
    assert cfg.num_attention_heads == 96 and opt.use_distributed_optimizer == (ex.strategy.zero_stage == 1)


def test_megatron_core_rejects_broken_configs():
    pytest.importorskip("megatron.core")
    model, _ = get_model("gpt3-13b")      # 40 heads, 40 layers
    st = Strategy(tp=3, pp=4, dp=2, global_batch=64, recompute="none", stage_layers=(9, 11, 11, 9))
    megatron_core_configs(model, st.with_(tp=4))   # accepted
    with pytest.raises(ValueError, match=r"num_attention_heads \(40\) must be a multiple of"):
        megatron_core_configs(model, st)
    wrong = Strategy(tp=4, pp=4, dp=2, global_batch=64, recompute="none", stage_layers=(9, 10, 12, 10))
    with pytest.raises(AssertionError, match="must match num_layers"):
        megatron_core_configs(model, wrong)        # 41 layers in the layout, the model has 40
    with pytest.raises(ValueError, match="middle stage: 21 must be divisible"):
        megatron_core_configs(model, wrong.with_(stage_layers=(9, 11, 11, 10)))   # first/last flags, 41 layers


# ---- one split, one recompute normalisation ---------------------------------------------------------------

def test_deepspeed_split_is_deepspeeds_partition_uniform_and_the_chunk_split():
    """DeepSpeed's PipelineModule stages and Megatron/torchtitan chunks are the same split (base.chunks);
    the planner's own default (performance.even_split) puts the extra layers in the middle stages."""
    from costmodels.performance import even_split

    for n, p in [(32, 3), (10, 4), (7, 7), (96, 5), (126, 4)]:
        assert deepspeed_split(n, p) == chunks(n, p)
        assert sum(chunks(n, p)) == n and max(chunks(n, p)) - min(chunks(n, p)) <= 1
    assert chunks(10, 4) == [3, 3, 2, 2] and even_split(10, 4) == [2, 3, 3, 2]
    utils = pytest.importorskip("deepspeed.runtime.utils")
    for n, p in [(32, 3), (10, 4), (96, 5)]:
        parts = utils.partition_uniform(n, p)
        assert [parts[i + 1] - parts[i] for i in range(p)] == deepspeed_split(n, p)


def test_with_layout_is_the_one_recompute_spelling():
    m = get_model("gpt3-1.3b")[0]
    st = Strategy(pp=2, dp=8, global_batch=512, recompute="full")
    assert st.with_layout([12, 12], [0, 0]).recompute == "none"
    full = st.with_layout([12, 12], [12, 12])
    assert full.recompute == "full" and full.recompute_layers is None and full.stage_layers == (12, 12)
    assert st.with_layout([12, 12], [3, 0]).recompute_layers == (3, 0)
    sel = Strategy(pp=2, dp=8, global_batch=512, recompute="selective")
    assert sel.with_layout([11, 13], [0, 0]) == sel.with_(stage_layers=(11, 13))
    # canonical is with_layout of the plan's resolved layout; importing a written plan gives it back
    assert canonical(m, st) == full
    for rs in ((12, 12), (0, 0), (5, 2)):
        written = st.with_layout([12, 12], list(rs))
        assert canonical(m, written) == written


def test_megatron_core_accepts_deepep_and_tp_overlap_exports():
    # the dispatcher and the tensor-parallel overlap the plan's time assumes are written as Megatron-core's
    # own settings (TransformerConfig moe_token_dispatcher_type / moe_flex_dispatcher_backend, tp_comm_overlap),
    # which it accepts, and read back by the importer
    pytest.importorskip("megatron.core")
    from costmodels.presets import get_model
    from planner.frameworks.megatron import read_megatron_args
    model, _ = get_model("mixtral-8x7b")
    cluster = parse_cluster("64xH100")
    st = Strategy(tp=2, pp=1, dp=32, ep=8, micro_batch=1, global_batch=256, zero_stage=1, recompute="selective",
                  sequence_parallel=True, moe_dispatcher="deepep", tp_comm_overlap=True)
    cfg, _ = megatron_core_configs(model, st)
    assert cfg.moe_token_dispatcher_type == "flex" and cfg.moe_flex_dispatcher_backend == "deepep"
    assert cfg.tp_comm_overlap
    cfg, _ = megatron_core_configs(model, st.with_(moe_dispatcher="alltoall", tp_comm_overlap=False))
    assert cfg.moe_token_dispatcher_type == "alltoall" and not cfg.tp_comm_overlap
    text = " ".join(" ".join(g) for g in megatron_args(model, st))
    _, back = read_megatron_args(text, model, cluster)
    assert (back.moe_dispatcher, back.tp_comm_overlap) == ("deepep", True)
    # torchtitan and DeepSpeed cannot express either setting
    assert unsupported("torchtitan", model, st.with_(framework="torchtitan"))


def test_recompute_modules_are_exported_and_priced():
    # Megatron-core TransformerConfig.recompute_modules: the exported modules are ones it accepts, and
    # recomputing the MoE layer (its experts and dispatch) costs more time and keeps fewer activations than
    # the default attention-core recompute
    pytest.importorskip("megatron.core")
    from megatron.core.transformer.transformer_config import TransformerConfig
    model, _ = get_model("mixtral-8x7b")
    cluster = parse_cluster("64xH100")
    st = Strategy(tp=2, pp=1, dp=32, ep=8, micro_batch=1, global_batch=256, zero_stage=1, recompute="selective",
                  recompute_modules=("layernorm", "moe"))
    group = next(g for g in megatron_args(model, st) if g[0] == "--recompute-granularity")
    assert group == ["--recompute-granularity", "selective", "--recompute-modules", "layernorm", "moe"]
    TransformerConfig(num_layers=4, hidden_size=64, num_attention_heads=4, num_moe_experts=8,
                      recompute_granularity="selective", recompute_modules=group[3:])
    base = evaluate_strategy(model, cluster, st.with_(recompute_modules=None)).plans[0]
    moe = evaluate_strategy(model, cluster, st).plans[0]
    assert moe.step_time_s > base.step_time_s and moe.memory_gb["activations"] < base.memory_gb["activations"]


def test_uneven_end_stages_export_as_megatron_layouts():
    # Qwen3-235B's 94 layers over pp 32 x 3 interleaved chunks = 96 chunks: the first chunk holds only the
    # embedding, the last only the loss (megatron/core/transformer/pipeline_parallel_layer_layout.py parses
    # "E|" and "|L"); megatron-core accepts the layout and finds the planner's layers in it, the importer
    # reads them back, and the planner prices the plan (costmodels.performance.min_stage_layers)
    pytest.importorskip("megatron.core")
    from planner.frameworks.megatron import read_megatron_args
    from planner.solve.evaluate import evaluate
    model, _ = get_model("qwen3-235b-a22b")
    cluster = parse_cluster("256xH100")
    Ls = (2,) + (3,) * 30 + (2,)
    st = Strategy(tp=2, pp=32, dp=4, ep=8, expert_tp=1, micro_batch=1, global_batch=128, zero_stage=1,
                  recompute="selective", virtual_stages=3, stage_layers=Ls)
    assert "--pipeline-model-parallel-layout" in {f for g in megatron_args(model, st) for f in g}
    cfg, _ = megatron_core_configs(model, st)     # asserts megatron-core's parse holds the same layers
    from megatron.core.transformer.enums import LayerType
    layout = cfg.pipeline_model_parallel_layout
    got = [sum(layout.layout[i][c].count(LayerType.decoder) for c in range(3)) for i in range(32)]
    assert got == list(Ls) and layout.layout[0][0] == [LayerType.embedding]
    text = " ".join(" ".join(g) for g in megatron_args(model, st))
    _, back = read_megatron_args(text, model, cluster)
    assert back.stage_layers == Ls and back.virtual_stages == 3
    assert evaluate(model, st, cluster).stage_layers == list(Ls)


def test_fp8_recipe_is_exported_and_read_back():
    # Megatron-core TransformerConfig.fp8_recipe (delayed, tensorwise, mxfp8, blockwise) from --fp8-recipe;
    # torchtitan's float8 converter writes tensorwise and refuses the others
    pytest.importorskip("megatron.core")
    from planner.frameworks.megatron import read_megatron_args
    model, _ = get_model("llama3-8b")
    cluster = parse_cluster("8xB200")
    st = Strategy(tp=1, pp=1, dp=8, micro_batch=1, global_batch=8, zero_stage=1, precision="fp8", fp8_recipe="mxfp8")
    cfg, _ = megatron_core_configs(model, st)
    assert cfg.fp8 == "hybrid" and cfg.fp8_recipe == "mxfp8"
    _, back = read_megatron_args(" ".join(" ".join(g) for g in megatron_args(model, st)), model, cluster)
    assert back.recipe == "mxfp8"
    assert Strategy(precision="fp8").recipe == "delayed" and Strategy(precision="fp8", framework="torchtitan").recipe == "tensorwise"
    tt = st.with_(framework="torchtitan", zero_stage=2)
    assert "tensorwise" in unsupported("torchtitan", model, tt)
    assert not unsupported("torchtitan", model, tt.with_(fp8_recipe=None))


def test_mxfp8_needs_blackwell(capsys):
    code, _, err = _run(["evaluate", "--model", "8b", "--gpus", "8xH100", "--precision", "fp8", "--fp8-recipe",
                         "mxfp8", "--dp", "8", "--global-batch", "8"], capsys)
    assert code == 2 and "Blackwell" in err and len(err.strip().splitlines()) == 1


def test_every_file_names_its_framework_version_and_megatron_sets_its_environment():
    """Each emitted file says which framework version it is written for (planner.frameworks.base.TARGETS),
    --emit NAME@VERSION accepts that version; Megatron-LM's launcher exports CUDA_DEVICE_MAX_CONNECTIONS=1
    exactly when tensor or context parallelism is on (megatron/training/arguments.py refuses to start
    without it then)."""
    model, _ = get_model("gpt3-1.3b")
    cluster = parse_cluster("16xA100")
    for tp, cp in ((1, 1), (2, 1), (1, 2)):
        st = Strategy(tp=tp, cp=cp, dp=16 // (tp * cp), micro_batch=1, global_batch=64, zero_stage=1,
                      recompute="none")
        files = export("megatron", model, st, cluster).files
        launch = files["launch.sh"]
        assert ("export CUDA_DEVICE_MAX_CONNECTIONS=1" in launch) == (tp > 1 or cp > 1)
        if tp > 1 or cp > 1:
            assert launch.index("CUDA_DEVICE_MAX_CONNECTIONS") < launch.index("torchrun")
        assert "# targets: Megatron-LM core_r0.16" in files["megatron_args.sh"]
    st = Strategy(dp=16, micro_batch=1, global_batch=64, zero_stage=1, recompute="none", framework="deepspeed")
    assert "# targets: DeepSpeed 0.19" in export("deepspeed", model, st, cluster).files["launch.sh"]
    st = Strategy(dp=16, micro_batch=1, global_batch=64, zero_stage=3, recompute="none", framework="torchtitan")
    assert "# targets: torchtitan 0.3" in export("torchtitan", model, st, cluster).files["job.py"]
    assert "# targets: torchtitan 0.2" in export("torchtitan@0.2", model, st, cluster).files["job.toml"]


@pytest.mark.parametrize("name, precision", [("quoted_variables.sh", "bf16"), ("bash_arrays.sh", "fp16")])
def test_megatron_launch_scripts_read_as_a_shell_would(name, precision, tmp_path, capsys):
    """Launch scripts in the two forms Megatron-LM's examples use (tests/data/launch, each file says which):
    quoted variables expanded on the torchrun line, and bash arrays; variables inside values ($TP) expand.
    `plan import` prints what it read and what it ignored."""
    path = Path(__file__).parent / "data" / "launch" / name
    model, st = read_megatron_args(path.read_text(), get_model("175b")[0], parse_cluster("1024xA100"))
    assert (st.tp, st.pp, st.dp, st.micro_batch, st.global_batch, st.precision) == (8, 16, 8, 1, 1536, precision)
    code, out, err = _run(["import", "--megatron-args", str(path), "--model", "175b", "--gpus", "1024xA100",
                           "--format", "json"], capsys)
    assert code in (0, 3), err
    doc = json.loads(out)
    assert doc["read"]["--tensor-model-parallel-size"] == "8" and doc["read"]["--pipeline-model-parallel-size"] == "16"
    assert "--lr" in doc["ignored"] and "--lr" not in doc["read"]
    code, out, err = _run(["import", "--megatron-args", str(path), "--model", "175b", "--gpus", "1024xA100"], capsys)
    assert "Read from" in out and "--tensor-model-parallel-size 8" in out and "Not read" in out


def test_megatron_input_without_parallel_settings_is_refused(tmp_path, capsys):
    """A quoted variable never referenced by a launch line still counts, but a file with no parallel setting
    at all (here only a learning rate) is an error, never a default TP 1 x PP 1 plan."""
    f = tmp_path / "args.sh"
    f.write_text('OPT_ARGS="--lr 1e-4 --bf16"\n')
    code, out, err = _run(["import", "--megatron-args", str(f), "--model", "175b", "--gpus", "1024xA100"], capsys)
    assert code == 2 and "no parallel setting found" in err and err.count("\n") == 1


@pytest.mark.parametrize("config, needle", [
    # a Hugging Face Trainer / accelerate DeepSpeed config: the batch fields are "auto" until launch
    ({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
      "zero_optimization": {"stage": 2}}, 'are "auto"'),
    ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": "auto"}, 'gradient_accumulation_steps is "auto"'),
    ({"train_micro_batch_size_per_gpu": 4, "bf16": {"enabled": "auto"}}, 'bf16.enabled is "auto"'),
    ({"train_micro_batch_size_per_gpu": "4"}, "'4' is not a whole number"),
    ({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": "auto"}}, "stage 'auto'"),
])
def test_deepspeed_auto_values_are_named_not_guessed(config, needle, tmp_path, capsys):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps(config))
    code, out, err = _run(["import", "--deepspeed-config", str(f), "--model", "8b", "--gpus", "8xH100"], capsys)
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_deepspeed_launcher_says_what_must_be_set_in_code():
    """DeepSpeed takes the pipeline stages from the training script (PipelineModule(num_stages=...)) and, without
    pipeline parallelism, the layers to checkpoint from its deepspeed.checkpointing calls: the launcher says so.
    The pipeline engine itself applies ds_config's pipeline.activation_checkpoint_interval to the module
    (deepspeed/runtime/pipe/engine.py), which DeepSpeed's own config parser reads where it is installed."""
    model, _ = get_model("gpt3-1.3b")
    cluster = parse_cluster("16xA100")
    pipe = Strategy(pp=2, dp=8, micro_batch=1, global_batch=64, zero_stage=1, recompute="full", framework="deepspeed")
    ex = export("deepspeed", model, pipe, cluster)
    launch = ex.files["launch.sh"]
    assert "PipelineModule(layers, num_stages=2" in launch and "applied by DeepSpeed's pipeline engine" in launch
    cfg = json.loads(ex.files["ds_config.json"])
    assert cfg["pipeline"]["activation_checkpoint_interval"] == 1
    try:
        from deepspeed.runtime.config import get_pipeline_config
    except ImportError:
        get_pipeline_config = None
    if get_pipeline_config is not None:
        assert get_pipeline_config(cfg)["activation_checkpoint_interval"] == 1
    flat = Strategy(dp=16, micro_batch=1, global_batch=64, zero_stage=1, recompute="full", framework="deepspeed")
    launch = export("deepspeed", model, flat, cluster).files["launch.sh"]
    assert "deepspeed.checkpointing.checkpoint" in launch and "PipelineModule" not in launch


def test_cli_import_torchtitan_config(tmp_path, capsys):
    """plan import --torchtitan-config: a TOML job config read back (torchtitan's defaults where a key is absent:
    data_parallel_shard_degree -1 takes the GPUs left, FSDP reshards after forward); no [parallelism] is an error."""
    f = tmp_path / "job.toml"
    f.write_text('[parallelism]\ntensor_parallel_degree = 2\n\n[training]\nlocal_batch_size = 2\nseq_len = 8192\n'
                 '[activation_checkpoint]\nmode = "full"\n')
    code, out, err = _run(["import", "--torchtitan-config", str(f), "--model", "llama3-8b", "--gpus", "16xH100",
                           "--format", "json"], capsys)
    assert code in (0, 3), err
    st = json.loads(out)["imported"]["plans"][0]["strategy"]
    assert (st["tp"], st["dp"], st["zero_stage"], st["global_batch"], st["recompute"]) == (2, 8, 3, 16, "full")
    f.write_text('[training]\nlocal_batch_size = 2\n')
    code, out, err = _run(["import", "--torchtitan-config", str(f), "--model", "llama3-8b", "--gpus", "16xH100"], capsys)
    assert code == 2 and "no [parallelism] table" in err
