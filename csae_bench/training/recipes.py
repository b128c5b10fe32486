"""Training recipes (``baselines/*.toml``): which model, hook, data and :class:`TrainConfig`.

A recipe has four tables::

    [model]     name = "gpt2"; layer = 8; site = "resid_post"; device = "cuda"
    [data]      corpus = "..."; context_size = 128
    [train]     any TrainConfig field (architectures, d_sae, target_l0, lr, ...)
    [reference] free text: where each setting comes from (not read by the code)

``hook_name`` and ``model_name`` of the TrainConfig are derived from ``[model]`` unless given.
Unknown keys in ``[train]`` raise, naming the valid fields, so a typo never silently falls back to
a default.
"""

from __future__ import annotations

from csae_bench.errors import BadInputError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from csae_bench.training.trainer import TrainConfig

BASELINES_DIR = Path(__file__).resolve().parents[2] / "baselines"


class RecipeError(BadInputError, ValueError):
    """A recipe file is malformed; the message names the file and the problem."""


@dataclass
class Recipe:
    """A parsed recipe."""

    path: Path
    """The TOML file."""
    model: str
    """Model name for ``csae_bench.models.load_model``."""
    layer: int
    """Layer of the hook."""
    site: str
    """Hook site (``resid_post``...)."""
    device: str
    """Device the recipe is meant for (``cpu`` / ``cuda``)."""
    corpus: str
    """Corpus for ``csae_bench.data.load_tokens``."""
    context_size: int
    """Tokens per context."""
    train: TrainConfig
    """Training settings."""
    reference: dict[str, Any]
    """Provenance notes."""


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe file (a name like ``gpt2-small`` is looked up in ``baselines/``)."""
    path = Path(path)
    if not path.exists() and not path.suffix:
        path = BASELINES_DIR / f"{path.name}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in BASELINES_DIR.glob("*.toml")))
        raise RecipeError(f"No recipe at {path}. Known recipes: {known}.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path} is not valid TOML: {err}") from err
    missing = [t for t in ("model", "data", "train") if t not in data]
    if missing:
        raise RecipeError(
            f"{path} lacks table(s) {missing}; a recipe needs [model], [data] and [train]."
        )
    model, data_tbl, train = data["model"], data["data"], dict(data["train"])
    valid = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(train) - valid)
    if unknown:
        raise RecipeError(
            f"{path}: [train] keys {unknown} are not TrainConfig fields; valid: {sorted(valid)}."
        )
    layer, site = int(model["layer"]), model.get("site", "resid_post")
    train.setdefault("hook_name", f"blocks.{layer}.hook_{site}")
    train.setdefault("model_name", model["name"])
    train.setdefault("context_size", int(data_tbl.get("context_size", 128)))
    if "architectures" in train:
        train["architectures"] = tuple(train["architectures"])
    try:
        cfg = TrainConfig(**train)
    except ValueError as err:
        raise RecipeError(f"{path}: {err}") from err
    return Recipe(
        path=path,
        model=model["name"],
        layer=layer,
        site=site,
        device=model.get("device", "cpu"),
        corpus=data_tbl.get("corpus", "embedded"),
        context_size=int(data_tbl.get("context_size", 128)),
        train=cfg,
        reference=data.get("reference", {}),
    )
