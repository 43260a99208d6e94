"""Waits on real Ray actors (``get_fail_fast``): bounded by the phase's deadline, failing at
the first error, and naming the actors concerned."""

from __future__ import annotations

import time

import pytest

from rayrlhf.faults import PhaseTimeoutError, classify_failure, deadline_scope, failed_actors, name_actors
from rayrlhf.workers.group import called_actor, get_collective, get_fail_fast

pytestmark = pytest.mark.slow


class Sleeper:
    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def fail(self) -> None:
        raise ValueError("broken on purpose")

    def die_after(self, seconds: float) -> None:
        time.sleep(seconds)
        import os

        os._exit(1)


@pytest.fixture(scope="module")
def actors(ray_cluster):
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    remote = ray_cluster.remote(num_cpus=0)(Sleeper)
    pair = [remote.remote(), remote.remote()]
    yield pair
    for actor in pair:
        ray_cluster.kill(actor)


def test_a_call_past_the_deadline_names_its_actor(actors):
    quick, stuck = actors
    names = {quick._actor_id.hex(): "quick-0", stuck._actor_id.hex(): "stuck-0"}
    start = time.monotonic()
    with pytest.raises(PhaseTimeoutError) as info:
        with deadline_scope("sync", 2.0):
            get_fail_fast([quick.nap.remote(0.0), stuck.nap.remote(60.0)])
    assert 1.9 <= time.monotonic() - start < 10.0  # the 2 s deadline, within clock granularity
    assert (info.value.phase, info.value.seconds) == ("sync", 2.0)
    assert failed_actors(name_actors(info.value, names)) == ["stuck-0"]  # quick-0 had answered
    assert classify_failure(info.value) == "worker_hung"
    # Outside a scope nothing is bounded; inside one that is long enough nothing changes.
    assert get_fail_fast([quick.nap.remote(0.1)]) == [0.1]
    with deadline_scope("score", 30.0):
        assert get_fail_fast([quick.nap.remote(0.2), quick.nap.remote(0.0)]) == [0.2, 0.0]


def test_the_first_failure_surfaces_at_once_with_its_actor(ray_cluster, actors):
    broken, busy = actors
    start = time.monotonic()
    with pytest.raises(ValueError, match="broken on purpose") as info:
        get_fail_fast([busy.nap.remote(20.0), broken.fail.remote()])  # the failure is second in order
    assert time.monotonic() - start < 15.0
    assert failed_actors(name_actors(info.value, {broken._actor_id.hex(): "broken-0"})) == ["broken-0"]
    assert classify_failure(info.value) == "task_error"
    assert called_actor(ray_cluster.put(1)) == ""  # an object no actor returns


def test_a_collective_that_fails_is_blamed_on_the_member_that_died(ray_cluster, actors):
    """One member of a broadcast dies; the other's call fails first (here at once, with a plain
    error, as a gloo peer's would): the error raised is the dead member's, naming it."""
    survivor, _ = actors  # the other one still naps from the tests above
    dying = ray_cluster.remote(num_cpus=0)(Sleeper).remote()
    with pytest.raises(Exception) as info:
        get_collective([survivor.fail.remote(), dying.die_after.remote(1.0)])
    assert classify_failure(info.value) == "worker_died"
    assert failed_actors(name_actors(info.value, {dying._actor_id.hex(): "rollout-0"})) == ["rollout-0"]
    # Without a death, the first failure is raised as get_fail_fast raises it.
    with pytest.raises(ValueError, match="broken on purpose"):
        get_collective([survivor.nap.remote(0.1), survivor.fail.remote()])
    assert get_collective([survivor.nap.remote(0.0)]) == [0.0]
