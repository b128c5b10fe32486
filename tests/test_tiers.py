"""Every test has exactly one tier (unit / integration / e2e), assigned in conftest.py."""

from __future__ import annotations

import pytest
from conftest import ALL_ITEMS, TIERS, tier_of


def test_every_collected_test_has_exactly_one_tier(request):
    items = request.config.stash[ALL_ITEMS]  # all collected, before -m deselects any
    wrong = {item.nodeid: sorted({m.name for m in item.iter_markers()} & set(TIERS)) for item in items}
    wrong = {nodeid: tiers for nodeid, tiers in wrong.items() if len(tiers) != 1}
    assert not wrong, f"tests with no tier or several: {wrong}"


@pytest.mark.parametrize(("marks", "fixtures", "tiers"), [
    (set(), {"tmp_path", "tiny_model"}, {"unit"}),
    (set(), {"embedded_model", "tmp_path"}, {"integration"}),
    (set(), {"cluster", "tmp_path"}, {"e2e"}),
    ({"e2e"}, {"embedded_model"}, {"e2e"}),
    ({"integration", "parametrize"}, set(), {"integration"}),
    ({"unit", "e2e"}, set(), {"unit", "e2e"}),  # two explicit tiers: the check above fails
])
def test_tier_rules(marks, fixtures, tiers):
    assert tier_of(marks, fixtures) == tiers
