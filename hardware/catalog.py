"""The GPU catalog: built-in entries (catalog.json) plus user files, looked up by name or alias."""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .gpu import GPUSpec, HardwareError

SCHEMA = "gpus/v1"


def _key(name: str) -> str:
    """Lookup key: case-insensitive; '_' and ' ' count as '-'."""
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _form_factor(gpu: GPUSpec) -> str:
    if gpu.intra_node_link.lower().startswith("pcie"):
        return "PCIe"
    return "OAM" if gpu.vendor == "amd" else "SXM"


class Catalog:
    """Canonical name -> GPUSpec, in catalog order, with case-insensitive alias lookup."""

    def __init__(self, gpus: Iterable[GPUSpec]):
        self.gpus: dict[str, GPUSpec] = {g.name: g for g in gpus}
        self._index: dict[str, str] = {}  # lookup key -> canonical name
        for g in self.gpus.values():
            for n in [g.name, *g.aliases]:
                other = self._index.setdefault(_key(n), g.name)
                if other != g.name:
                    raise HardwareError(f"GPU name or alias '{n}' is used by both {other} and {g.name}")

    def names(self) -> list[str]:
        return list(self.gpus)

    def resolve(self, name: str) -> tuple[GPUSpec, str | None]:
        """Find a GPU by canonical name or alias; the note says which variant an alias picked."""
        canonical = self._index.get(_key(name))
        if canonical is None:
            close = difflib.get_close_matches(_key(name), list(self._index), n=1, cutoff=0.6)
            hint = f" did you mean {self._index[close[0]]}?" if close else ""
            raise HardwareError(f"unknown GPU '{name.strip()}';{hint} known: {', '.join(self.gpus)}")
        gpu = self.gpus[canonical]
        if _key(name) == _key(canonical):
            return gpu, None
        return gpu, f"{name.strip()} -> {gpu.name} ({_form_factor(gpu)}, {gpu.memory_gb:g} GB)"

    def with_file(self, path: str | Path) -> Catalog:
        """A new catalog with the entries of a gpus/v1 file added, or replacing those of the same name."""
        entries = _read_entries(Path(path))
        merged = dict(self.gpus)
        for g in entries:
            merged[g.name] = g  # same name: replaced in place, keeping order; new: appended
        try:
            return Catalog(merged.values())
        except HardwareError as e:
            raise HardwareError(f"hardware file {path}: {e}") from None

    def with_prices(self, prices: dict[str, float]) -> Catalog:
        """A new catalog with price_usd_per_gpu_hour overridden per (alias-resolvable) GPU name."""
        merged = dict(self.gpus)
        for name, price in prices.items():
            gpu, _ = self.resolve(name)
            if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price <= 0:
                raise HardwareError(f"price for {gpu.name} must be a positive number of USD per GPU-hour, got {price!r}")
            merged[gpu.name] = gpu.model_copy(
                update={"price_usd_per_gpu_hour": float(price), "price_source": "user override",
                        "price_kind": "user override"}
            )
        return Catalog(merged.values())


    def with_network(self, gbits_per_gpu: float) -> Catalog:
        """A new catalog whose every GPU has this network rate per GPU (Gb/s; the catalog keeps GB/s)."""
        if isinstance(gbits_per_gpu, bool) or not math.isfinite(gbits_per_gpu) or not 0 < gbits_per_gpu <= 100_000:
            raise HardwareError(f"network {gbits_per_gpu!r} Gb/s per GPU: give a positive rate up to 100000")
        return Catalog(g.model_copy(update={"inter_node_gbps": gbits_per_gpu / 8.0}) for g in self.gpus.values())


    def with_fabric(self, oversubscription: float, leaf_gpus: int) -> Catalog:
        """A new catalog whose every GPU sits under leaves of `leaf_gpus` GPUs joined by an
        `oversubscription`:1 spine (GPUSpec.network_gbps)."""
        if isinstance(oversubscription, bool) or not math.isfinite(oversubscription) or not 1 <= oversubscription <= 64:
            raise HardwareError(f"oversubscription {oversubscription!r}: give a ratio from 1 (non-blocking) to 64")
        if isinstance(leaf_gpus, bool) or not isinstance(leaf_gpus, int) or leaf_gpus < 1:
            raise HardwareError(f"leaf of {leaf_gpus!r} GPUs: give a whole number of GPUs >= 1")
        return Catalog(g.model_copy(update={"network_oversubscription": float(oversubscription), "leaf_gpus": leaf_gpus})
                       for g in self.gpus.values())


def parse_prices(items: Iterable[str], bare_for: str | None = None) -> dict[str, float]:
    """The one parser of `--price` for every command: items `NAME=USD` (USD per GPU-hour) -> {NAME: USD}.

    NAME is any GPU name or alias the catalog resolves (Catalog.with_prices applies the dict, price_for
    reads one GPU's price from it). A bare `USD` is allowed only when `bare_for` names the GPU it prices
    (`plan serve`, which runs on one GPU type); it comes back as {bare_for: USD}. A malformed item, a
    price that is not a positive finite number, or a bare USD elsewhere raises HardwareError naming it."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep:
            name, value = (bare_for or ""), item
        example = "--price H100=2.49" + (" or --price 2.49" if bare_for else "")
        if not name:
            raise HardwareError(f"--price {item!r} is not NAME=USD, e.g. {example}")
        try:
            usd = float(value)
        except ValueError:
            raise HardwareError(f"--price {item!r} is not {'[NAME=]USD' if bare_for else 'NAME=USD'} per GPU-hour, "
                                f"e.g. {example}") from None
        if not (math.isfinite(usd) and usd > 0):
            raise HardwareError(f"--price {item!r} is not allowed; give a positive USD per GPU-hour, e.g. {example}")
        out[name] = usd
    return out


def price_for(catalog: Catalog, prices: dict[str, float], gpu: GPUSpec) -> float | None:
    """The price `prices` (parse_prices) sets for `gpu`, its names resolved as Catalog.resolve does; None
    when they set none. For commands that run on one GPU type: HardwareError when a name is unknown or
    is another GPU than `gpu`."""
    usd = None
    for name, value in prices.items():
        try:
            named, _ = catalog.resolve(name)
        except HardwareError as e:
            raise HardwareError(f"--price {name}={value:g}: {e}") from None
        if named.name != gpu.name:
            raise HardwareError(f"--price {name}={value:g} prices {named.name}, but the request runs on {gpu.name}; "
                                f"give --price {gpu.name}={value:g} (or --price {value:g})")
        usd = value
    return usd


def _read_entries(path: Path) -> list[GPUSpec]:
    """Parse and validate a gpus/v1 file (JSON, or YAML when pyyaml is installed)."""
    where = f"hardware file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise HardwareError(f"{where}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise HardwareError(f"{where}: not UTF-8 text; give a gpus/v1 JSON or YAML file") from None
    data = _parse(text, path, where)
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), list):
        raise HardwareError(f'{where}: expected an object {{"schema": "{SCHEMA}", "gpus": [...]}}')
    if data.get("schema", SCHEMA) != SCHEMA:
        raise HardwareError(f"{where}: schema must be '{SCHEMA}', got {data.get('schema')!r}")
    extra = set(data) - {"schema", "gpus"}
    if extra:
        raise HardwareError(f"{where}: unknown top-level key(s) {', '.join(sorted(extra))}; allowed: schema, gpus")
    entries: list[GPUSpec] = []
    for i, raw in enumerate(data["gpus"]):
        label = f"entry {i}" + (f" ({raw['name']})" if isinstance(raw, dict) and "name" in raw else "")
        try:
            entries.append(GPUSpec.model_validate(raw))
        except ValidationError as e:
            raise HardwareError(f"{where}: {label}: {_condense(e)}") from None
    names = [g.name for g in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise HardwareError(f"{where}: GPU {', '.join(dupes)} appears more than once")
    return entries


def _parse(text: str, path: Path, where: str) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise HardwareError(f"{where}: YAML needs pyyaml (pip install pyyaml); or use JSON") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise HardwareError(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise HardwareError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _condense(e: ValidationError) -> str:
    """pydantic errors on one line: "field 'hbm_gbps': Field required; field 'x': ..."."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(entry)"
        parts.append(f"field '{loc}': {err['msg']}")
    return "; ".join(parts)


@functools.lru_cache(maxsize=1)
def _builtin() -> tuple[GPUSpec, ...]:
    """Parse the shipped catalog.json once per process (start-up time matters)."""
    text = resources.files(__package__).joinpath("catalog.json").read_text(encoding="utf-8")
    return tuple(GPUSpec.model_validate(g) for g in json.loads(text)["gpus"])


def load_catalog(extra_files: Sequence[str | Path] = ()) -> Catalog:
    """Built-in catalog, then each extra file in order (later files override earlier entries)."""
    catalog = Catalog(_builtin())
    for f in extra_files:
        catalog = catalog.with_file(f)
    return catalog
