"""The swarm benchmark in small: its figures are there, and a fake claim is re-measured, refuted and never adopted.

The full figures come from `python benchmarks/swarm.py` (see docs/swarm.md); this keeps the benchmark
runnable and fixes what it must show whatever the size: each participant decides with the production
`confirm` policy on its own real ledger, a peer's claim costs the adopter an experiment of its own
budget, and a malicious peer's fake claims are measured, refuted and never kept. The draws are seeded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "swarm.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("swarm_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["swarm_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tiny_swarm_benchmark(capsys):
    bench = load_bench()
    assert bench.main(["--reps", "1", "--total", "48", "--participants", "1,2,4", "--seed", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(out[-1])
    per = figures["per_participants"]
    assert set(per) == {"1", "2", "4"}
    for p, r in per.items():
        assert {"median_adoption_latency", "gain_over_isolated", "reach_fraction_median", "remeasure_share",
                "claims_held", "claims_refuted", "swarm_best_true", "isolated_best_true"} <= set(r)
        assert r["experiments_each"] == 48 // int(p)
    assert per["1"]["gain_over_isolated"] == 0 and per["1"]["remeasure_share"] == 0  # a swarm of one is alone
    assert per["4"]["remeasure_share"] > 0  # re-measuring a peer's claim is paid for from the budget
    assert set(figures["goal"]) >= {"swarm4_reach_fraction_median", "met"}
    for key in ("no_gate", "gate"):
        m = figures["malicious"][key]
        assert m["fake_claims_published"] > 0 and m["fake_claims_remeasured"] > 0
        assert m["fake_claims_adopted"] == 0 and m["mallory_reputation_held"] == 0
        assert m["mallory_reputation_refuted"] > 0
    # Reputation bounds what the flood costs: without it every honest slot goes to re-measuring fakes.
    assert (figures["malicious"]["gate"]["fake_claims_remeasured"]
            < figures["malicious"]["no_gate"]["fake_claims_remeasured"])
    assert figures["setup"]["policy"] == "confirm" and out[-2].startswith("goal")


def test_a_fake_claim_is_measured_here_refuted_and_never_tried_again(tmp_path):
    bench = load_bench()
    args = argparse.Namespace(pool=20, effect_mean=1.0, sabotage=1.0, claim_margin=1.0)
    world = bench.World(7, args.pool, args.effect_mean, args.sabotage)
    alice = bench.Participant(world, tmp_path / "alice", 0, 7, p_null=0.7, sync=1, refutes_allowed=3)
    world.participants = [alice]
    from autoresearch.policy_confirm import Confirm

    assert isinstance(alice.policy, Confirm)
    alice.step()  # the baseline, published
    mallory = bench.Malicious(world, claim_margin=3.0)
    mallory.step()
    fake = world.hub["mallory"]
    assert fake.fake and fake.claim < world.hub["p0"].claim  # it claims to beat alice
    alice.sync_hub()
    assert [(kind, c.commit) for kind, c, _ in alice.queue] == [("claim", fake.commit)]  # adopt or merge: at its turn
    alice.step()  # re-measures the fake code here, under alice's own policy and noise
    rows = alice.ledger.experiments(bench.TAG)
    assert rows[-1].description.startswith("adopt mallory") and rows[-1].status == "discard"
    assert alice.ideas[rows[-1].commit] == fake.ideas
    assert alice.ledger.incumbent(bench.TAG).commit == bench.START  # not adopted
    assert alice.reputation["mallory"] == [0, 1] and alice.fake_experiments == 1 and alice.fake_kept == 0
    alice.sync_hub()
    assert not alice.queue  # a refuted claim is never queued again
    for _ in range(4):  # a flood of new fakes: re-measured until its reputation runs out, then ignored
        mallory.step()
        alice.step()
    assert alice.fake_kept == 0 and alice.gated("mallory")
    assert alice.fake_experiments == 4  # refutes_allowed + 1, then no more of alice's budget goes to it
    alice.ledger.close()
