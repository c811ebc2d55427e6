"""Decoding in per-thread chunks (copies, or views of the parameters) gives the same results."""

import contextlib
import sys
import threading

import pytest
import torch

import unimodel as um
import unimodel.generation as generation
from unimodel.nn import Linear, decoding_layout, linear


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("features", [(16, 40), (40, 16), (24, 24)])
@pytest.mark.parametrize("shape", [(1,), (3, 1), (2, 5), (40,)])
def test_linear_with_decoding_copy_equals_linear(threads, bias, features, shape):
    torch.manual_seed(0)
    d_in, d_out = features
    layer = Linear(d_in, d_out, bias=bias)
    x = torch.randn(*shape, d_in)
    ref = layer(x)
    with decoding_layout(layer, threads=threads) as made:
        if threads == 1 and d_out <= d_in:
            assert not made and layer.decode_weight is None  # one thread: linear reads these fastest
        elif d_out < d_in:
            # narrowing: the output split into per-thread blocks of the parameter itself, no copy
            assert made and layer.decode_split_out and layer.decode_weight.shape == (threads, d_in, d_out // threads)
            assert layer.decode_weight.data_ptr() == layer.weight.data_ptr()
        else:
            assert made and not layer.decode_split_out
            assert layer.decode_weight.shape == (threads, d_in // threads, d_out)
        torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-6)
    assert layer.decode_weight is None and layer.decode_bias is None and not layer.decode_split_out


def test_chunks_divide_the_split_width():
    layer = Linear(18, 40)
    with decoding_layout(layer, threads=4):
        assert layer.decode_weight.shape == (3, 6, 40)  # 4 does not divide the input 18; 3 does
    layer = Linear(40, 18)
    with decoding_layout(layer, threads=4):
        assert layer.decode_weight.shape == (3, 40, 6)  # a narrowing layer splits its output 18


def test_many_rows_use_the_parameter():
    layer = Linear(8, 32)
    x = torch.randn(linear.DECODING_MAX_ROWS + 1, 8)
    with decoding_layout(layer, threads=2):
        layer.decode_weight.zero_()  # a stale copy would show in the result
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        assert not torch.allclose(layer(x[:1]), torch.nn.functional.linear(x[:1], layer.weight, layer.bias))


def test_which_layers_get_copies_and_all_are_dropped():
    model = torch.nn.Sequential(Linear(8, 32), torch.nn.ReLU(), Linear(32, 8), Linear(8, 8))
    with decoding_layout(model, threads=1):
        assert [m.decode_weight is not None for m in (model[0], model[2], model[3])] == [True, False, False]
    with decoding_layout(model, threads=2):
        assert all(m.decode_weight is not None for m in (model[0], model[2], model[3]))
    assert all(m.decode_weight is None for m in (model[0], model[2], model[3]))
    # an error inside the block drops the copies too
    with pytest.raises(RuntimeError), decoding_layout(model, threads=2):
        raise RuntimeError("boom")
    assert model[0].decode_weight is None


def test_budget_too_small_means_no_copies():
    layer = Linear(8, 32)
    with decoding_layout(layer, budget=8 * 32 * 4 - 1) as made:
        assert not made and layer.decode_weight is None
    narrowing = Linear(32, 8)  # its layout is a view of the parameter: it takes none of the budget
    with decoding_layout(narrowing, budget=0, threads=2) as made:
        assert made and narrowing.decode_split_out
    with decoding_layout(None) as made:
        assert not made


@pytest.mark.parametrize("name", ["gpt", "t5", "bart"])
def test_generation_is_the_same_with_and_without_copies(name, monkeypatch):
    torch.manual_seed(0)
    model = um.build_model({"name": f"{name}-tiny"} if name != "gpt" else {"name": "gpt2-tiny"}).eval()
    ids = torch.randint(5, model.vocab_size, (2, 7))
    kw = dict(max_new_tokens=12, min_new_tokens=12)
    fast = model.generate(ids, **kw)
    beams = model.generate(ids, num_beams=3, **kw)
    monkeypatch.setattr(generation, "decoding_layout", lambda *modules: contextlib.nullcontext(False))
    assert torch.equal(model.generate(ids, **kw), fast)
    assert torch.equal(model.generate(ids, num_beams=3, **kw), beams)


def test_each_block_keeps_its_own_layout_when_threads_share_a_layer():
    # two threads lay out one layer at once, with different chunk counts; each must compute with its
    # own copies, and keep them after the other thread's block has closed
    torch.manual_seed(0)
    layer = Linear(24, 48)  # widening: its layout is a copy of k chunks
    x = torch.randn(1, 24)
    alone = {}
    for k in (2, 4):
        with decoding_layout(layer, threads=k):
            alone[k] = layer(x)
    both_open, first_closed = threading.Barrier(2, timeout=30), threading.Event()
    seen: dict[int, list] = {2: [], 4: []}

    def run(k: int) -> None:
        with decoding_layout(layer, threads=k):
            both_open.wait()
            seen[k].append((layer.decode_weight.shape[0], layer(x)))
            both_open.wait()  # neither block closes before both have computed
            if k == 4:
                assert first_closed.wait(timeout=30)
                seen[k].append((layer.decode_weight.shape[0], layer(x)))
        if k == 2:
            first_closed.set()

    threads = [threading.Thread(target=run, args=(k,)) for k in (2, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [len(seen[2]), len(seen[4])] == [1, 2]
    for k, calls in seen.items():
        for chunks, out in calls:
            assert chunks == k
            assert torch.equal(out, alone[k])
    assert layer.decode_weight is None  # nothing left on the module


def test_two_threads_generating_with_one_model_match_sequential_runs():
    torch.manual_seed(0)
    model = um.build_model("gpt2-tiny", vocab_size=512).eval()
    prompts = [torch.randint(5, model.vocab_size, (1, n)) for n in (3, 6)]
    kw = dict(max_new_tokens=6, min_new_tokens=6)
    sequential = [model.generate(p, **kw) for p in prompts]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=30)

    def run(rows: list[int]) -> None:
        try:
            start.wait()
            for _ in range(2):
                for i in rows:
                    results[i] = model.generate(prompts[i], **kw)
        except BaseException as exc:  # reported below: an exception in a thread would otherwise vanish
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, inside the layout's reads too
    try:
        threads = [threading.Thread(target=run, args=(rows,)) for rows in ([0], [1])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert all(torch.equal(results[i], sequential[i]) for i in range(len(prompts)))
