"""The hand-written GRU recurrence (ctmarl_baselines.gru) against torch's nn.GRU: values and every
gradient, with and without autograd, on sizes where the per-step buffers and the large
after-the-loop products both matter."""

import pytest
import torch
from ctmarl_baselines import gru as gru_module
from ctmarl_baselines.gru import GRUSequence, gru_sequence


def _case(steps, batch, in_dim=5, hidden=4, seed=0):
    torch.manual_seed(seed)
    gru = torch.nn.GRU(in_dim, hidden, batch_first=True)
    with torch.no_grad():  # non-zero biases everywhere, so a misplaced b_hn would show
        for p in gru.parameters():
            p.uniform_(-0.8, 0.8)
    x = torch.randn(steps, batch, in_dim, requires_grad=True)
    h0 = torch.randn(batch, hidden, requires_grad=True)
    return gru, x, h0


def _reference(gru, x, h0):
    out, _ = gru(x.transpose(0, 1), h0.unsqueeze(0))
    return out.transpose(0, 1)


@pytest.fixture(params=[None, 6, 32], ids=["one-chunk", "chunk-rows-6", "chunk-rows-32"])
def chunk_rows(request, monkeypatch):
    """The default chunk (every sequence here fits in one), and small ones that split the steps
    into several chunks, the first in time shorter when they do not divide evenly."""
    if request.param is not None:
        monkeypatch.setattr(gru_module, "CHUNK_ROWS", request.param)
    return request.param


@pytest.mark.parametrize("steps,batch", [(1, 3), (7, 2), (30, 16)])
def test_values_and_all_gradients_equal_nn_gru(steps, batch, chunk_rows):
    gru, x, h0 = _case(steps, batch)
    upstream = torch.randn(steps, batch, gru.hidden_size)
    inputs = [x, h0, *gru.parameters()]
    ours = gru_sequence(x, h0, gru)
    theirs = _reference(gru, x, h0)
    assert ours.shape == (steps, batch, gru.hidden_size)
    assert torch.allclose(ours, theirs, atol=1e-6)
    our_grads = torch.autograd.grad((ours * upstream).sum(), inputs)
    their_grads = torch.autograd.grad((theirs * upstream).sum(), inputs)
    names = ["x", "h0"] + [n for n, _ in gru.named_parameters()]
    for name, a, b in zip(names, our_grads, their_grads):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, atol=1e-5), (name, (a - b).abs().max().item())


def test_gradcheck_in_double_precision(chunk_rows):
    gru, x, h0 = _case(4, 3)
    gru = gru.double()
    args = (x.detach().double().requires_grad_(), h0.detach().double().requires_grad_(),
            *(p.detach().clone().requires_grad_() for p in gru.parameters()))
    # nn.GRU's parameter order is weight_ih, weight_hh, bias_ih, bias_hh: GRUSequence's own.
    assert torch.autograd.gradcheck(GRUSequence.apply, args, eps=1e-6, atol=1e-6)


def test_chunks_change_nothing_but_float_rounding(monkeypatch):
    gru, x, h0 = _case(30, 16)
    upstream = torch.randn(30, 16, gru.hidden_size)
    inputs = [x, h0, *gru.parameters()]

    def run():
        out = gru_sequence(x, h0, gru)
        return [out, *torch.autograd.grad((out * upstream).sum(), inputs)]

    whole = run()
    monkeypatch.setattr(gru_module, "CHUNK_ROWS", 16 * 7)  # 7 steps a chunk: 2 + 7 + 7 + 7 + 7
    for a, b in zip(whole, run(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_no_grad_path_gives_the_same_states_and_records_nothing():
    gru, x, h0 = _case(9, 4)
    with_graph = gru_sequence(x, h0, gru)
    with torch.no_grad():
        without = gru_sequence(x, h0, gru)
    assert without.grad_fn is None and with_graph.grad_fn is not None
    assert torch.equal(without, with_graph.detach())


def test_only_the_inputs_that_need_it_get_a_gradient():
    gru, x, h0 = _case(5, 2)
    x = x.detach()  # e.g. an input layer that is frozen
    out = gru_sequence(x, h0.detach(), gru)
    out.sum().backward()
    assert x.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gru.parameters())
