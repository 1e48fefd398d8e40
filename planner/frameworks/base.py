"""What every framework module shares: the Export and the error types, the canonical spelling of a plan,
the one even split of layers that the frameworks use, and the header written above emitted files.

The framework modules (megatron, deepspeed, torchtitan, vllm) import this module and nothing else of
planner.frameworks; planner.frameworks.api dispatches to them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from costmodels.model import ModelSpec
from costmodels.performance import resolve_layout
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.errors import PlannerError

_PLAN_ONLY = ("micro_batches", "schedule")   # PlanOut.strategy keys that are not Strategy fields


class ExportError(PlannerError):
    """A plan the framework cannot express; the message names the nearest plan it can."""


class ConfigImportError(PlannerError):
    """A config that cannot be read as a plan; the message names the value and what is allowed."""


@dataclass(frozen=True)
class Export:
    framework: str
    strategy: Strategy                 # the plan written: the one asked for, or its nearest expressible form
    files: dict[str, str]              # file name -> content
    notes: tuple[str, ...] = ()        # what changed to make the plan expressible, and what to fill in
    step_time_s: float | None = None   # predicted step time of `strategy`
    fits: bool = True

    def text(self) -> str:
        return "\n".join(f"# ---- {name} ----\n{body.rstrip()}\n" for name, body in self.files.items())

    def as_json(self) -> dict:
        st = self.strategy.as_dict()
        return {"framework": self.framework, "strategy": st, "step_time_s": self.step_time_s, "fits": self.fits,
                "notes": list(self.notes), "files": dict(self.files)}

    def write(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, body in self.files.items():
            p = out / name
            p.write_text(body)
            if name.endswith(".sh"):
                p.chmod(0o755)
            paths.append(p)
        return paths


# ---- strategies: from a plan, canonical form ----------------------------------------------------

def strategy_from_plan(d: dict) -> Strategy:
    """The Strategy of a PlanOut.strategy dict (as_dict plus the layout lists)."""
    kw = {k: v for k, v in d.items() if k not in _PLAN_ONLY}
    for key in ("stage_layers", "recompute_layers", "recompute_modules"):
        if kw.get(key) is not None:
            kw[key] = tuple(kw[key])
    if kw.get("recompute") != "full":
        kw["recompute_layers"] = None
    return Strategy(**kw)


def canonical(model: ModelSpec, st: Strategy) -> Strategy:
    """One spelling per plan: Strategy.with_layout of the plan's own (resolved) layout."""
    return st.with_layout(*resolve_layout(model, st))


def chunks(n: int, parts: int) -> list[int]:
    """n layers over `parts` parts, as even as possible, the first `n % parts` parts one layer more.

    The one split the frameworks share: a stage's layers over its interleaved model chunks (Megatron's
    layout string, torchtitan's model parts), and DeepSpeed's PipelineModule stages (partition_uniform,
    deepspeed/runtime/utils.py, gives the first stages the extra layers). The planner's own default stage
    split, costmodels.performance.even_split, puts the extra layers in the middle stages instead: a
    different layout, which Megatron writes with --pipeline-model-parallel-layout."""
    base, extra = divmod(n, parts)
    return [base + (1 if c < extra else 0) for c in range(parts)]


def stage_chunks(L: int, v: int, i: int, p: int) -> list[int]:
    """Stage i's L layers over its v interleaved chunks (`chunks`); a first or last stage with one layer
    fewer than chunks (costmodels.performance.min_stage_layers) leaves its first chunk to the embedding alone,
    or its last chunk to the loss alone (Megatron-core layouts "E|" and "|L")."""
    if L >= v or v == 1:
        return chunks(L, v)
    return [0] + chunks(L, v - 1) if i == 0 else chunks(L, v - 1) + [0]


# The framework version each exporter writes for (its argument names and config keys; the versions the
# tests check against where the framework installs on CPU): name -> (version, what the files say)
TARGETS = {
    "megatron": ("0.16", "Megatron-LM core_r0.16 (megatron-core 0.16)"),
    "deepspeed": ("0.19", "DeepSpeed 0.19"),
    "torchtitan": ("0.3", "torchtitan 0.3 (Python config function + command line)"),
    "vllm": ("0.11", "vLLM 0.11 engine arguments"),
    "sglang": ("0.5", "SGLang 0.5 server arguments (python -m sglang.launch_server)"),
    "trtllm": ("1.0", "TensorRT-LLM 1.0 trtllm-serve, PyTorch backend"),
    "bridge": ("0.3", "Megatron-Bridge 0.3 (its recipe with the plan's ConfigContainer settings; megatron-core 0.16)"),
}
SERVING_ENGINES = ("vllm", "sglang", "trtllm")
# older versions an exporter also writes for, behind `--emit NAME@VERSION`
OLDER_TARGETS = {"torchtitan": {"0.2": "torchtitan 0.2 (TOML job config)"}}


def parse_target(text: str) -> str:
    """`--emit NAME` or `NAME@VERSION`: the framework name when the version asked is the one written by default
    (TARGETS), `NAME@VERSION` for an older version an exporter also writes (OLDER_TARGETS); ValueError naming
    the versions written otherwise."""
    name, _, version = text.strip().partition("@")
    if name not in TARGETS:
        raise ValueError(f"--emit {text!r}: choose one of {', '.join(TARGETS)} (optionally @VERSION)")
    want, what = TARGETS[name]
    if not version or version == want or version.startswith(want + "."):
        return name
    for older in OLDER_TARGETS.get(name, {}):
        if version == older or version.startswith(older + "."):
            return f"{name}@{older}"
    offered = " or ".join([f"{name}@{want}", *(f"{name}@{v}" for v in OLDER_TARGETS.get(name, {}))])
    raise ValueError(f"--emit {text}: the {name} export writes for {what}; version {version} is not supported "
                     f"(give {name} or {offered})")


def split_target(target: str) -> tuple[str, str]:
    """("torchtitan", "0.2") for "torchtitan@0.2", (name, its default version) for a bare name."""
    name, _, version = target.partition("@")
    return name, version or (TARGETS[name][0] if name in TARGETS else "")


def target_text(target: str) -> str:
    """What the files written for `target` (NAME or NAME@VERSION) say they target."""
    name, version = split_target(target)
    return OLDER_TARGETS.get(name, {}).get(version) or TARGETS[name][1]


def header(model: ModelSpec, st: Strategy, cluster: Cluster, what: str, notes: list[str],
           framework: str | None = None) -> list[str]:
    """Comment lines above an emitted file: what it is, the framework version it targets, the plan, the notes."""
    from planner.solve.result import describe_strategy
    lines = [f"# {what} for {model.name} on {cluster.describe()}, written by llm-planner (plan --emit)"]
    if framework is not None:
        lines.append(f"# targets: {target_text(framework)}")
    lines.append(f"# plan: {describe_strategy(st.as_dict())}")
    return lines + [f"# note: {n}" for n in notes]


def prepend_note(body: str, note: str) -> str:
    """A '# NOTE:' line at the top of a file (after its #! line)."""
    first, _, rest = body.partition("\n")
    if first.startswith("#!"):
        return f"{first}\n# NOTE: {note}\n{rest}"
    return f"# NOTE: {note}\n{body}"


# ---- serving engines: what their commands share ----------------------------------------------------------

HF_IDS = {
    "llama2-7b": "meta-llama/Llama-2-7b-hf", "llama2-13b": "meta-llama/Llama-2-13b-hf",
    "llama2-70b": "meta-llama/Llama-2-70b-hf", "llama3-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3-70b": "meta-llama/Llama-3.1-70B-Instruct", "llama3-405b": "meta-llama/Llama-3.1-405B-Instruct",
    "mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x22b": "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "deepseek-v3": "deepseek-ai/DeepSeek-V3", "qwen3-235b-a22b": "Qwen/Qwen3-235B-A22B",
}


def model_name(model: ModelSpec, model_path: str | None) -> str:
    """What a serving command loads: the config.json folder given, the preset's Hugging Face id, or a
    placeholder naming the checkpoint needed."""
    return model_path or HF_IDS.get(model.name) or f"<{model.name} checkpoint>"


_CHECKPOINTS = {"int8": "an 8-bit GPTQ checkpoint of the model", "int4": "a 4-bit AWQ checkpoint of the model",
                "fp8-checkpoint": "an FP8 checkpoint of the model (e.g. quantised with NVIDIA ModelOpt)"}


def checkpoint_note(weights: str) -> str:
    """'# needs ...' (with its newline) when the plan's weights need a quantised checkpoint, else ''."""
    need = _CHECKPOINTS.get(weights)
    return f"# needs {need}\n" if need else ""


def flatten(doc: dict, prefix: str = "") -> dict[str, object]:
    """The leaves of a nested config (JSON, TOML, YAML) as dotted keys: {"zero_optimization.stage": 2, ...};
    what each importer reports as read and as ignored."""
    out: dict[str, object] = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_and_ignored(doc: dict, read_keys) -> tuple[dict[str, object], list[str]]:
    """An importer's report on a config: the leaves it reads (dotted key -> value; `read_keys`) and the sorted
    keys of the others, which it ignores."""
    leaves = flatten(doc)
    return ({k: v for k, v in leaves.items() if k in read_keys}, sorted(k for k in leaves if k not in read_keys))
