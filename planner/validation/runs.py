"""`plan validate`: predict published training runs (schema runs/v1) and report the errors.

Each run is rebuilt from its own fields (shape, cluster, parallel configuration) and predicted in the
measured quantity and FLOP convention the source uses. Fields the source leaves null are filled the way
an operator tuning that run would: the fastest value that fits in memory (micro-batch, interleaving,
recompute). Nothing here knows a run by its id.
"""
from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from costmodels.flops import llm_foundry_flops_per_step, model_flops_per_step, narayanan_flops_per_step
from costmodels.model import ModelError, ModelSpec
from costmodels.performance import Evaluation, even_split, stage_costs
from costmodels.strategy import Strategy, StrategyError
from hardware import Cluster, HardwareError, load_catalog, rack_share
from planner.solve.evaluate import evaluate, evaluate_layout
from planner.solve.solver import solve_layout
from planner.solve.rules import MAX_VIRTUAL_STAGES, allows, check_strategy
from planner.solve.space import divisors
from planner.validation.schema import RunSkipped, field, group, run_model  # noqa: F401  (re-exported)
from planner.validation.split import BUNDLED, FIT, HELD_OUT, fit_rows  # noqa: F401  (BUNDLED: the sets, for callers)

# the first one a run reports is predicted; peak memory only when the run reports no speed
METRICS = ("step_time_s", "tokens_per_s_per_gpu", "tflops_per_gpu", "mfu", "hfu", "peak_memory_gb")


class ValidationFileError(ValueError):
    """The runs file cannot be read; the message names the file and the problem."""


class RunResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    metric: str | None
    measured: float | None
    predicted: float | None
    pct_error: float | None          # (predicted - measured) / measured, as a fraction
    skipped: str | None = None       # why the run could not be predicted
    filled: dict = {}                # unknown fields chosen by the planner
    peak_memory_gb: float | None = None
    split: str | None = None         # "fit": a bundled row constants were fitted on; else "held-out"
    # a run that reports peak memory besides its speed: the measured figure, the prediction in the statistic
    # the source names (allocated, reserved or device; memory_statistic) and the error
    memory_measured: float | None = None
    memory_predicted: float | None = None
    memory_pct_error: float | None = None
    memory_statistic: str | None = None
    framework: str | None = None     # the memory accounting the run was priced in (Strategy.framework)
    # a serving row in mode online that measures several figures: the ones besides `metric`, each
    # {"measured", "predicted", "pct_error"} (planner.validation.serving)
    other_metrics: dict = {}


class Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int
    predicted: int
    skipped: int
    median_abs_pct_error: float | None
    mean_abs_pct_error: float | None
    max_abs_pct_error: float | None
    within_10pct: float | None
    within_20pct: float | None


class ValidationResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_: str
    file: str
    summary: Summary
    in_sample: Summary | None = None        # the rows constants were fitted on (planner.validation.fit)
    out_of_sample: Summary | None = None    # all other rows
    memory: Summary | None = None           # every row that reports peak memory, predicted in its statistic
    # held-out serving rows that measure several figures (mode online): each figure over every such row
    by_metric: dict[str, Summary] | None = None
    runs: list[RunResult]

    def as_json(self) -> dict:
        d = self.model_dump(mode="json")
        d["schema"] = d.pop("schema_")
        return d


def load_runs(path: str | Path) -> tuple[str, list[dict]]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValidationFileError(f"runs file {p} does not exist") from None
    except IsADirectoryError:
        raise ValidationFileError(f"runs file {p} is a directory; give a runs/v1 or serving/v1 JSON file") from None
    except OSError as e:
        raise ValidationFileError(f"runs file {p} cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ValidationFileError(f"runs file {p} is not UTF-8 text; give a runs/v1 or serving/v1 JSON file") from None
    except json.JSONDecodeError as e:
        raise ValidationFileError(f"runs file {p} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(doc, dict) or "schema" not in doc:
        raise ValidationFileError(f"runs file {p} has no 'schema' key; expected {{\"schema\": \"runs/v1\", \"runs\": [...]}}")
    schema = doc["schema"]
    if schema not in ("runs/v1", "serving/v1"):
        raise ValidationFileError(f"runs file {p} has schema {schema!r}; supported: runs/v1, serving/v1")
    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ValidationFileError(f"runs file {p} has no runs (key 'runs' must be a non-empty list)")
    return schema, runs


def validate_file(path: str | Path, completions: dict[str, Completion] | None = None) -> ValidationResult:
    """Predict every run of a runs/v1 or serving/v1 file. A run is skipped only for a declared reason
    (RunSkipped, a broken rule, an unknown GPU for serving rows); any other exception propagates.
    `completions` collects the completion chosen for each predicted training run (predict_run)."""
    schema, runs = load_runs(path)
    results = [validate_run(schema, run, i, completions) for i, run in enumerate(runs)]
    fitted = fit_rows()
    for r in results:
        r.split = FIT if (schema, r.id) in fitted else HELD_OUT
    inside = [r for r in results if r.split == FIT]
    outside = [r for r in results if r.split != FIT]
    mem = [r for r in results if r.memory_measured is not None]
    return ValidationResult(schema_=schema, file=str(path), summary=summarise(results),
                            in_sample=summarise(inside) if inside else None,
                            out_of_sample=summarise(outside) if outside else None,
                            memory=summarise(mem, "memory_pct_error") if mem else None,
                            by_metric=_by_metric(outside), runs=results)


def _by_metric(results: list[RunResult]) -> dict[str, Summary] | None:
    """Per measured figure, the errors of every row that reports it beside others (RunResult.other_metrics)."""
    several = [r for r in results if r.other_metrics]
    if not several:
        return None
    names = sorted({r.metric for r in several} | {m for r in several for m in r.other_metrics})
    out = {}
    for m in names:
        rows = [RunResult(id=r.id, metric=m, measured=None, predicted=None,
                          pct_error=r.pct_error if r.metric == m else r.other_metrics[m]["pct_error"])
                for r in several if r.metric == m or m in r.other_metrics]
        out[m] = summarise(rows)
    return out


def validate_run(schema: str, run, i: int = 0, completions: dict[str, Completion] | None = None) -> RunResult:
    """One row of a file in `schema`, predicted or skipped with its reason."""
    rid = str(run.get("id") or f"run-{i}") if isinstance(run, dict) else f"run-{i}"
    declared: tuple[type[Exception], ...] = (RunSkipped, ModelError, StrategyError)
    try:
        if not isinstance(run, dict):
            raise RunSkipped(f"row {i} is not a JSON object")
        if schema == "serving/v1":   # inference rows: predicted in their mode (planner.validation.serving)
            from costmodels.serving import ServingError
            from planner.validation.serving import predict_serving_run
            declared += (ServingError, HardwareError)   # HardwareError: the row's GPU is not in the catalog
            return RunResult(**predict_serving_run(run))
        return predict_run(run, completions)
    except declared as e:
        msg = e.reason if isinstance(e, RunSkipped) else (str(e).splitlines()[0] if str(e) else type(e).__name__)
        return RunResult(id=rid, metric=None, measured=None, predicted=None, pct_error=None, skipped=msg)


def summarise(results: list[RunResult], key: str = "pct_error") -> Summary:
    errs = [abs(getattr(r, key)) for r in results if getattr(r, key) is not None]
    n = len(errs)
    return Summary(
        count=len(results), predicted=n, skipped=len(results) - n,
        median_abs_pct_error=statistics.median(errs) if n else None,
        mean_abs_pct_error=statistics.fmean(errs) if n else None,
        max_abs_pct_error=max(errs) if n else None,
        within_10pct=sum(e <= 0.10 for e in errs) / n if n else None,
        within_20pct=sum(e <= 0.20 for e in errs) / n if n else None,
    )


# --- one run ----------------------------------------------------------------------------------------
_RATE = re.compile(r"(?:(\d+)\s*[x\u00d7]\s*(?:[A-Za-z-]+\s+)?)?(\d+(?:\.\d+)?)\s*([GT])b(?:/s|ps|it/s|s)\b", re.I)
_PER_GPU = re.compile(r"per\s+gpu|/\s*gpu|each\s+gpu", re.I)
_PER_NODE = re.compile(r"per\s+node|/\s*node", re.I)


def network_gbps_per_gpu(text: str | None, gpus_per_node: int) -> float | None:
    """Per-GPU network bandwidth (GB/s, one direction) from the run's interconnect text, e.g.
    '8x HDR 200Gb/s per node' -> 8*200/8/8 = 25; 'RoCE 1600 Gb/s per node' -> 25; '400Gb/s per GPU' -> 50;
    '3200 Gbps EFA per node' -> 50. A rate with a count ('8x 200Gb/s') and no scope is taken per node;
    anything else unclear leaves the catalog's figure."""
    if not text:
        return None
    mt = _RATE.search(text)
    if not mt:
        return None
    count = int(mt.group(1)) if mt.group(1) else 1
    gbit = count * float(mt.group(2)) * (1000.0 if mt.group(3).lower() == "t" else 1.0)
    if _PER_GPU.search(text):
        per_gpu = gbit
    elif _PER_NODE.search(text) or mt.group(1):
        per_gpu = gbit / gpus_per_node
    else:
        return None
    return per_gpu / 8.0


def run_cluster(h: dict) -> Cluster:
    r = {"hardware": h}
    try:
        gpu, note = load_catalog().resolve(field(r, "hardware", "gpu", str))
    except HardwareError as e:          # not in the catalog: the message names it and the known GPUs
        raise RunSkipped(str(e).splitlines()[0]) from None
    n = field(r, "hardware", "num_gpus")
    gpn = min(field(r, "hardware", "gpus_per_node", required=False, default=gpu.gpus_per_node), n)
    net = network_gbps_per_gpu(field(r, "hardware", "interconnect", str, required=False), gpn)
    if net:
        gpu = gpu.model_copy(update={"inter_node_gbps": net})
    if n % gpn:
        share = rack_share(n, gpu, gpn)   # rack-scale NVLink domains: whole trays of each rack
        if share is None:
            raise RunSkipped(f"num_gpus {n} is not a multiple of gpus_per_node {gpn} (nor of whole trays of a "
                             "rack-scale NVLink domain)")
        gpn = share
    return Cluster(gpu=gpu, num_nodes=n // gpn, gpus_per_node=gpn, note=note)


def uses_flash_attention(run: dict) -> bool:
    """FlashAttention when the run says so; not when it says eager (unfused) attention; fp16 Megatron-era
    runs (before FlashAttention, 2022) without it; bf16 / fp8 runs with it (the default of every current
    framework)."""
    text = (run.get("notes") or "").lower() + " " + (run.get("strategy", {}).get("framework") or "").lower()
    if re.search(r"attn_implementation\s*=\s*['\"]?eager|no flash|without flash|flash attention off", text):
        return False
    if "flash" in text:
        return True
    return (run.get("strategy", {}).get("precision") or "bf16") != "fp16"


def run_framework(run: dict) -> str:
    """The memory accounting of the framework a run names (strategy.framework, else its notes):
    torchtitan's for torchtitan and PyTorch FSDP (fp32 sharded parameters as master weights, eager kernels),
    DeepSpeed's for DeepSpeed and ZeRO implementations built like it (ColossalAI), else Megatron-core's."""
    name = (run.get("strategy", {}).get("framework") or "").lower()
    text = name or (run.get("notes") or "").lower()
    if "torchtitan" in text or "fsdp" in text:
        return "torchtitan"
    if "megatron" in text:
        return "megatron"
    if "deepspeed" in text or "colossal" in text:
        return "deepspeed"
    return "megatron"


# the statistic a source reports its peak in (measured.peak_memory_statistic, else its notes): torch's
# max_memory_allocated, max_memory_reserved (torchtitan's and Megatron's logs), or the device's use
# (nvidia-smi: reserved + the CUDA context)
STATISTICS = ("allocated", "reserved", "device")


def memory_statistic(run: dict) -> str:
    """allocated, reserved or device; a source that does not say is read as reserved (what the training
    frameworks log and what has to fit)."""
    m = run.get("measured") or {}
    named = str(m.get("peak_memory_statistic") or "").lower()
    if named in STATISTICS:
        return named
    text = (run.get("notes") or "").lower()
    if "max_memory_allocated" in text or "allocated" in text:
        return "allocated"
    if "nvidia-smi" in text or "device memory" in text:
        return "device"
    return "reserved"


def predicted_memory_gb(ev: Evaluation, statistic: str) -> float:
    """The most loaded GPU's peak in the statistic a source reports (costmodels.memory.memory_in)."""
    from costmodels.memory import memory_in
    return memory_in(ev.memory_b["peak"], ev.memory_b["allocated"], statistic) / 1e9


def expert_tensor_parallel(tp: int, cp: int, dp: int, ep: int, notes: str = "") -> list[int | None]:
    """The run's possible expert tensor-parallel sizes (runs/v1 has no field for it): the one its notes
    state ("ETP 1", or "EDP 32": etp = tp x cp x dp / (ep x edp)), else every etp dividing tp that folds the
    experts over the stage's tp x cp x dp ranks (Megatron MoE parallel folding, megatron/core/parallel_state.py),
    an unknown filled like any other; None stands for the default, etp = tp."""
    if ep == 1:
        return [None]
    ok = [e for e in range(tp, 0, -1) if tp % e == 0 and (tp * cp * dp) % (ep * e) == 0]
    stated = re.search(r"\bETP\s*(\d+)", notes)
    edp = re.search(r"\bEDP\s*(\d+)", notes)
    if stated:
        want = int(stated.group(1))
    elif edp and int(edp.group(1)) and (tp * cp * dp) % (ep * int(edp.group(1))) == 0:
        want = tp * cp * dp // (ep * int(edp.group(1)))
    else:
        want = None
    if want in ok:
        ok = [want]
    return [None if e == tp else e for e in ok] or [None]


_MODULE_WORDS = {"norm": "layernorm", "layernorm": "layernorm", "rmsnorm": "layernorm", "act": "moe_act",
                 "moe_act": "moe_act", "moe": "moe", "mlp": "mlp", "core_attn": "core_attn", "attn": "core_attn",
                 "mla_up_proj": "mla_up_proj", "up_proj": "mla_up_proj", "up-projections": "mla_up_proj",
                 "up-projection": "mla_up_proj"}
# words between module names that neither name one nor end the list ("recompute of RMSNorm and MLA up-projections")
_MODULE_FILLER = {"of", "and", "the", "mla"}


def recompute_modules(notes: str) -> tuple[str, ...] | None:
    """The Megatron-core recompute modules a run's notes name ("recompute modules 'norm, act'",
    "recompute modules layernorm+moe", "recompute moe_act+layernorm"), None when they name none."""
    for m in re.finditer(r"recompute(?:[-_ ]modules?)?\W*([a-z_+,' -]+)", notes or "", re.IGNORECASE):
        words = [w for w in re.split(r"[\s,+']+", m.group(1).lower()) if w]
        mods = []
        for w in words:              # the module words right after "recompute", up to the first other word
            if w in _MODULE_FILLER:
                continue
            if w not in _MODULE_WORDS:
                break
            mods.append(_MODULE_WORDS[w])
        if mods:
            return tuple(dict.fromkeys(mods))
    return None


def lora_rank(notes: str) -> int | None:
    """The LoRA rank of a fine-tuning run ("LoRA rank 16"), None for a run that trains every weight."""
    m = re.search(r"\bLoRA\b[^.;]{0,20}?\brank\s*[=:]?\s*(\d+)", notes or "", re.IGNORECASE)
    return int(m.group(1)) if m else None


def block_recompute_layers(notes: str) -> int | None:
    """Layers per stage a block recompute checkpoints, when the notes give it (NeMo's
    activations_checkpoint_num_layers, its MLPerf configs' ACL=, Megatron's --recompute-num-layers)."""
    m = re.search(r"(?:\bACL|activations_checkpoint_num_layers|recompute[-_ ]num[-_ ]layers)\s*[=:]?\s*(\d+)",
                  notes or "", re.IGNORECASE)
    return int(m.group(1)) if m else None


def fp8_recipe(text: str) -> str | None:
    """The FP8 recipe a run's framework field or notes name (MXFP8, block-wise, current scaling / tensorwise,
    delayed scaling); None: the framework's default."""
    t = (text or "").lower()
    for recipe, pat in (("mxfp8", r"mxfp8"), ("blockwise", r"block-?wise"), ("tensorwise", r"tensorwise|current scaling"),
                        ("delayed", r"delayed scaling|amax history")):
        if re.search(pat, t):
            return recipe
    return None


def moe_dispatcher(run: dict) -> str:
    """The run's MoE token dispatcher: DeepEP (or NVIDIA's HybridEP, which also sends a token once per
    destination node) when its framework or notes name it as the dispatcher, all-to-all otherwise, and when
    they name an all-to-all dispatcher."""
    text = f"{(run.get('strategy') or {}).get('framework') or ''} {run.get('notes') or ''}".lower()
    if re.search(r"all-?to-?all (token )?dispatcher", text):
        return "alltoall"
    # HAI-LLM: DeepSeek's framework, whose dispatch kernels (one IB send per destination node, then NVLink,
    # DeepSeek-V3 report 3.2.2) DeepEP publishes
    return "deepep" if re.search(r"(deepep|hybridep|hai-llm)", text) else "alltoall"


def implies_sequence_parallel(run: dict) -> bool:
    """The run used Megatron's --tp-comm-overlap, which needs sequence parallel (megatron/training/arguments.py:
    tensor-parallel communication overlap only with --sequence-parallel)."""
    return uses_tp_comm_overlap(run)


def uses_tp_comm_overlap(run: dict) -> bool:
    """The run's notes say it overlapped tensor-parallel communication with GEMMs (Megatron-LM / NeMo
    --tp-comm-overlap, "TP comm overlap")."""
    return re.search(r"tp[-_ ]comm[-_ ]overlap", run.get("notes") or "", re.IGNORECASE) is not None


def candidate_strategies(model: ModelSpec, s: dict, cluster: Cluster, flash: bool,
                         sp_default: bool = False, framework: str = "megatron", notes: str = "") -> list[Strategy]:
    """The run's strategy, with every null field expanded to the values the rules allow; a null
    sequence_parallel is the named framework's default (Megatron-LM: off), else both (NeMo: on), or on when
    `sp_default` says the run needs it."""
    r = {"strategy": s}
    tp, pp, dp = field(r, "strategy", "tp"), field(r, "strategy", "pp"), field(r, "strategy", "dp")
    cp, ep = field(r, "strategy", "cp", required=False, default=1), field(r, "strategy", "ep", required=False, default=1)
    gb = field(r, "strategy", "global_batch")
    if gb % dp:
        raise RunSkipped(f"global_batch {gb} is not divisible by dp {dp}")
    mb = field(r, "strategy", "micro_batch", required=False)
    mbs = [mb] if mb else [d for d in divisors(gb // dp) if d <= 16]
    rec = field(r, "strategy", "recompute", str, required=False)
    recs = [rec] if rec else ["none", "selective", "full"]
    zero = field(r, "strategy", "zero_stage", required=False)
    lora = lora_rank(notes)
    # an unstated ZeRO stage of a LoRA run is immaterial (it shards only the adapters' states, a fraction of a
    # percent of the model's): ZeRO-0, so such a run counts as fully stated
    zeros = [zero] if zero is not None else [0] if lora else [0, 1]
    sp = field(r, "strategy", "sequence_parallel", bool, required=False)
    # an unstated sequence parallel is the named framework's default: off in Megatron-LM (opt-in), else filled
    # like any unknown (NeMo's recipes turn it on with tp > 1); --tp-comm-overlap in the notes needs it on
    fw_text = str(s.get("framework") or "").lower()
    megatron_lm = "megatron-lm" in fw_text and "nemo" not in fw_text
    sps = [sp] if sp is not None else ([True] if sp_default else [False] if megatron_lm or tp == 1 else [False, True])
    precision = field(r, "strategy", "precision", str, required=False, default="bf16")
    vs_known = field(r, "strategy", "virtual_stages", required=False)
    etps = expert_tensor_parallel(tp, cp, dp, ep, notes) if model.moe is not None else [None]
    dispatcher = moe_dispatcher({"strategy": s, "notes": notes})
    tp_overlap = uses_tp_comm_overlap({"notes": notes})
    modules = recompute_modules(notes) if framework == "megatron" else None
    recipe = fp8_recipe(f"{s.get('framework') or ''} {notes}") if precision == "fp8" else None
    # the notes say the MoE all-to-all overlapped another micro-batch's compute ("1f1b overlap",
    # --overlap-moe-expert-parallel-comm)
    a2a_overlap = re.search(r"1f1b overlap|all-to-all overlapped|overlap-moe-expert-parallel-comm", notes,
                            re.IGNORECASE) is not None
    # DeepSeek's DualPipe (named by the framework or notes): its schedule, which overlaps the all-to-all
    dualpipe = pp > 1 and pp % 2 == 0 and re.search(r"dualpipe", f"{s.get('framework') or ''} {notes}",
                                                   re.IGNORECASE) is not None
    a2a_overlap = a2a_overlap or dualpipe
    if recipe == "tensorwise" and framework == "torchtitan":
        recipe = None
    block = block_recompute_layers(notes)
    out = []
    for mb in mbs:
        m = gb // (dp * mb)
        vs = [1] if dualpipe else [vs_known] if vs_known else (
            [v for v in range(1, MAX_VIRTUAL_STAGES + 1)
             if allows("virtual_stages", model, pp=pp, micro_batches=m, virtual_stages=v)])
        for v in vs:
            for rec in recs:
                for z in zeros:
                    for spv in sps:
                        for etp in etps:
                            out.append(Strategy(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, micro_batch=mb, global_batch=gb,
                                                zero_stage=z, recompute=rec, sequence_parallel=spv,
                                                precision=precision, virtual_stages=v, flash_attention=flash,
                                                framework=framework, expert_tp=etp, moe_dispatcher=dispatcher,
                                                tp_comm_overlap=tp_overlap and spv,
                                                recompute_modules=modules if rec == "selective" else None,
                                                lora_rank=lora, fp8_recipe=recipe,
                                                moe_a2a_overlap=a2a_overlap and rec != "full" and (pp == 1 or v > 1
                                                                                                  or dualpipe),
                                                pipeline_schedule="dualpipe" if dualpipe else "1f1b",
                                                recompute_layers=tuple(min(block, L) for L in even_split(model.layers, pp))
                                                if rec == "full" and block and v == 1 else None))
    return out


@dataclass(frozen=True)
class Completion:
    """The completion predict_run chose for a run (its unknown fields filled, layers placed) and what it
    takes to evaluate it again under other constants (planner.validation.fit)."""
    run: dict
    model: ModelSpec
    cluster: Cluster
    metric: str
    measured: float
    evaluation: Evaluation

    def predicted(self) -> float:
        """The run's metric for this completion under the constants in force now."""
        ev = evaluate(self.model, self.evaluation.strategy, self.cluster)
        return _metric(self.metric, ev, self.model, self.run, self.cluster)


def predict_run(run: dict, completions: dict[str, Completion] | None = None) -> RunResult:
    """Predict one runs/v1 row; RunSkipped (or a rule's error) when it cannot be, naming why. With
    `completions`, the chosen completion is stored there under the run's id."""
    rid = str(run.get("id") or "run")
    measured = run.get("measured") or {}
    if not isinstance(measured, dict):
        raise RunSkipped("measured is not an object")
    metric = next((k for k in METRICS if measured.get(k) is not None), None)
    if metric is None:
        raise RunSkipped("no measured step_time_s, tokens_per_s_per_gpu, tflops_per_gpu, mfu, hfu or peak_memory_gb")
    meas = field(run, "measured", metric, float)
    if meas <= 0:
        raise RunSkipped(f"measured.{metric} is {meas!r}; expected a positive number")
    model = run_model(group(run, "model"), str(run.get("notes") or ""))
    cluster = run_cluster(group(run, "hardware"))
    group(run, "strategy")
    gb, derived = run_global_batch(run, model, cluster, memory_only=metric == "peak_memory_gb")
    strategy = {**run["strategy"], "global_batch": gb}
    flash = uses_flash_attention(run)
    framework = run_framework(run)
    cands = candidate_strategies(model, strategy, cluster, flash, implies_sequence_parallel(run), framework,
                                 run.get("notes") or "")
    best: Evaluation | None = None
    broken: StrategyError | None = None
    # a run that states every field of its strategy is predicted as stated even where the memory model says
    # it does not fit (the expert tensor-parallel size, which runs/v1 cannot state, aside); completions of
    # unknown fields must fit
    must_fit = len({st.with_(expert_tp=None) for st in cands}) > 1
    overflow: Evaluation | None = None
    for st in cands:
        try:
            check_strategy(model, st, cluster.num_gpus, cluster.gpus_per_node, tp_across_nodes=True)
        except StrategyError as e:
            broken = broken or e
            continue
        if st.recompute == "full" and not run["strategy"].get("recompute"):
            ev = _best_block_recompute(model, st, cluster)   # unknown recompute: per-stage counts, as tuned
            if ev is None:
                continue
        else:
            ev = evaluate(model, st, cluster)
        if not ev.fits:
            if not must_fit and (overflow is None or ev.step_time_s < overflow.step_time_s):
                overflow = ev
            continue
        if best is None or ev.step_time_s < best.step_time_s:
            best = ev
    best = best or overflow
    if best is None:
        reason = str(broken) if broken is not None and not any_valid(cands, model, cluster) else \
            "no completion of the unknown fields fits in GPU memory"
        return RunResult(id=rid, metric=metric, measured=meas, predicted=None, pct_error=None,
                         skipped=reason)
    predicted = _metric(metric, best, model, run, cluster)
    if completions is not None:
        completions[rid] = Completion(run, model, cluster, metric, meas, best)
    filled = {k: getattr(best.strategy, f) for k, f in (("micro_batch", "micro_batch"), ("virtual_stages", "virtual_stages"),
                                                        ("recompute", "recompute"), ("zero_stage", "zero_stage"))
              if run["strategy"].get(k) is None}
    if derived:
        filled = {"global_batch": gb, **filled}
    statistic = memory_statistic(run)
    mem_meas = measured.get("peak_memory_gb")
    mem_pred = predicted_memory_gb(best, statistic) if mem_meas else None
    return RunResult(id=rid, metric=metric, measured=meas, predicted=predicted,
                     pct_error=(predicted - meas) / meas, filled=filled,
                     peak_memory_gb=max(best.stage_memory_b) / 1e9, framework=framework,
                     memory_measured=mem_meas, memory_predicted=mem_pred, memory_statistic=statistic if mem_meas else None,
                     memory_pct_error=(mem_pred - mem_meas) / mem_meas if mem_meas else None)


def run_global_batch(run: dict, model: ModelSpec, cluster: Cluster, memory_only: bool = False) -> tuple[int, bool]:
    """(global batch in sequences, whether it was derived). A null global_batch is derived when the run
    measures both tokens_per_s_per_gpu and step_time_s: tokens per step / seq_len, accepted when it is
    within 1% of a multiple of dp; a run that measures only peak memory with a known micro-batch gets
    dp x micro-batch x pp x virtual stages (enough micro-batches to fill its pipeline: the peak does not
    depend on more); otherwise the run is skipped, naming the field."""
    s = run["strategy"]
    if s.get("global_batch") is not None:
        return field(run, "strategy", "global_batch"), False
    if memory_only and s.get("micro_batch"):
        return (field(run, "strategy", "dp") * field(run, "strategy", "micro_batch") * field(run, "strategy", "pp")
                * field(run, "strategy", "virtual_stages", required=False, default=1)), True
    m = run.get("measured") or {}
    tok, step = m.get("tokens_per_s_per_gpu"), m.get("step_time_s")
    dp = field(run, "strategy", "dp")
    if tok and step:
        gb = field(run, "measured", "tokens_per_s_per_gpu", float) * cluster.num_gpus * \
            field(run, "measured", "step_time_s", float) / model.seq_len
        k = round(gb / dp)
        if k >= 1 and abs(k * dp - gb) <= 0.01 * gb:
            return k * dp, True
    raise RunSkipped("strategy.global_batch is null (derivable only from measured tokens_per_s_per_gpu x GPUs "
                     "x step_time_s / seq_len, a multiple of dp)")


def any_valid(cands: list[Strategy], model: ModelSpec, cluster: Cluster) -> bool:
    """Whether some candidate passes the rules (so a skip is about memory, not about a rule)."""
    for st in cands:
        try:
            check_strategy(model, st, cluster.num_gpus, cluster.gpus_per_node, tp_across_nodes=True)
            return True
        except StrategyError:
            pass
    return False


def _best_block_recompute(model: ModelSpec, st: Strategy, cluster: Cluster) -> Evaluation | None:
    """Fewest recomputed layers per stage that fit (Megatron's block recompute), layers as the solver
    places them when stages may be uneven."""
    sc = stage_costs(model, st, cluster)
    layout = solve_layout(sc, int(cluster.gpu.memory_bytes), free=True, time_limit_s=5.0)
    if layout is None:
        return None
    final = st.with_(stage_layers=tuple(layout.stage_layers), recompute_layers=tuple(layout.recompute_layers))
    return evaluate_layout(model, final, cluster, sc, layout.stage_layers, layout.recompute_layers)


def _metric(metric: str, ev: Evaluation, model: ModelSpec, run: dict, cluster: Cluster) -> float:
    st = ev.strategy
    n = cluster.num_gpus
    if metric == "peak_memory_gb":     # the most loaded GPU, GB = 1e9 bytes, in the source's statistic
        return predicted_memory_gb(ev, memory_statistic(run))
    if metric == "step_time_s":
        return ev.step_time_s
    if metric == "tokens_per_s_per_gpu":
        return ev.tokens_per_s / n
    flops = step_flops(run, model, st.global_batch)
    if metric == "tflops_per_gpu":
        return flops / ev.step_time_s / n / 1e12
    if metric == "hfu":   # hardware FLOPs: the source's model FLOPs plus the recomputed forward (PaLM, appendix B)
        flops += ev.hardware_flops - ev.model_flops
    return flops / ev.step_time_s / (n * mfu_peak(run, cluster, st.precision))


def mfu_peak(run: dict, cluster: Cluster, precision: str) -> float:
    """The peak (FLOP/s per GPU) the source divides by: a figure its flops_counting text states that
    matches one of this GPU's datasheet peaks, else the 16-bit peak (fp8 runs are usually reported against
    the bf16 peak, e.g. Llama 3's 'BF16 peak 989 TFLOP/s'), else the precision's own peak."""
    gpu = cluster.gpu
    text = run.get("measured", {}).get("flops_counting") or ""
    peaks = {round(v, 1) for v in gpu.tflops.values() if v}
    for num in re.findall(r"\d+(?:\.\d+)?", text):
        if round(float(num), 1) in peaks:
            return float(num) * 1e12
    for p16 in ("bf16", "fp16"):
        if gpu.tflops.get(p16):
            return gpu.tflops[p16] * 1e12
    return gpu.peak_tflops(precision) * 1e12


def step_flops(run: dict, model: ModelSpec, global_batch: int) -> float:
    """FLOPs per step in the source's own convention (runs/README.md, `flops_counting`)."""
    conv = (run.get("measured", {}).get("flops_counting") or "").lower()
    if "narayanan" in conv or "96*b*s*l*h" in conv.replace(" ", ""):
        return narayanan_flops_per_step(model, global_batch, model.seq_len)
    if "foundry" in conv or "6*n*s" in conv.replace(" ", ""):
        params_b = run.get("model", {}).get("params_b")
        return llm_foundry_flops_per_step(model, global_batch, model.seq_len, params_b * 1e9 if params_b else None)
    return model_flops_per_step(model, global_batch, model.seq_len)
