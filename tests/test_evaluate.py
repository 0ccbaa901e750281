import math

import torch
import torch.nn.functional as F

from charloom.evaluate import evaluate_ids
from charloom.model import CharRNN, ModelConfig


def _batch1_loss(model, ids):
    with torch.no_grad():
        logits, _ = model(ids[None, :-1].long())
    return F.cross_entropy(logits[0], ids[1:].long()).item()


def test_one_chunk_equals_a_plain_batch1_pass():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=20, embed=8, hidden=16, layers=2)).eval()
    ids = torch.randint(0, 20, (1500,))
    r = evaluate_ids(model, ids, max_chunks=1, window=97)
    assert r.chars == 1499
    assert math.isclose(r.loss, _batch1_loss(model, ids), rel_tol=1e-5)
    assert math.isclose(r.bpc, r.loss / math.log(2))
    assert math.isclose(r.perplexity, math.exp(r.loss))


def test_parallel_chunks_count_every_character_once_and_stay_close():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=20, embed=8, hidden=16, layers=1)).eval()
    ids = torch.randint(0, 20, (10_001,))
    r = evaluate_ids(model, ids, max_chunks=8, min_chunk=500, window=128)
    assert r.chars == 10_000
    # Only the first character of each chunk loses its context: the mean barely moves.
    assert abs(r.loss - _batch1_loss(model, ids)) < 0.01
