"""Reading SAELens-format SAE folders of every SAELens era, and the one check that an SAE fits the
run's model before any eval.

Configs are read through SAELens's own loader functions (``get_sae_lens_config_from_disk`` then
``handle_config_defaulting``), so a pre-6.0 ``cfg.json`` (``hook_point``, boolean
``normalize_activations``...) is understood exactly as ``SAE.load_from_disk`` understands it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import csae_bench.architectures.saelens  # noqa: F401  (registers csae / random-decoder with SAELens)
from csae_bench.errors import SaeMismatchError
from csae_bench.hooks import parse_layer

logger = logging.getLogger(__name__)

INFERENCE_NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")
"""``normalize_activations`` modes SAELens's inference ``SAE`` applies by itself. Any other mode
(``expected_average_only_in``, ``covariance_whitening``) needs statistics a saved folder does not
hold: SAELens's inference then applies nothing, so such an SAE is refused, never evaluated as if
it were unnormalized."""


def read_sae_config(folder: str | Path) -> Any:
    """The SAELens ``SAEConfig`` of ``folder/cfg.json`` (any SAELens version's layout).

    Raises :class:`SaeMismatchError` naming the folder when the file is not JSON or SAELens cannot
    build a config from it (unknown architecture, missing ``d_in``...)."""
    from sae_lens.loading.pretrained_sae_loaders import (
        get_sae_lens_config_from_disk,
        handle_config_defaulting,
    )
    from sae_lens.saes.sae import SAEConfig

    folder = Path(folder)
    try:
        raw = get_sae_lens_config_from_disk(folder)
        return SAEConfig.from_dict(handle_config_defaulting(raw))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SaeMismatchError(
            f"SAE {folder}: SAELens cannot read its cfg.json ({type(err).__name__}: {err}). "
            "Save it with SAE.save_model or fix the file."
        ) from None


def check_normalization(cfg: Any, name: str) -> None:
    """Raise :class:`SaeMismatchError` when ``cfg.normalize_activations`` is a mode SAELens's
    inference would silently skip (the numbers would be the unnormalized SAE's)."""
    mode = cfg.normalize_activations
    if mode not in INFERENCE_NORMALIZATIONS:
        raise SaeMismatchError(
            f"SAE {name}: normalize_activations={mode!r} is not applied at inference (the "
            "scaling is not saved in the folder), so it would be evaluated unnormalized. Fold the "
            "normalization into the weights first (SAE.fold_activation_norm_scaling_factor) and "
            "save it with normalize_activations='none'."
        )


def load_sae(folder: str | Path, device: str = "cpu") -> Any:
    """The SAE in ``folder`` as a SAEBench ``BaseSAE`` when it converts exactly, else SAELens's
    own inference ``SAE`` (architectures csae_bench does not export, runtime normalizations).

    Raises :class:`SaeMismatchError` for a normalization inference would not apply."""
    from sae_lens import SAE

    from csae_bench.architectures.export import ExportError, to_base_sae

    folder = Path(folder)
    check_normalization(read_sae_config(folder), str(folder))
    sae = SAE.load_from_disk(str(folder), device="cpu")
    try:
        return to_base_sae(sae, device=device)
    except ExportError as err:
        # SAELens's own forward is faithful for every mode left (checked above).
        logger.debug("Evaluating %s with SAELens's class: %s", folder, err)
        return sae.to(device)


# ---------------------------------------------------------------- the one SAE-vs-model check

_SIZE = re.compile(r"^\d+(\.\d+)?[kmbt]$")


def model_family(name: str) -> str:
    """``google/gemma-3-270m-it`` -> ``gemma-3``; ``gpt2-small`` -> ``gpt2-small``: the name
    without organisation, up to its parameter count."""
    parts = name.lower().rsplit("/", 1)[-1].split("-")
    head = []
    for p in parts:
        if _SIZE.match(p):
            break
        head.append(p)
    return "-".join(head) or name.lower()


def hook_kind(hook_name: str) -> str:
    """``blocks.6.hook_resid_post`` -> ``hook_resid_post``."""
    return hook_name.rsplit(".", 1)[-1]


def check_sae_fits(
    name: str,
    d_in: int,
    hook_name: str,
    model: Any,
    *,
    sae_model_name: str | None = None,
    run_model_name: str | None = None,
    evals: Iterable[str] = (),
) -> list[str]:
    """Check one SAE against the run's model before any eval; return warnings to show.

    ``d_in`` must equal the hook's width (``model.cfg.d_model``), ``hook_name`` must be a hook of
    ``model`` in a layer it has, its kind must be one every eval in ``evals`` (eval type ids)
    supports, and ``sae_model_name`` must name ``run_model_name`` (same family, other variant:
    a warning). Raises :class:`SaeMismatchError` with one line naming ``name``."""
    from csae_bench.evals.registry import get_eval

    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    layer = parse_layer(hook_name or "")
    if layer is None:
        raise SaeMismatchError(
            f"SAE {name}: hook {hook_name!r} is not a blocks.L.<hook> of the model; "
            "evaluate it on a model and hook it was trained for."
        )
    if layer >= n_layers:
        raise SaeMismatchError(
            f"SAE {name}: hook {hook_name} is in layer {layer} but the model has layers "
            f"0..{n_layers - 1}; use the model it was trained on."
        )
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is not None and hook_name not in hook_dict:
        raise SaeMismatchError(f"SAE {name}: the model has no hook {hook_name}.")
    if d_in != d_model:
        raise SaeMismatchError(
            f"SAE {name}: d_in is {d_in} but the model's d_model is {d_model} at {hook_name}; "
            "wrong SAE for this model."
        )
    kind = hook_kind(hook_name)
    for eval_id in evals:
        supported = get_eval(eval_id).hook_kinds
        if kind not in supported:
            raise SaeMismatchError(
                f"SAE {name}: eval {eval_id} does not support {kind} hooks (only "
                f"{', '.join(supported)}); leave {eval_id} out of --evals for this SAE."
            )
    warnings = []
    if sae_model_name and run_model_name and sae_model_name != run_model_name:
        if model_family(sae_model_name) != model_family(run_model_name):
            raise SaeMismatchError(
                f"SAE {name}: trained on {sae_model_name}, but the run's model is "
                f"{run_model_name}; pass --model {sae_model_name}."
            )
        warnings.append(
            f"SAE {name} was trained on {sae_model_name}; evaluating it on {run_model_name} "
            "(same family, another variant)."
        )
    return warnings


def check_sae_folder_fits(
    name: str, folder: str | Path, model: Any, run_model_name: str | None, evals: Iterable[str]
) -> list[str]:
    """:func:`check_sae_fits` for an SAE folder, read from its ``cfg.json`` alone (no weights),
    plus its normalization; returns the warnings."""
    cfg = read_sae_config(folder)
    check_normalization(cfg, name)
    return check_sae_fits(
        name,
        int(cfg.d_in),
        cfg.metadata.hook_name,
        model,
        sae_model_name=cfg.metadata.model_name,
        run_model_name=run_model_name,
        evals=evals,
    )


__all__ = [
    "INFERENCE_NORMALIZATIONS",
    "check_normalization",
    "check_sae_fits",
    "check_sae_folder_fits",
    "load_sae",
    "model_family",
    "read_sae_config",
]
