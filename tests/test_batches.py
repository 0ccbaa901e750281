import pytest
import torch

from charloom.batches import Portions, Streams
from charloom.errors import CharloomError


def test_portions_are_random_windows_with_targets_shifted_by_one():
    data = torch.arange(1000) % 251
    b = Portions(data.to(torch.uint8), batch_size=3, seq_len=20, seed=0)
    x, y = b.next()
    assert x.shape == y.shape == (3, 20)
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row in x:  # each row is a contiguous slice of the data
        start = int(row[0])
        assert torch.equal(row, (torch.arange(start, start + 20) % 251))


def test_streams_are_contiguous_from_batch_to_batch():
    data = torch.arange(5000, dtype=torch.int32)
    b = Streams(data, batch_size=4, seq_len=10, seed=0)
    x1, y1 = b.next()
    assert b.new_epoch
    x2, _ = b.next()
    assert not b.new_epoch
    assert torch.equal(y1[:, :-1], x1[:, 1:])
    assert torch.equal(x2[:, 0], x1[:, -1] + 1)  # the next batch continues each stream


def test_streams_restart_at_the_end_of_an_epoch():
    data = torch.arange(100, dtype=torch.int32)
    b = Streams(data, batch_size=2, seq_len=10, seed=0)
    n = b.steps_per_epoch
    for _ in range(n):
        b.next()
    b.next()
    assert b.new_epoch and b.epoch == 1


@pytest.mark.parametrize("cls", [Portions, Streams])
def test_batcher_state_round_trips(cls):
    data = torch.arange(3000, dtype=torch.int32)
    a = cls(data, batch_size=3, seq_len=17, seed=5)
    for _ in range(7):
        a.next()
    b = cls(data, batch_size=3, seq_len=17, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(200):
        xa, _ = a.next()
        xb, _ = b.next()
        assert torch.equal(xa, xb)


@pytest.mark.parametrize("cls", [Portions, Streams])
def test_text_shorter_than_a_sequence_is_refused(cls):
    with pytest.raises(CharloomError, match="smaller"):
        cls(torch.arange(10), batch_size=1, seq_len=20, seed=0)
