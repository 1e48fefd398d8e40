"""Export a plan as configuration the real training frameworks accept, and read one back: the dispatch
over the framework modules.

- `megatron` (planner.frameworks.megatron): Megatron-LM `pretrain_gpt.py` arguments (megatron_args.sh)
  and a torchrun launch.sh;
- `deepspeed` (planner.frameworks.deepspeed): a DeepSpeed JSON config (ds_config.json) and a `deepspeed`
  launch.sh;
- `torchtitan` (planner.frameworks.torchtitan): a config function (job.py, torchtitan 0.3: `--module job
  --config plan`) and a torchrun launch.sh; `torchtitan@0.2` writes its TOML job config (job.toml) instead;
- `bridge` (planner.frameworks.bridge): a Megatron-Bridge job (bridge_job.py: its recipe for the model with the
  plan's ConfigContainer settings, then `pretrain`) and a torchrun launch.sh; priced and checked as Megatron-LM.

`export` raises ExportError, naming the nearest expressible plan, for what a framework cannot express; a
stage layout or recompute count it cannot express exactly is replaced by the nearest one it can, and
`Export.notes` says so and gives that plan's predicted step time. `export_best` does the same for a search
result, and when the best plan cannot be expressed at all it searches again over the framework's part of
the space. `import_plan` predicts an imported plan (planner.frameworks.megatron.read_megatron_args,
planner.frameworks.deepspeed.read_deepspeed_config) and asks the search what would be better.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from costmodels.model import ModelSpec
from costmodels.performance import resolve_layout
from costmodels.strategy import Strategy
from hardware import Cluster
from planner.frameworks import bridge, deepspeed, megatron, torchtitan
from planner.frameworks.base import Export, ExportError, canonical, prepend_note, split_target, strategy_from_plan
from planner.solve.evaluate import evaluate
from planner.solve.rules import framework_problem, setting_problem
from planner.solve.space import for_framework

_MODULES = {"megatron": megatron, "deepspeed": deepspeed, "torchtitan": torchtitan, "bridge": bridge}
# the framework whose accounting and rules an exporter's plans follow (Megatron-Bridge runs Megatron-core)
ACCOUNTING = {"bridge": "megatron"}
FRAMEWORKS = tuple(_MODULES)
NAMES = {k: m.NAME for k, m in _MODULES.items()}
RESEARCH_TOP = 5        # plans of the framework-restricted search re-ranked by their expressible layout


def _module(framework: str):
    framework = split_target(framework)[0]
    if framework not in _MODULES:
        raise ExportError(f"framework {framework!r} is not known; choose {', '.join(FRAMEWORKS)}")
    return _MODULES[framework]


def accounting(framework: str) -> str:
    """The framework whose memory accounting and rules `framework`'s plans follow (ACCOUNTING)."""
    name = split_target(framework)[0]
    return ACCOUNTING.get(name, name)


def unsupported(framework: str, model: ModelSpec, st: Strategy) -> str | None:
    """Why `framework` cannot run this plan at all (with the nearest plan it can), or None: the framework's
    rules in planner/solve/rules.py."""
    _module(framework)
    return framework_problem(accounting(framework), model, st)


def space_for(framework: str, opts):
    """The part of a search space (planner.solve.space.SpaceOptions) that `framework` can express: the
    search applies the framework's rules."""
    _module(framework)
    return for_framework(opts, accounting(framework))


def nearest_layout(framework: str, model: ModelSpec, st: Strategy) -> tuple[Strategy, list[str]]:
    """The plan with its stage layout and recompute counts made expressible, and what changed."""
    mod = _module(framework)
    st = canonical(model, st)
    Ls, Rs = resolve_layout(model, st)
    new_Ls, new_Rs, notes = mod.nearest_layout(model, st, Ls, Rs)
    if (list(new_Ls), list(new_Rs)) == (Ls, Rs):
        return st, notes
    return st.with_layout(new_Ls, new_Rs), notes


def export(framework: str, model: ModelSpec, st: Strategy, cluster: Cluster) -> Export:
    """Configuration files for `framework` running `st`; ExportError if it cannot express the plan.
    `framework` may name a version the exporter also writes for ("torchtitan@0.2", base.OLDER_TARGETS)."""
    target, framework = framework, split_target(framework)[0]
    mod = _module(framework)
    if isinstance(cluster, tuple):
        if len(cluster) > 1:
            raise ExportError("export needs one GPU type; a cluster of several GPU pools cannot be written as one "
                              "framework config")
        cluster = cluster[0]
    st = st.with_(framework=accounting(framework))   # priced in the accounting of the framework that runs it
    reason = unsupported(framework, model, st)
    if reason:
        raise ExportError(reason)
    asked = canonical(model, st)
    st, notes = nearest_layout(framework, model, st)
    ev = evaluate(model, st, cluster)
    if st != asked:
        before = evaluate(model, asked, cluster).step_time_s
        notes.append(f"predicted step time of the plan written: {ev.step_time_s:.3f} s (the plan asked for: "
                     f"{before:.3f} s, {100 * (ev.step_time_s / before - 1):+.1f}%)"
                     + ("" if ev.fits else "; it does NOT fit in GPU memory"))
    return Export(framework, st, mod.files(model, st, cluster, notes, split_target(target)[1]), tuple(notes),
                  ev.step_time_s, ev.fits)


def export_best(framework: str, model: ModelSpec, cluster: Cluster, result, opts, time_limit_s: float = 30.0) -> Export:
    """Export a search result's best plan; when `framework` cannot express it, search again over the part
    of the space it can (space_for) and export that plan, saying how much slower it is predicted to be."""
    from planner.solve.optimize import NoPlanError, search

    target, framework = framework, split_target(framework)[0]
    best = strategy_from_plan(result.plans[0].strategy)
    reason = unsupported(framework, model, best)
    if not reason:
        ex = export(target, model, best, cluster)
        t0 = result.plans[0].step_time_s
        if ex.step_time_s <= t0 * (1 + 1e-9):
            return ex
        # the layout the framework writes (e.g. Megatron's one recompute count per chunk) costs time: a
        # runner-up it writes as it is may be faster
        candidates = [strategy_from_plan(p.strategy) for p in result.plans[1:]]
        if best.recompute == "full":     # and the best plan of the space without per-stage block recompute
            no_block = replace(space_for(framework, opts), recompute=("none", "selective"))
            try:
                candidates += [strategy_from_plan(p.strategy) for p in
                               search(model, cluster, top=1, time_limit_s=time_limit_s, space=no_block).plans]
            except NoPlanError:          # nothing fits without it
                pass
        others = [export(target, model, st, cluster) for st in candidates if not unsupported(framework, model, st)]
        alt = min(others, key=lambda e: (not e.fits, e.step_time_s), default=None)
        if alt is None or not alt.fits or alt.step_time_s >= ex.step_time_s:
            return ex
        note = (f"the best plan as {NAMES[framework]} writes it is predicted {ex.step_time_s:.3f} s per step; written "
                f"instead: another plan it writes unchanged, {alt.step_time_s:.3f} s ({100 * (alt.step_time_s / t0 - 1):+.1f}% "
                f"against the best plan's {t0:.3f} s)")
        first = next(k for k in alt.files if not k.endswith(".json"))
        files = {k: prepend_note(v, note) if k == first else v for k, v in alt.files.items()}
        return replace(alt, files=files, notes=(note, *alt.notes))
    if setting_problem(accounting(framework), model, best):      # no structure helps: say what to change
        raise ExportError(reason)
    again = search(model, cluster, top=RESEARCH_TOP, time_limit_s=time_limit_s, space=space_for(framework, opts))
    # the search chooses layouts freely; rank its best few again by the layout the framework can write
    options = [export(target, model, strategy_from_plan(p.strategy), cluster) for p in again.plans]
    ex = min(options, key=lambda e: (not e.fits, e.step_time_s))
    t0, t1 = result.plans[0].step_time_s, ex.step_time_s
    note = (f"the best plan cannot be written for {NAMES[framework]}: {reason}. Written instead: the fastest "
            f"{NAMES[framework]}-expressible plan among the best {len(options)} of a search over that part of the "
            f"space, predicted {t1:.3f} s per step vs {t0:.3f} s ({100 * (t1 / t0 - 1):+.1f}%)")
    first = next(k for k in ex.files if not k.endswith(".json"))   # JSON has no comments
    files = {k: prepend_note(v, note) if k == first else v for k, v in ex.files.items()}
    return replace(ex, files=files, notes=(note, *ex.notes))


@dataclass
class ImportResult:
    imported: object       # SearchResult of the imported plan (planner.solve.optimize.evaluate_strategy)
    best: object           # SearchResult of the search over the whole space
    speedup: float         # imported step time / best step time

    @property
    def fits(self) -> bool:
        """Whether the imported plan fits (its verdict, imported.plans[0].verdict, says by how much)."""
        return self.imported.plans[0].fits


def import_plan(model: ModelSpec, cluster: Cluster, st: Strategy, time_limit_s: float = 30.0,
                headroom=None) -> ImportResult:
    """Predict an imported plan with the cost model and search for a better one on the same cluster; both
    keep `headroom` (planner.solve.evaluate.Headroom) free on every GPU. An imported plan that does not fit
    is still predicted (ImportResult.fits is False); NoPlanError when no plan fits at all."""
    from planner.solve.evaluate import Headroom
    from planner.solve.optimize import evaluate_strategy, search
    from planner.solve.space import SpaceOptions

    headroom = headroom or Headroom()
    imported = evaluate_strategy(model, cluster, st, headroom)
    opts = SpaceOptions(global_batch=st.global_batch, precision=st.precision, optimizer=st.optimizer,
                        flash_attention=st.flash_attention, fp32_grads=st.fp32_grads, headroom=headroom,
                        framework=st.framework, moe_dispatcher=st.moe_dispatcher,
                        tp_comm_overlap=st.tp_comm_overlap)   # better plans in the same framework, priced the same way
    best = search(model, cluster, top=1, time_limit_s=time_limit_s, space=opts)
    return ImportResult(imported, best, imported.plans[0].step_time_s / best.plans[0].step_time_s)


def with_serving_commands(result, model: ModelSpec, model_path: str | None = None):
    """A serving result (planner.serving.search.serve_plan) with its best plan's launch command for every engine
    (`commands`: vllm, sglang, trtllm) and `vllm_command`."""
    from planner.frameworks.sglang import sglang_command
    from planner.frameworks.trtllm import trtllm_command
    from planner.frameworks.vllm import vllm_command

    util = result.assumptions["gpu_memory_utilization"]
    rq = result.request
    args = (model, result.plan, rq["prompt_tokens"], rq["output_tokens"], util, model_path)
    cmds = {"vllm": vllm_command(*args), "sglang": sglang_command(*args), "trtllm": trtllm_command(*args)}
    return result.model_copy(update={"vllm_command": cmds["vllm"], "commands": cmds})


__all__ = ["FRAMEWORKS", "NAMES", "Export", "ExportError", "export", "export_best", "strategy_from_plan",
           "canonical", "unsupported", "space_for", "nearest_layout", "ImportResult", "import_plan", "with_serving_commands"]
