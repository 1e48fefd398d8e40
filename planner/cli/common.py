"""Shared pieces of the command line: the user-error type, option groups, loading, output helpers."""
from __future__ import annotations

import json
import os

import click

EXAMPLES = """\b
Examples:
  plan --model 175b --gpus 1024xA100
  plan --model llama3-405b --gpus 16384xH100 --global-batch 2048 --top 5
  plan --model ./config.json --gpus 64x8xH100 --format json
  plan evaluate --model 175b --gpus 1024xA100 --tp 8 --pp 16 --micro-batch 1
  plan models | plan gpus

\b
Exit codes: 0 done; 3 `plan evaluate` / `plan import`: the plan was evaluated
and does not fit (full output printed, its verdict says what is over); 2 bad
input, an impossible request or no plan that fits (one line on stderr);
1 an internal error (a traceback: please report it); 130 interrupted.
"""

EXIT_DOES_NOT_FIT = 3
# the most tokens one optimizer step may hold: ~15x the largest published batch (DeepSeek-V3 ramps to
# 15360 x 4096 = 63M tokens), so only typing slips are refused
MAX_TOKENS_PER_STEP = 1e9


class PlanDoesNotFit(click.exceptions.Exit):
    """Raised by `plan evaluate` and `plan import` after the full output (table or JSON) is printed, when the
    plan evaluated does not fit in memory: exit code 3 (EXIT_DOES_NOT_FIT), no further message, since the
    verdict is in the output. Not a user error: the input was valid and the answer is "it does not fit".
    (A click Exit: click returns its code from Command.main(standalone_mode=False), which planner.cli.main
    passes to sys.exit, and exits with it in standalone mode.)"""

    def __init__(self) -> None:
        super().__init__(EXIT_DOES_NOT_FIT)


HEADROOM_HELP = ("GPU memory kept free on every GPU on top of the model's own accounting: a share of each GPU's "
                 "memory (5%) or an amount (4GB, 3.5GiB, 512MB). Only plans whose peak is at most capacity minus "
                 "headroom fit, and the verdict says what is left after it. [default: 0 extra: the accounting "
                 "already reserves 1 GB per GPU for workspaces, NCCL and allocator slack and counts capacity as "
                 "datasheet GB x 1e9 bytes, below the GiB the GPU has (an 80 GB A100 reports 81920 MiB); with it "
                 "the four configurations Korthikanti et al. 2022 (Table 3) trained on 80 GB A100s need "
                 "67.0-73.6 GB. Add what your own stack shows, e.g. PyTorch's max_memory_reserved minus "
                 "max_memory_allocated.]")



class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:  # one line, no usage block
        click.echo(f"error: {self.format_message()}", err=True)


GRADS_HELP = ("Gradients the optimizer reads: fp32 (Megatron-LM and DeepSpeed default: bf16 accumulates and "
              "reduces them in fp32, fp16 keeps an fp32 copy; 18 or 20 B/param before ZeRO) or 16bit (the ZeRO "
              "paper's 16 B/param; Megatron --grad-reduce-in-bf16).")


def _common(f):
    """Options shared by the search and `evaluate`."""
    opts = [
        click.option("--model", "model_name", required=True,
                     help="Preset name or alias (see `plan models`), or a Hugging Face config.json path."),
        click.option("--gpus", required=True,
                     help="Cluster: COUNTxGPU or NODESxPER_NODExGPU, e.g. 1024xA100, 128x8xH100 (see `plan gpus`)."),
        click.option("--hardware", "hardware_files", multiple=True, type=click.Path(),
                     help="JSON/YAML file adding or overriding GPU catalog entries (same schema as the catalog)."),
        click.option("--seq-len", type=int, help="Training sequence length in tokens [default: the preset's]."),
        click.option("--global-batch", type=int,
                     help="Sequences per optimizer step [default: the preset's published batch]."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "fp8"]),
                     help="Compute precision [default: the preset's]."),
        click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
                     help="Optimizer (sets optimizer-state bytes and step traffic)."),
        click.option("--no-flash-attention", is_flag=True,
                     help="Model unfused attention (stores the s^2 score tensors)."),
        click.option("--grads", type=click.Choice(["fp32", "16bit"]), default="fp32", show_default=True,
                     help=GRADS_HELP),
        click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True),
        NETWORK_OPTION,
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _catalog(hardware_files, prices=()):
    """The GPU catalog with --hardware files and --price NAME=USD overrides (hardware.catalog.parse_prices)
    applied."""
    from hardware import HardwareError, load_catalog
    from hardware.catalog import parse_prices

    catalog = load_catalog(hardware_files)
    if prices:
        try:
            catalog = catalog.with_prices(parse_prices(prices))
        except HardwareError as e:
            raise UserError(str(e)) from None
    gbits = network_override()
    if gbits is not None:
        catalog = catalog.with_network(gbits)
    fabric = fabric_override()
    if fabric is not None:
        catalog = catalog.with_fabric(*fabric)
    return catalog


def network_override() -> float | None:
    """--network GBITS of the running command (NETWORK_OPTION), else None."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.find_root().meta.get("network_gbits")


def _set_network(ctx, param, value):
    if value is not None:
        if not (value > 0 and value <= 100_000):
            raise UserError(f"--network {value:g} is not allowed; give the network rate per GPU in Gb/s, e.g. 200")
        ctx.find_root().meta["network_gbits"] = value
    return value


# a DGX SuperPOD scalable unit: 32 nodes of 8 GPUs under one set of leaf switches (NVIDIA DGX SuperPOD
# reference architecture, DGX H100: "scalable unit (SU) of 32 DGX H100 systems"); rail-optimised leaves
LEAF_GPUS_DEFAULT = 256


def fabric_override() -> tuple[float, int] | None:
    """(oversubscription, leaf GPUs) of --oversubscription R[@LEAF_GPUS], else None."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.find_root().meta.get("fabric")


def _set_fabric(ctx, param, value):
    if value is None:
        return value
    ratio, _, leaf = str(value).strip().partition("@")
    try:
        r = float(ratio.split(":")[0])
        n = int(leaf) if leaf else LEAF_GPUS_DEFAULT
    except ValueError:
        raise UserError(f"--oversubscription {value!r}: give RATIO or RATIO@LEAF_GPUS, e.g. 2 or 2:1@256") from None
    if not (1 <= r <= 64) or n < 1:
        raise UserError(f"--oversubscription {value!r}: the ratio goes from 1 (non-blocking) to 64 and a leaf holds "
                        f">= 1 GPU")
    ctx.find_root().meta["fabric"] = (r, n)
    return value


NETWORK_OPTION = click.option(
    "--network", type=float, metavar="GBITS", callback=_set_network, expose_value=False,
    help="Network rate per GPU across nodes, Gb/s (e.g. 200 for one 200 Gb/s NIC per GPU), replacing the "
         "catalog's for every GPU type; the cluster line says so.")
FABRIC_OPTION = click.option(
    "--oversubscription", metavar="RATIO[@LEAF_GPUS]", callback=_set_fabric, expose_value=False,
    help="The network above the leaf switches: RATIO:1 oversubscribed (e.g. 2 or 2:1), each leaf (rail group) "
         f"holding LEAF_GPUS GPUs [default leaf: {LEAF_GPUS_DEFAULT}, a DGX SuperPOD scalable unit of 32 nodes]. A "
         "data-parallel, expert-parallel or context-parallel group reaching past one leaf gets the network rate / "
         "RATIO [default: non-blocking].")


def _load(model_name: str, gpus: str, hardware_files, seq_len, global_batch, precision, prices=()):
    from costmodels.model import ModelSpec
    from costmodels.presets import get_model
    from hardware import parse_pools

    catalog = _catalog(hardware_files, prices)
    pools = parse_pools(gpus, catalog) if gpus else ()
    gbits, fabric = network_override(), fabric_override()
    if gbits is not None or fabric is not None:
        import dataclasses
        said = "; ".join(x for x in (
            f"network {gbits:g} Gb/s per GPU (--network, in place of the catalog's rate)" if gbits is not None else "",
            f"network {fabric[0]:g}:1 oversubscribed above leaves of {fabric[1]} GPUs (--oversubscription): groups "
            f"reaching past a leaf get 1/{fabric[0]:g} of the rate" if fabric is not None else "") if x)
        pools = tuple(dataclasses.replace(p, note=f"{p.note}; {said}" if p.note else said) for p in pools)
    model, note = get_model(model_name)
    if seq_len is not None:
        if seq_len < 1:
            raise UserError(f"--seq-len {seq_len} is not allowed; give a positive number of tokens")
        if model.max_context is not None and seq_len > model.max_context:
            raise UserError(f"--seq-len {seq_len} is past {model.name}'s context of {model.max_context:,} tokens "
                            f"(config max_position_embeddings); give at most {model.max_context:,}, or a config.json "
                            f"whose positions reach further")
        model = ModelSpec(**{**model.model_dump(), "seq_len": seq_len})
    if global_batch is not None and global_batch < 1:
        raise UserError(f"--global-batch {global_batch} is not allowed; give a positive number of sequences")
    if global_batch is not None and global_batch * model.seq_len > MAX_TOKENS_PER_STEP:
        raise UserError(f"--global-batch {global_batch} x {model.seq_len:,} tokens = {global_batch * model.seq_len:.3g} "
                        f"tokens per step is past {MAX_TOKENS_PER_STEP:.0e}; published runs use 1-60M (Llama 3 405B: "
                        f"16M, DeepSeek-V3: 63M)")
    for pool in pools:
        pool.gpu.peak_tflops(precision or model.precision)  # raises if a GPU has no such peak
    return model, note, pools


def _emit(result, fmt: str, title: str = "Best plan") -> None:
    if fmt == "json":
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=True))
        return

    from planner.report.text import render_search
    render_search(result, _console(), title=title)


class _progress:
    """A progress bar on a terminal for searches that run past a second (never in JSON mode)."""

    def __init__(self, fmt: str):
        self.fmt, self.bar, self.task, self.t0 = fmt, None, None, None

    def __enter__(self):
        import time
        self.t0 = time.perf_counter()
        return self

    def __call__(self, done: int, total: int) -> None:
        import time
        if self.fmt != "table" or time.perf_counter() - self.t0 < 1.0:
            return
        if self.bar is None:
            from rich.progress import Progress
            console = _console()
            if not console.is_terminal:
                self.fmt = "off"
                return
            self.bar = Progress(console=console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("searching (structures visited by bound)", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def _console():
    from rich.console import Console
    console = Console(highlight=False)
    if not console.is_terminal:  # pipes and files: wide enough that tables keep their columns
        console = Console(highlight=False, width=140)
    return console


def _int_tuple(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--{name} {text!r} is not a comma-separated list of whole numbers, e.g. 2,4,8") from None
    if any(v < 0 for v in vals):
        raise UserError(f"--{name} {text!r} has a negative value; use whole numbers >= 0")
    return vals


def _export_options(f):
    """--emit / --out: write the plan as a training framework's configuration (planner.frameworks.api)."""
    f = click.option("--out", "out_dir", type=click.Path(file_okay=False),
                     help="With --emit: write the configuration files into this folder and print their paths.")(f)
    return click.option("--emit", metavar="FRAMEWORK[@VERSION]", callback=_emit_target,
                        help="Also print the plan as Megatron-LM arguments (megatron), a Megatron-Bridge job "
                             "(bridge: its recipe with the plan's settings), a DeepSpeed JSON config (deepspeed) or "
                             "a torchtitan config function and launch line (torchtitan; torchtitan@0.2: its TOML "
                             "job config) (JSON output: plans[0].emit). Each file names the version it is written "
                             "for (megatron@0.16, bridge@0.3, deepspeed@0.19, torchtitan@0.3 or @0.2); another "
                             "version is refused.")(f)


def _emit_target(ctx, param, value):
    """--emit NAME[@VERSION] -> NAME (planner.frameworks.base.parse_target): one line for anything else."""
    if value is None:
        return None
    from planner.frameworks.base import parse_target
    try:
        name = parse_target(value)
    except ValueError as e:
        raise UserError(str(e)) from None
    if name == "vllm":
        raise UserError(f"--emit {value}: vLLM serves models; use `plan serve ... --emit vllm`")
    return name


FRAMEWORK_HELP = ("The training framework that runs the plan: its memory accounting and its structural rules. "
                  "megatron: Megatron-core (distributed optimizer, fp32 gradient buffer, fused kernels, selective = "
                  "attention-core recompute); torchtitan: FSDP2 (fp32 parameter shards, bf16 gathers, eager loss, "
                  "selective = per-op AC, FSDP with TP, PP and CP); deepspeed: ZeRO 1-3 with its default buckets. "
                  "[default: the --emit framework, else Megatron-core's accounting over every structure]")


def _comm_options(f):
    """--moe-dispatcher and --tp-comm-overlap: how the plan's collectives run (Strategy fields)."""
    f = click.option("--tp-comm-overlap", is_flag=True,
                     help="Overlap the tensor-parallel all-gathers / reduce-scatters with the GEMMs they feed "
                          "(Megatron-LM --tp-comm-overlap: Transformer Engine userbuffers, needs sequence "
                          "parallel; exported as that flag).")(f)
    f = click.option("--moe-a2a-overlap", is_flag=True,
                     help="Overlap each micro-batch's MoE all-to-all with another's compute (Megatron-core "
                          "--overlap-moe-expert-parallel-comm; plans with interleaving when pp > 1 and no full "
                          "recompute use it).")(f)
    f = click.option("--fp8-recipe", type=click.Choice(["delayed", "tensorwise", "mxfp8", "blockwise"]),
                     help="With --precision fp8: the scaling recipe (Megatron-core --fp8-recipe): per-tensor delayed "
                          "or current (tensorwise) scaling, MXFP8 (Blackwell only) or block-wise (DeepSeek-V3). "
                          "[default: the framework's: Megatron-core delayed, torchtitan tensorwise]")(f)
    f = click.option("--lora-rank", type=click.IntRange(min=1),
                     help="LoRA fine-tuning: freeze the base weights (no gradients, optimizer states or "
                          "weight-gradient GEMMs for them) and train adapters of this rank on every linear layer "
                          "of the blocks; ZeRO 0/1, no offload. Priced only: no framework config writes it.")(f)
    return click.option("--moe-dispatcher", type=click.Choice(["alltoall", "deepep"]), default="alltoall",
                        show_default=True,
                        help="MoE token dispatch: alltoall sends one copy per (token, expert); deepep (Megatron-core "
                             "flex dispatcher with DeepEP) one copy per destination node over the network, "
                             "forwarded over NVLink. deepep needs DeepEP installed (NVSHMEM, RDMA).")(f)


def _framework_option(f):
    """--framework: whose memory accounting and rules (costmodels.strategy.FRAMEWORK_CHOICES)."""
    return click.option("--framework", type=click.Choice(["megatron", "torchtitan", "deepspeed"]),
                        help=FRAMEWORK_HELP)(f)


def _resolve_framework(framework: str | None, emit: str | None) -> str | None:
    """The framework a command prices and checks the plan for: --framework, else the --emit target."""
    if emit:     # priced and checked in the accounting its exporter follows (bridge: Megatron-core's)
        from planner.frameworks.api import accounting
        emit = accounting(emit)
    if framework and emit and framework != emit:
        raise UserError(f"--framework {framework} and --emit {emit} name different frameworks; give one (the "
                        f"plan is priced and checked for the framework it is written for)")
    return framework or emit


def _check_export_options(emit, out_dir) -> None:
    if out_dir and not emit:
        raise UserError(f"--out {out_dir!r} needs --emit megatron, bridge, deepspeed or torchtitan")


def _show_export(result, fmt: str, ex, out_dir) -> None:
    """Print (or write) an Export after the plan; in JSON mode, the whole document with plans[0].emit."""
    if ex is None:
        return
    paths = [str(p) for p in ex.write(out_dir)] if out_dir else []
    if fmt == "json":
        doc = result.model_dump(mode="json")
        doc["plans"][0]["emit"] = {**ex.as_json(), "paths": paths}
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    from planner.frameworks.api import NAMES
    click.echo(f"\n{NAMES[ex.framework]} configuration" + (f" (predicted step {ex.step_time_s:.3f} s)" if ex.notes else ""))
    for n in ex.notes:
        click.echo(f"note: {n}")
    if paths:
        click.echo("written: " + ", ".join(paths))
    else:
        click.echo(ex.text().rstrip())




def _check_fp8_recipe(recipe: str | None, precision: str | None, clusters) -> None:
    """MXFP8 needs Blackwell's tensor cores (Transformer Engine: MXFP8BlockScaling on compute capability 10+)."""
    if recipe is None:
        return
    if precision != "fp8":
        raise UserError(f"--fp8-recipe {recipe} needs --precision fp8")
    for c in clusters if isinstance(clusters, (list, tuple)) else [clusters]:
        if recipe == "mxfp8" and c.gpu.family != "blackwell":
            raise UserError(f"--fp8-recipe mxfp8 needs Blackwell GPUs (B200, GB200, B300, GB300); {c.gpu.name} is "
                            f"{c.gpu.family}: use delayed, tensorwise or blockwise")


def check_writable(path: str, option: str) -> None:
    """Fail before any work when an output file cannot be written: make its folder (as the writer would)
    and create and delete a scratch file there."""
    import tempfile

    if os.path.isdir(path):
        raise UserError(f"{option} {path}: is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write there ({e.strerror or e})") from None


def resolve_pue(pue: float | None) -> float:
    """--pue, or the default (planner.runs.estimate.DEFAULT_PUE); at least 1."""
    from planner.runs.estimate import DEFAULT_PUE

    if pue is None:
        return DEFAULT_PUE
    if not pue >= 1:
        raise UserError(f"--pue {pue} is not allowed; power usage effectiveness is >= 1, e.g. 1.1")
    return pue


class _status:
    """A one-line status on a terminal ("searching 256 x H100-SXM, 5 clusters done"); nothing elsewhere."""

    def __init__(self, fmt: str):
        self.fmt, self.live = fmt, None

    def __enter__(self):
        return self

    def __call__(self, cluster: str, done: int) -> None:
        if self.fmt != "table":
            return
        console = _console()
        if not console.is_terminal:
            return
        text = f"searching {cluster} ({done} cluster{'s' if done != 1 else ''} searched)"
        if self.live is None:
            self.live = console.status(text)
            self.live.start()
        else:
            self.live.update(text)

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()
