"""The dispatcher's Bell: a ring after arm() wakes the sleeper, one before it does not linger."""

from __future__ import annotations

import threading

from drainpool.bell import Bell


def test_a_ring_after_arm_wakes_the_sleeper() -> None:
    bell = Bell()
    bell.arm()
    woke = threading.Event()

    def sleeper() -> None:
        if bell.wait(60):
            woke.set()

    thread = threading.Thread(target=sleeper, daemon=True)
    thread.start()
    bell.ring()
    assert woke.wait(30), "the ring did not wake the sleeper"
    thread.join(30)


def test_a_ring_while_not_armed_is_answered_by_the_next_look_not_a_spare_wake() -> None:
    bell = Bell()
    bell.ring()  # nobody armed: the state change it announces is seen by the next look
    bell.arm()
    assert bell.wait(0.01) is False


def test_rings_between_arm_and_wait_are_kept_and_spares_are_dropped_at_the_next_arm() -> None:
    bell = Bell()
    bell.arm()
    bell.ring()
    bell.ring()  # a second ringer while the first one's call is pending: no second call
    assert bell.wait(0) is True
    bell.ring()  # after a wake, unarmed again
    bell.arm()
    assert bell.wait(0) is False
