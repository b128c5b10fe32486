"""Intervention types and the batch-wise causal effect engine (docs/nces.md)."""

from csae_bench.interventions.controls import (
    CONTROLS,
    DataDirections,
    UnknownControlError,
    data_control,
    data_directions,
    get_control,
    isotropic_control,
    other_feature_control,
    random_direction_control,
)
from csae_bench.interventions.engine import EffectEngine, Effects, EngineConfig
from csae_bench.interventions.types import (
    Clamp,
    FeatureStats,
    Intervention,
    InterventionError,
    Mean,
    Resample,
    Zero,
    feature_edit_BTD,
    make_intervention,
)

__all__ = [
    "Clamp",
    "FeatureStats",
    "Intervention",
    "InterventionError",
    "Mean",
    "Resample",
    "Zero",
    "feature_edit_BTD",
    "make_intervention",
    "EffectEngine",
    "Effects",
    "EngineConfig",
    "CONTROLS",
    "DataDirections",
    "UnknownControlError",
    "data_control",
    "data_directions",
    "get_control",
    "isotropic_control",
    "other_feature_control",
    "random_direction_control",
]
