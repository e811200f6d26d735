"""The claims' arithmetic, exactly, on hand-built neuron logs and intervals (ctmarl/claims.py)."""

import math

import pytest

from ctmarl import claims


def _neurons():
    # Two logs of task 0, two of task 1 (the last). Agent: one group of width 4; mixer: widths 2 and 6.
    return {
        "task": [0, 0, 1, 1],
        "groups": {
            "agent.fc1": {"part": "agent", "width": [4, 4, 4, 4], "stagnant_ratio": [1.0, 1.0, 0.25, 0.5],
                          "stagnant_and_dormant": [0.0, 0.0, 0.25, 0.25], "stagnant_and_grama": [0, 0, 0.25, 0.5]},
            "mixer.a": {"part": "mixer", "width": [2, 2, 2, 2], "stagnant_ratio": [0.0, 0.0, 1.0, 0.5],
                        "stagnant_and_dormant": [0.0, 0.0, 0.5, 0.5], "stagnant_and_grama": [0, 0, 1.0, 0.5]},
            "mixer.b": {"part": "mixer", "width": [6, 6, 6, 6], "stagnant_ratio": [0.0, 0.0, 0.5, 0.5],
                        "stagnant_and_dormant": [0.0, 0.0, 0.0, 0.5], "stagnant_and_grama": [0, 0, 0.5, 0.5]},
        },
    }


def test_mixer_minus_agent_pools_last_task_by_width():
    # mixer, last task: (2*1 + 6*.5 + 2*.5 + 6*.5) / 16 = 9/16; agent: (4*.25 + 4*.5) / 8 = 3/8
    assert claims.mixer_minus_agent(_neurons()) == pytest.approx(9 / 16 - 3 / 8)


def test_share_not_flagged():
    # stagnant, last task, all pooled: (1 + 2 + 2 + 1 + 3 + 3) / 24 = 12/24
    # stagnant ∧ dormant: (1 + 1 + 1 + 1 + 0 + 3) / 24 = 7/24 -> 1 - 7/12
    assert claims.share_not_flagged(_neurons(), "dormant") == pytest.approx(1 - 7 / 12)
    # stagnant ∧ grama = stagnant -> 0
    assert claims.share_not_flagged(_neurons(), "grama") == pytest.approx(0.0)
    nothing = _neurons()
    for group in nothing["groups"].values():
        group["stagnant_ratio"] = [0.0] * 4
    assert math.isnan(claims.share_not_flagged(nothing, "dormant"))


@pytest.mark.parametrize("ci, threshold, verdict", [
    ([0.1, 0.3], 0.0, claims.SUPPORTED), ([-0.3, -0.1], 0.0, claims.NOT_SUPPORTED),
    ([-0.1, 0.3], 0.0, claims.NOT_SEPARABLE), (None, 0.0, claims.NOT_SEPARABLE),
    ([0.05, 0.09], 0.1, claims.NOT_SUPPORTED), ([0.1, 0.2], 0.1, claims.NOT_SEPARABLE),
])
def test_interval_verdict(ci, threshold, verdict):
    assert claims.interval_verdict(ci, threshold) == verdict


def test_compare_needs_intervals_apart():
    assert claims.compare([0.5, 0.7], [0.1, 0.4]) == "better"
    assert claims.compare([0.1, 0.4], [0.5, 0.7]) == "worse"
    assert claims.compare([0.1, 0.5], [0.4, 0.7]) == claims.NOT_SEPARABLE
    assert claims.compare(None, [0.4, 0.7]) == claims.NOT_SEPARABLE


def test_combine():
    assert claims.combine([]) == claims.NOT_MEASURED
    assert claims.combine([claims.SUPPORTED, claims.SUPPORTED]) == claims.SUPPORTED
    assert claims.combine([claims.SUPPORTED, claims.NOT_SEPARABLE]) == claims.NOT_SEPARABLE
    assert claims.combine([claims.SUPPORTED, claims.NOT_SUPPORTED, claims.NOT_SEPARABLE]) == claims.NOT_SUPPORTED


class _Board:
    def __init__(self, entries, learner="qmix", verdict="shows plasticity loss"):
        self.scenario, self.version, self.tier, self.learner = "s", 1, "quick", learner
        self.entries, self.ranked = entries, True
        self.validity = {"verdict": verdict}
        self.title = f"s-v1 · quick · {learner}"


def _agg(learner, method, value, ci):
    return {"learner": learner, "method": method, "normalised_auc_iqm": value, "normalised_auc_iqm_ci95": ci}


def test_knife_claims_from_the_aggregate():
    aggregate = [_agg("qmix", "knife", 0.6, [0.5, 0.7]), _agg("qmix", "redo", 0.2, [0.1, 0.3]),
                 _agg("qmix", "grama", 0.2, [0.1, 0.3]), _agg("qmix", "reset", 0.3, [0.2, 0.4]),
                 _agg("qmix", "injection", 0.1, [0.0, 0.2])]
    out = {c["claim"]: c for c in claims.claims([_Board([])], {("s", 1, "quick", "qmix"): {}}, aggregate)}
    beats = out["KNIFE beats redo, grama, reset, injection"]
    assert beats["verdict"] == claims.SUPPORTED and all(r["comparison"] == "better" for r in beats["rows"])
    helps = out["KNIFE helps both QMIX and QPLEX"]
    assert helps["verdict"] == claims.NOT_MEASURED  # no qplex record
    aggregate += [_agg("qplex", "knife", -0.1, [-0.3, 0.1]), _agg("qplex", "reset", 0.9, [0.8, 1.0])]
    out = {c["claim"]: c for c in claims.claims([_Board([])], {("s", 1, "quick", "qmix"): {}}, aggregate)}
    assert out["KNIFE helps both QMIX and QPLEX"]["verdict"] == claims.NOT_SEPARABLE
    # on qplex reset is better: the claim is not supported, whatever qmix says
    assert out["KNIFE beats redo, grama, reset, injection"]["verdict"] == claims.NOT_SUPPORTED
    # no valid table: the neuron claims are not measured
    assert out["stagnant neurons concentrate in the mixer"]["verdict"] == claims.NOT_MEASURED


def test_claim_3_compares_aggregates_only_over_the_same_tables():
    """A rival averaged over other valid tables than KNIFE is listed but does not vote: its
    aggregate would set one scenario's scores against another's."""
    both = [{"table": "a", "seeds": [0, 1]}, {"table": "b", "seeds": [0, 1]}]
    aggregate = [{**_agg("qmix", "knife", 0.6, [0.5, 0.7]), "scenarios": both}]
    for rival in ("redo", "grama", "reset"):
        aggregate.append({**_agg("qmix", rival, 0.2, [0.1, 0.3]), "scenarios": both})
    # injection has records only on table a, where it scores far above KNIFE's two-table mean
    aggregate.append({**_agg("qmix", "injection", 0.9, [0.8, 1.0]), "scenarios": both[:1]})
    out = {c["claim"]: c for c in claims.claims([_Board([])], {("s", 1, "quick", "qmix"): {}}, aggregate)}
    beats = out["KNIFE beats redo, grama, reset, injection"]
    row = next(r for r in beats["rows"] if r["rival"] == "injection")
    assert row["comparison"] == claims.DIFFERENT_TABLES and not row["votes"]
    assert beats["verdict"] == claims.NOT_SEPARABLE  # better than three, not compared with one
    # once injection covers both tables (more seeds on one is fine) it votes, and here it wins
    aggregate[-1]["scenarios"] = [{"table": "a", "seeds": [0, 1, 2]}, {"table": "b", "seeds": [0]}]
    out = {c["claim"]: c for c in claims.claims([_Board([])], {("s", 1, "quick", "qmix"): {}}, aggregate)}
    assert out["KNIFE beats redo, grama, reset, injection"]["verdict"] == claims.NOT_SUPPORTED
