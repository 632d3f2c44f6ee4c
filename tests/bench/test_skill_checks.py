"""bench.skill's goal checks: a win must be larger than float noise."""

from __future__ import annotations

from bench.skill import OWN_BASE, TIE, goal_checks

LEADS = ("5", "30")


def _scores(csi: float, mae: float) -> dict[str, dict[str, float]]:
    return {lead: {"csi_1": csi, "mae": mae} for lead in LEADS}


def test_a_model_level_with_its_base_to_float_noise_does_not_beat_it():
    """At a lead whose change factor is 0 the model is its base to ~1e-6: bench.skill's seed-0 run of
    stop 40 read "beats its own base on MAE at every lead" from 2e-7 mm/h before the checks had a margin."""
    base = _scores(0.6, 0.37)
    scores = {OWN_BASE: base, "extrapolation": _scores(0.5, 0.42), "sprog": _scores(0.6, 0.38),
              "level": _scores(0.6 + 1e-6, 0.37 - 2e-7), "ahead": _scores(0.6 + 3 * TIE, 0.37 - 3 * TIE)}
    checks = goal_checks(scores, ["level", "ahead"])
    assert checks["beats_own_base_every_lead"] == {"level": {"csi_1": False, "mae": False},
                                                   "ahead": {"csi_1": True, "mae": True}}
    assert checks["beats_extrapolation_every_lead"]["level"] == {"csi_1": True, "mae": True}
    assert checks["beats_sprog_at_30"] == {"level": False, "ahead": True}
