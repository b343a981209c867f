"""The pure rules of scale-out (SPEC D14): which feed changes become notifications, worker restarts."""

from __future__ import annotations

import pytest

from msgin5g.server.changefeed import mark_seen, plan_notifications
from msgin5g.server.workers import MAX_QUICK_RESTARTS, GiveUp, Restart, restart_decision, worker_count
from msgin5g.store.shared import DocChange

A, B = ("su-uc", "msgin5g", "a"), ("su-up", "msgin5g", "b")


def ch(seq, key, version, deleted=False):
    return DocChange(seq, *key, version, deleted)


def test_only_observed_documents_are_notified():
    seen = {}
    assert plan_notifications([ch(1, A, 2), ch(2, B, 5)], {A}, seen) == [(A, False)]


def test_a_change_this_process_notified_itself_is_not_notified_again():
    seen = {}
    assert mark_seen(seen, A, 2, False)  # its own PUT made version 2
    assert plan_notifications([ch(1, A, 2)], {A}, seen) == []
    assert plan_notifications([ch(2, A, 3)], {A}, seen) == [(A, False)]  # a sibling's PUT


def test_several_changes_of_one_document_in_one_read_give_one_notification_of_the_newest():
    seen = {}
    assert plan_notifications([ch(1, A, 2), ch(2, A, 3), ch(3, A, 4)], {A}, seen) == [(A, False)]
    assert seen[A] == (4, False)


def test_a_delete_ends_the_observation_even_after_a_replace_of_the_same_version_was_seen():
    seen = {}
    assert plan_notifications([ch(1, A, 3)], {A}, seen) == [(A, False)]
    assert plan_notifications([ch(2, A, 3, deleted=True)], {A}, seen) == [(A, True)]
    assert plan_notifications([ch(2, A, 3, deleted=True)], {A}, seen) == []  # read twice: once only


def test_an_older_change_read_late_is_not_notified():
    seen = {A: (5, False)}
    assert plan_notifications([ch(9, A, 4)], {A}, seen) == []


def test_documents_nobody_observes_any_more_are_forgotten():
    seen = {A: (2, False), B: (3, False)}
    plan_notifications([], {B}, seen)
    assert seen == {B: (3, False)}


def test_restart_after_a_good_run_is_immediate_and_a_crash_loop_gives_up():
    assert restart_decision(60.0, 0) == Restart(0.0)
    assert restart_decision(1.0, 0) == Restart(0.25)
    assert restart_decision(1.0, 2) == Restart(1.0)
    assert isinstance(restart_decision(1.0, MAX_QUICK_RESTARTS), GiveUp)


@pytest.mark.parametrize(("value", "n"), [("1", 1), ("3", 3)])
def test_worker_count(value, n):
    assert worker_count(value) == n


def test_worker_count_auto_is_at_least_one_and_bad_values_say_what_to_give():
    assert worker_count("auto") >= 1
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="--workers"):
            worker_count(bad)


def test_whichever_of_feed_and_own_write_comes_first_notifies_and_the_other_does_not():
    # the feed read the row before the writer's own notification ran (PostgreSQL: the write
    # committed on a store thread, NOTIFY arrived, the loop ran the feed first)
    seen = {}
    assert plan_notifications([ch(1, A, 3)], {A}, seen) == [(A, False)]
    assert not mark_seen(seen, A, 3, False)  # the writer's own path must not notify again
    # and the other order
    seen = {}
    assert mark_seen(seen, A, 4, False)
    assert plan_notifications([ch(2, A, 4)], {A}, seen) == []
