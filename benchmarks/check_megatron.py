"""Run `plan --emit megatron` arguments through Megatron-LM's own `parse_args` and `validate_args`.

Megatron-LM's training package (megatron/training) is not on PyPI, so this is a script, not part of the test
run. With a Megatron-LM checkout of the version the files name (`git clone -b core_v0.16.1
https://github.com/NVIDIA/Megatron-LM`) and torch installed, run

    python benchmarks/check_megatron.py /path/to/Megatron-LM

For each plan below it writes the files (`plan --model M --gpus G --emit megatron --out DIR`), reads the
argument array as a shell does (`source megatron_args.sh`), takes the environment launch.sh exports, adds
what the launcher leaves to the user (the data, tokenizer and run length: `--mock-data`, a null tokenizer,
`--train-iters`), sets WORLD_SIZE to the cluster's GPU count (on a machine without a GPU, torch's device
queries answer with the plan's GPU's compute capability), and calls `parse_args()` and
`validate_args()`; then checks that the data-parallel size and the other sizes Megatron-LM derives are the
plan's (its "# plan:" line). One line per plan: ok, refused (the assertion), or another plan than written.
Exit 1 if any is refused or differs.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hardware import parse_cluster  # noqa: E402

CASES = [("gpt3-175b", "1024xA100"), ("llama3-70b", "64xH100"), ("llama3-405b", "16384xH100"),
         ("mixtral-8x22b", "256xH100"), ("gpt3-13b", "64xA100")]
COMPUTE_MAJOR = {"ampere": 8, "hopper": 9, "blackwell": 10}   # CUDA compute capability (major) per GPU family
USER_ARGS = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--train-iters", "10"]


def shell_args(path: Path) -> list[str]:
    """MEGATRON_ARGS as bash reads megatron_args.sh."""
    out = subprocess.run(["bash", "-c", 'source "$1"; printf "%s\\0" "${MEGATRON_ARGS[@]}"', "_", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return [a for a in out.split("\0") if a]


def exports(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^export (\w+)=(\S+)$", path.read_text(), re.M))


def planned(path: Path) -> dict[str, int]:
    line = next(x for x in path.read_text().splitlines() if x.startswith("# plan:"))
    sizes = dict(re.findall(r"\b(TP|PP|DP|CP|EP) (\d+)", line))
    return {k: int(sizes.get(k, 1)) for k in ("TP", "PP", "CP", "DP", "EP")}


def check(name: str, gpus: str, tmp: Path) -> str:
    out = tmp / name
    subprocess.run([sys.executable, "-m", "planner.cli", "--model", name, "--gpus", gpus, "--emit", "megatron",
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    argv = shell_args(out / "megatron_args.sh")
    vocab = next((argv[i + 1] for i, a in enumerate(argv) if a == "--vocab-size"), None)
    env = exports(out / "launch.sh")
    num_gpus = int(gpus.split("x")[0])
    major = COMPUTE_MAJOR.get(parse_cluster(gpus).gpu.family, 9)
    code = f"""
import os, sys, types
import torch
if not torch.cuda.is_available():   # answer for the plan's GPU (its compute capability) where none is present
    props = types.SimpleNamespace(major={major}, minor=0, name="stand-in", multi_processor_count=132,
                                  total_memory=80 * 10**9)
    torch.cuda.get_device_properties = lambda *a, **k: props
    torch.cuda.get_device_capability = lambda *a, **k: ({major}, 0)
sys.argv = ["pretrain_gpt.py", *{argv + USER_ARGS + ([] if vocab else ["--vocab-size", "50304"])!r}]
from megatron.training.arguments import parse_args, validate_args
args = parse_args()
try:
    validate_args(args)
except AssertionError as e:
    print("REFUSED", e)
    sys.exit(0)
print("SIZES", args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size,
      args.data_parallel_size, args.expert_model_parallel_size)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env, "WORLD_SIZE": str(num_gpus), "RANK": "0", "LOCAL_RANK": "0"})
    lines = [x for x in res.stdout.splitlines() if x.startswith(("REFUSED", "SIZES"))]
    if res.returncode != 0 or not lines:
        return "error: " + (res.stderr.strip().splitlines() or ["(no output)"])[-1]
    if lines[-1].startswith("REFUSED"):
        return "refused: " + lines[-1][len("REFUSED "):]
    got = dict(zip(("TP", "PP", "CP", "DP", "EP"), map(int, lines[-1].split()[1:])))
    want = planned(out / "megatron_args.sh")
    wrong = [f"{k} {got[k]} (plan: {v})" for k, v in want.items() if got[k] != v]
    return ("another plan than written: " + ", ".join(wrong)) if wrong else \
        "ok: " + " x ".join(f"{k} {got[k]}" for k in ("TP", "PP", "CP", "DP", "EP"))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    os.environ["PYTHONPATH"] = os.pathsep.join([argv[0], os.environ.get("PYTHONPATH", "")])
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, gpus in CASES:
            verdict = check(name, gpus, Path(tmp))
            bad += not verdict.startswith("ok")
            print(f"{name} on {gpus}: {verdict}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
