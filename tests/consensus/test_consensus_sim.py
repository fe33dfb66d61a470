"""The fault simulator over many seeds: safety and liveness hold; one seed replays exactly."""

import pytest

from consensus.sim import SimConfig, Simulation, main, run_seeds


def assert_all_ok(results):
    failures = [f"seed {r.seed}: {r.failure}" for r in results if not r.ok]
    assert not failures, failures


def test_four_validators_over_many_seeds():
    results = run_seeds(list(range(250)), SimConfig(validators=4, payloads=8))
    assert_all_ok(results)
    assert sum(r.crashes for r in results) > 50  # the faults really happen
    assert sum(r.evidence for r in results) > 0
    assert sum(r.heights for r in results) > 250 * 2
    behaviors = {b for r in results for b in r.behaviors}
    assert behaviors >= {"silent", "garbage", "double-voter", "equivocating-proposer", "flooder"}


def test_seven_validators_over_seeds():
    results = run_seeds(list(range(1000, 1050)), SimConfig(validators=7, payloads=8))
    assert_all_ok(results)
    assert any(r.behaviors.count("honest") == 5 for r in results)  # f = 2 Byzantine


def test_ten_validators_over_seeds():
    results = run_seeds(list(range(2000, 2010)), SimConfig(validators=10, payloads=6))
    assert_all_ok(results)


@pytest.mark.parametrize("faulty", ["no-wal", "majority-quorum"])
def test_seeded_faulty_cores_are_caught(faulty):
    results = run_seeds(list(range(40)), SimConfig(validators=4, payloads=8, faulty_core=faulty))
    assert sum(not r.ok for r in results) >= 5, faulty


def test_a_seed_replays_exactly():
    first = Simulation(4242, SimConfig()).run()
    second = Simulation(4242, SimConfig()).run()
    assert first.ok and first.fingerprint == second.fingerprint
    assert (first.events, first.heights, first.ticks) == (second.events, second.heights, second.ticks)
    assert Simulation(4243, SimConfig()).run().fingerprint != first.fingerprint


def test_command_line_reports_seeds(capsys):
    assert main(["--seeds", "3", "--first-seed", "7"]) == 0
    assert "3 seeds, 4 validators: 0 failed" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("validators,seeds", [(4, range(10_000, 12_000)), (7, range(20_000, 20_500))])
def test_thousands_of_seeds(validators, seeds):
    assert_all_ok(run_seeds(list(seeds), SimConfig(validators=validators)))
