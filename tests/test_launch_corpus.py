"""The importers on real launch files: 13 files copied unmodified from the frameworks' own repositories
(tests/data/launch/real/SOURCES.json names each one's repository, path and commit): Megatron-LM's example
launch scripts (bash arrays, quoted variables, `+=` appends inside an `if`, environment defaults), DeepSpeed
configs from DeepSpeedExamples and accelerate (two with Hugging Face "auto" batch fields), torchtitan's own
TOML job configs, and NeMo's Hydra recipes. The settings each file states were read from the file by hand
(SOURCES.json "expect", with its notes) and are checked against what `plan import` reads; a file the planner
cannot model (Megatron-FSDP) or cannot complete ("auto" batch sizes) is refused with a line naming why."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmodels.presets import get_model
from hardware import parse_cluster
from planner.cli import main
from planner.frameworks.base import ConfigImportError
from planner.frameworks.deepspeed import read_deepspeed_config
from planner.frameworks.megatron import read_megatron_args
from planner.frameworks.nemo import read_nemo_config
from planner.frameworks.torchtitan import read_torchtitan_config, torchtitan_model

CORPUS = Path(__file__).parent / "data" / "launch" / "real"
ENTRIES = json.loads((CORPUS / "SOURCES.json").read_text())
OPTION = {"megatron-args": "--megatron-args", "deepspeed-config": "--deepspeed-config",
          "torchtitan-config": "--torchtitan-config", "nemo-yaml": "--nemo-config"}


def _read(entry: dict):
    text = (CORPUS / entry["file"]).read_text()
    model, cluster = get_model(entry["model"])[0], parse_cluster(entry["gpus"])
    kind = entry["kind"]
    if kind == "megatron-args":
        return read_megatron_args(text, model, cluster)
    if kind == "nemo-yaml":
        return read_nemo_config(text, model, cluster)
    if kind == "torchtitan-config":
        model = torchtitan_model(text, model)
        return model, read_torchtitan_config(text, model, cluster)
    return model, read_deepspeed_config(text, model, cluster)


def test_corpus_is_real_and_cited():
    """Every file has its source (repository, path) and the settings read from it; no file without an entry."""
    assert len(ENTRIES) >= 12
    assert {e["kind"] for e in ENTRIES} == set(OPTION)
    listed = {e["file"] for e in ENTRIES}
    on_disk = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file() and p.name != "SOURCES.json"}
    assert listed == on_disk
    for e in ENTRIES:
        assert "/" in e["repo"] and e["path"] and e["expect"], e["file"]


@pytest.mark.parametrize("entry", [e for e in ENTRIES if "refused_with" not in e], ids=lambda e: e["file"])
def test_import_reads_what_the_file_states(entry):
    model, st = _read(entry)
    want = entry["expect"]
    for key in ("tp", "pp", "cp", "ep", "micro_batch", "global_batch", "zero_stage", "precision"):
        if isinstance(want.get(key), (int, str)):
            assert getattr(st, key) == want[key], (entry["file"], key)
    if "recompute" in want:         # a file that sets no recompute trains without it
        assert st.recompute == (want["recompute"] or "none"), entry["file"]
    if isinstance(want.get("seq_len"), int):
        assert model.seq_len == want["seq_len"]
    if isinstance(want.get("grad_accum"), int):
        assert st.global_batch == st.micro_batch * st.dp * want["grad_accum"]
    # data parallel is what the cluster leaves (Megatron and torchtitan derive it so)
    assert st.tp * st.pp * st.cp * st.dp == parse_cluster(entry["gpus"]).num_gpus


@pytest.mark.parametrize("entry", [e for e in ENTRIES if "refused_with" in e], ids=lambda e: e["file"])
def test_import_refuses_what_it_cannot_model_in_one_line(entry, capsys):
    with pytest.raises(ConfigImportError, match=entry["refused_with"]):
        _read(entry)
    with pytest.raises(SystemExit) as exc:
        main(["import", OPTION[entry["kind"]], str(CORPUS / entry["file"]), "--model", entry["model"],
              "--gpus", entry["gpus"]])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and entry["refused_with"] in err and err.count("\n") == 1


@pytest.mark.parametrize("entry", [e for e in ENTRIES if "refused_with" not in e], ids=lambda e: e["file"])
def test_import_names_every_key_read_and_ignored(entry, capsys):
    """Every importer prints what it read and what it ignored (JSON: read / ignored), together every key of the
    file: nothing is silently assumed."""
    with pytest.raises(SystemExit) as exc:
        main(["import", OPTION[entry["kind"]], str(CORPUS / entry["file"]), "--model", entry["model"], "--gpus",
              entry["gpus"], "--time-limit", "1", "--format", "json"])
    assert exc.value.code in (0, 2, 3)
    captured = capsys.readouterr()
    if exc.value.code == 2:          # nothing at all fits on the file's cluster: one line saying so
        assert "does not fit" in captured.err and captured.err.count("\n") == 1, captured.err
        return
    doc = json.loads(captured.out)
    assert doc["read"] and isinstance(doc["ignored"], list)
    assert not set(doc["read"]) & set(doc["ignored"])


def test_recipe_settings_are_printed_read_and_ignored(capsys):
    """`plan import --nemo-config` names every key it read and every key it ignored (JSON: read / ignored)."""
    path = CORPUS / "nemo" / "megatron_gpt_config.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["import", "--nemo-config", str(path), "--model", "gpt3-125m", "--gpus", "1xA100", "--time-limit", "1",
              "--format", "json"])
    assert exc.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["read"]["model.tensor_model_parallel_size"] == 1 and doc["read"]["trainer.precision"] == "bf16"
    assert "model.optim.lr" in doc["ignored"]
    path = CORPUS / "nemo" / "megatron_llama_config.yaml"
    # a recipe for another model is refused, never priced as the --model given
    with pytest.raises(SystemExit) as exc:
        main(["import", "--nemo-config", str(path), "--model", "175b", "--gpus", "8xA100"])
    assert exc.value.code == 2 and "model.num_layers 32" in capsys.readouterr().err
