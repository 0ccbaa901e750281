"""The generation worker's choices (serve/rounds.py): which new request it takes in first,
which requests a round steps, and whose text goes out - on jobs made by hand, no model."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="FastAPI and uvicorn are core dependencies")

from charloom.nextchar import SampleSettings  # noqa: E402
from charloom.serve.jobs import GenerateJob, NextJob  # noqa: E402
from charloom.serve.rounds import DELIVERIES, QUICK_STEPS, Turns, admission_order  # noqa: E402


def job(client: str, length: int = 2000, rows: int = 1) -> GenerateJob:
    made = GenerateJob([1], SampleSettings(), length, rows, client=client)
    made.left = length  # as its prime leaves it: every character still to come
    return made


def test_the_least_busy_clients_requests_are_taken_in_first():
    running = [job("key 0") for _ in range(128)]  # a flood's streams
    flood = [job("key 0") for _ in range(5)]
    mine = job("key 1", length=20)
    waiting = [*flood, mine, NextJob([1], SampleSettings(), 3, client="key 1")]
    order = admission_order(waiting, running)
    assert order[:2] == waiting[5:] and order[2:] == flood  # each client's in arrival order


def test_idle_clients_take_turns():
    a = [job("a") for _ in range(3)]
    b = [job("b", rows=2) for _ in range(2)]
    order = admission_order([*a, *b], [])
    assert order == [a[0], b[0], a[1], a[2], b[1]]  # by samples taken in so far


def test_a_short_request_is_stepped_apart_until_the_batch_is_owed_a_round():
    turns = Turns(chunk_s=0.02)
    batch = [job("key 0") for _ in range(4)]
    for streaming in batch:
        streaming.stepped = True
    short = job("key 1", length=QUICK_STEPS)
    assert turns.pick(batch, [short]) == ([short], False)
    assert short.quick
    turns.took(0.005, batch=False)
    assert turns.pick([*batch, short], []) == ([short], False)  # until done
    turns.took(0.016, batch=False)  # 21 ms apart: the batch's turn, without the short one
    assert turns.pick([*batch, short], []) == (batch, True)
    turns.took(0.004, batch=True)
    assert turns.pick([*batch, short], []) == ([short], False)


def test_a_long_newcomers_first_chunk_is_apart_unless_it_is_alone():
    turns = Turns(chunk_s=0.02)
    batch = [job("key 0") for _ in range(2)]
    fresh = job("key 1", length=QUICK_STEPS + 1)
    assert turns.pick(batch, [fresh]) == ([fresh], False)
    assert not fresh.quick
    assert turns.pick([], [fresh]) == ([fresh], True)  # nothing else runs: it is the batch


def test_text_goes_out_spread_over_rounds():
    turns = Turns(chunk_s=0.02)
    jobs = [job("key 0") for _ in range(100)]
    for j in jobs[:-1]:
        j.delivered_at = 1.0
    jobs[0].finished = True
    done, due = turns.due(jobs, now=1.0)
    assert done == [jobs[0]] and due == [jobs[-1]]  # a new job's first characters at once
    done, due = turns.due(jobs, now=1.2)  # every job is due (every 100 ms)
    assert due[0] is jobs[-1] and len(due) == 1 + DELIVERIES  # a handful at a time
