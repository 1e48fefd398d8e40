"""Build `plan --emit bridge` jobs with Megatron-Bridge's own recipes and ConfigContainer, and validate them.

Megatron-Bridge needs Transformer Engine at import and Hugging Face's hub for its recipes' model configs, so
this is a script, not part of the test run. In an environment with megatron-core and Megatron-Bridge
(`pip install megatron-bridge`; on a machine without CUDA add `--no-deps` and its pure-Python requirements:
transformers<5, omegaconf, megatron-energon) run

    python benchmarks/check_bridge.py

For each plan below it writes the job (`plan --model M --gpus G --emit bridge --out DIR`, the planner's best
plan Megatron-Bridge can run), imports its `plan()` (which calls
the Megatron-Bridge recipe and sets the plan's fields on the ConfigContainer), then runs
`ConfigContainer.validate()` with WORLD_SIZE set to the cluster's GPU count: Megatron-core's
TransformerConfig checks (layers per pipeline stage, sequence parallel, interleaving, MoE folding) and
Bridge's own (distributed optimizer, mixed precision, data-parallel size, scheduler). One line per plan: ok
with the data-parallel size Bridge derives, or the error. Exit 1 if any job is refused.

Stand-ins, stated: where Transformer Engine cannot load (no CUDA), its modules are stubs (the config classes
only name it; nothing runs a kernel), torch.cuda.get_device_properties answers for the cluster's GPU (the
MoE recipes read its compute capability), and the recipes' `AutoBridge.from_hf_pretrained(<hub id>)` reads a
config.json written from the preset's shape (the hub is not reached), so the model fields come from the
planner's preset as the real hub config would give them.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costmodels.presets import get_model  # noqa: E402
from hardware import parse_cluster  # noqa: E402

from check_megatron import COMPUTE_MAJOR, planned  # noqa: E402  (the job's "# plan:" line, read the same way)

CASES = [("llama3-8b", "8xH100"), ("llama3-70b", "64xH100"), ("llama3-405b", "1024xH100"),
         ("qwen3-235b-a22b", "256xH100"), ("deepseek-v3", "1024xH100")]


# ---- Transformer Engine stand-in (only where it cannot load) ------------------------------------------------
STUB_TE_VERSION = "2.10.0"     # the oldest Megatron-Bridge 0.3 accepts (its requirement: >=2.10.0a0, <2.13)


class _Stub(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr == "FusedAdam":     # TE 2.10's optimizer keywords (Megatron-core checks them by signature)
            def __init__(self, params, lr=1e-3, master_weight_dtype=None, exp_avg_dtype=None,
                         exp_avg_sq_dtype=None, use_decoupled_grad=False, **kwargs):
                pass
            value = type(attr, (), {"__init__": __init__, "__module__": self.__name__})
        elif attr[:1].isupper():    # a class name: a torch module class, so registries and isinstance accept it
            import torch
            value = type(attr, (torch.nn.Module,), {"__module__": self.__name__})
        else:
            value = mock.MagicMock(name=f"{self.__name__}.{attr}")
        setattr(self, attr, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        return importlib.machinery.ModuleSpec(name, self, is_package=True) \
            if name.split(".")[0] in ("transformer_engine", "transformer_engine_torch") else None

    def create_module(self, spec):
        module = _Stub(spec.name)
        module.__path__ = []
        module.__version__ = STUB_TE_VERSION
        return module

    def exec_module(self, module):
        pass


def stub_transformer_engine() -> bool:
    try:
        importlib.import_module("transformer_engine.pytorch")
        return False
    except Exception:       # not installed, or no CUDA to load it
        for name in [n for n in sys.modules if n.startswith("transformer_engine")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StubFinder())
        real = importlib.metadata.version
        importlib.metadata.version = lambda d: STUB_TE_VERSION if d.replace("_", "-").startswith("transformer-engine") \
            else real(d)
        return True


# ---- the recipes' hub configs, from the presets -------------------------------------------------------------
def hf_config(name: str) -> dict:
    m, _ = get_model(name)
    c = {"hidden_size": m.hidden, "num_hidden_layers": m.layers, "num_attention_heads": m.heads,
         "num_key_value_heads": m.kv_heads, "intermediate_size": int(m.ffn_hidden), "vocab_size": m.vocab,
         "max_position_embeddings": m.max_context or m.seq_len, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
         "tie_word_embeddings": m.tied_embeddings, "torch_dtype": "bfloat16", "hidden_act": "silu"}
    if m.moe is None:
        return {**c, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    moe = m.moe
    if m.mla is None:      # Qwen3-MoE
        return {**c, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "head_dim": m.head_dim,
                "num_experts": moe.experts, "num_experts_per_tok": moe.top_k,
                "moe_intermediate_size": int(moe.expert_ffn_hidden), "decoder_sparse_step": 1, "norm_topk_prob": True,
                "rope_theta": 1000000.0, "rms_norm_eps": 1e-6}
    a = m.mla
    return {**c, "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
            "n_routed_experts": moe.experts, "n_shared_experts": moe.shared_experts, "num_experts_per_tok": moe.top_k,
            "moe_intermediate_size": int(moe.expert_ffn_hidden), "first_k_dense_replace": moe.first_dense,
            "q_lora_rank": a.q_lora_rank, "kv_lora_rank": a.kv_lora_rank, "qk_nope_head_dim": a.qk_nope_head_dim,
            "qk_rope_head_dim": a.qk_rope_head_dim, "v_head_dim": a.v_head_dim, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
            # routing as deepseek-ai/DeepSeek-V3's config.json states it (the planner does not model it)
            "scoring_func": "sigmoid", "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4,
            "routed_scaling_factor": 2.5, "norm_topk_prob": True}


def local_hub(names: list[str], root: Path) -> dict[str, str]:
    """{hub id the recipe asks for: local directory}: every id the recipe modules name, by the preset whose
    recipe module it is in (one config per preset)."""
    dirs = {}
    for name in names:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(hf_config(name)))
        dirs[name] = str(d)
    return dirs


@contextmanager
def gpu_properties(gpu):
    """torch.cuda.get_device_properties answering for the cluster's GPU where no GPU is present (recipes
    look at the compute capability to pick the MoE dispatcher's backend)."""
    import torch
    if torch.cuda.is_available():
        yield
        return
    major = COMPUTE_MAJOR.get(gpu.family, 9)
    props = types.SimpleNamespace(name=f"NVIDIA {gpu.name}", major=major, minor=0,
                                  total_memory=int(gpu.memory_gb * 1e9), multi_processor_count=132)
    with mock.patch.object(torch.cuda, "get_device_properties", lambda *a, **k: props):
        yield


def main() -> int:
    stubbed = stub_transformer_engine()
    try:
        from megatron.bridge import AutoBridge
    except ImportError as e:
        print(f"Megatron-Bridge not installed ({e}); nothing checked")
        return 0
    refused = 0
    with tempfile.TemporaryDirectory() as tmp:
        hub = local_hub([n for n, _ in CASES], Path(tmp) / "hub")
        real = AutoBridge.from_hf_pretrained.__func__
        for name, gpus in CASES:
            model, _ = get_model(name)
            cluster = parse_cluster(gpus)
            out = Path(tmp) / name
            subprocess.run([sys.executable, "-m", "planner.cli", "--model", name, "--gpus", gpus, "--emit", "bridge",
                            "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
            AutoBridge.from_hf_pretrained = classmethod(lambda cls, path, *a, _d=hub[name], **k: real(cls, _d, *a, **k))
            spec = importlib.util.spec_from_file_location(f"bridge_job_{name.replace('-', '_')}", out / "bridge_job.py")
            job = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(job)
            os.environ["WORLD_SIZE"] = str(cluster.num_gpus)
            with gpu_properties(cluster.gpu):
                cfg = job.plan()
            try:
                cfg.validate()
            except (AssertionError, ValueError) as e:     # a refusal; anything else is a fault and propagates
                refused += 1
                print(f"{name} on {gpus}: refused: {type(e).__name__}: {str(e).strip()[:300]}")
                continue
            m = cfg.model
            want = planned(out / "bridge_job.py")
            got = {"TP": m.tensor_model_parallel_size, "PP": m.pipeline_model_parallel_size,
                   "CP": m.context_parallel_size, "DP": cfg.data_parallel_size, "EP": m.expert_model_parallel_size}
            wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v}
            if wrong:
                refused += 1
                print(f"{name} on {gpus}: runs another plan than written: " +
                      ", ".join(f"{k} {g} (plan: {v})" for k, (g, v) in wrong.items()))
                continue
            print(f"{name} on {gpus}: ok: TP {m.tensor_model_parallel_size} x PP {m.pipeline_model_parallel_size} "
                  f"x CP {m.context_parallel_size} x DP {cfg.data_parallel_size}, EP {m.expert_model_parallel_size}, "
                  f"micro-batch {cfg.train.micro_batch_size}, global batch {cfg.train.global_batch_size}")
    if stubbed:
        print("(Transformer Engine stood in by stubs: it cannot load on this machine)")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
