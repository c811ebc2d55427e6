"""Recurrent training on text ([data] recurrent_memory): lanes of consecutive blocks, the memory carried from
one step to the next for a model that declares mems, and the refusals."""

import pytest
import torch

from unimodel.data.dataset import PackedData
from unimodel.data.recurrent import RecurrentText, lanes
from unimodel.errors import ConfigError
from unimodel.interfaces import ObjectiveOutput
from unimodel.training import train

pytestmark = pytest.mark.usefixtures("one_thread")


def recurrent(n_blocks=11, memory=5):
    blocks = torch.arange(n_blocks * 4).reshape(n_blocks, 4)
    return RecurrentText.from_packed(PackedData(blocks, [[1, 2]], 4, 1, 1), memory)


def test_each_row_reads_consecutive_blocks_across_steps():
    data = recurrent(11)
    data.plan_batches(3)
    order = data.epoch_order(0, seed=0)
    assert len(order) == 9 and sorted(order) == list(range(9))  # 3 lanes of 3 blocks; block 9 and 10 left out
    for r, lane in enumerate(lanes(order, 3)):
        assert sorted(lane) == [3 * r, 3 * r + 1, 3 * r + 2]
        first = lane.index(3 * r)
        assert lane[first:] + lane[:first] == sorted(lane)  # consecutive, from an offset that wraps once
    assert order == data.epoch_order(0, seed=0)
    offsets = {tuple(data.epoch_order(e, seed=0)[:3]) for e in range(8)}
    assert len(offsets) > 1  # the start offset changes between epochs


def test_memory_goes_out_capped_and_detached_and_comes_back_in():
    data = recurrent(memory=5)
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long)}
    assert data.carry_in(batch, None)["mems"].numel() == 0  # the first step: no memory yet
    mems = tuple(torch.randn(2, 9, 8, requires_grad=True) for _ in range(3))
    out = data.carry_out(ObjectiveOutput(loss=torch.zeros(()), n_predictions=1, state={"mems": mems}))
    assert out.shape == (3, 2, 5, 8) and not out.requires_grad and torch.equal(out[1], mems[1][:, -5:])
    assert data.carry_in(batch, out)["mems"] is out
    assert data.carry_in({"input_ids": torch.zeros(3, 4, dtype=torch.long)}, out)["mems"].numel() == 0


def run_config(tmp_path, model, objective, **data):
    return {
        "model": {"name": model, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, **_extra(model)},
        "objective": {"name": objective},
        "data": {
            "max_documents": 8,
            "vocab_size": 300,
            "block_size": 32,
            "tokenizer": "bpe",
            "recurrent_memory": 24,
            **data,
        },
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 3,
            "batch_size": 4,
            "warmup_steps": 1,
            "eval_every": 0,
            "checkpoint_every": 0,
            "log_every": 1,
            "progress": False,
            "sample_tokens": 2,
        },
    }


def _extra(model):
    return {"dropout": 0.0, "attn_dropout": 0.0, "act_dropout": 0.0} if model.startswith("xlnet") else {}


def test_training_carries_each_rows_memory_to_its_next_block(tmp_path, monkeypatch):
    seen = []
    carry_in = RecurrentText.carry_in

    def spy(self, batch, carried):
        out = carry_in(self, batch, carried)
        seen.append((out["input_ids"].clone(), out["mems"].clone()))
        return out

    monkeypatch.setattr(RecurrentText, "carry_in", spy)
    result = train(run_config(tmp_path, "xlnet-tiny", "plm"))
    assert [tuple(m.shape) for _, m in seen] == [(0,), (2, 4, 24, 32), (2, 4, 24, 32)]
    # step 2's memory of each row is the content stream before the row's block 2: the layer-0 memory is the
    # embedding of the last 24 tokens of block 1 of the same row, so the rows continue their own text
    emb = result.model.encoder.embed_tokens.weight.detach()
    (ids1, _), (ids2, mems2) = seen[0], seen[1]
    assert not torch.equal(ids1, ids2)
    # the weights moved after step 1, so compare layer 0's memory with step 1's weights' embedding loosely
    assert torch.allclose(mems2[0], emb[ids1[:, -24:]], atol=0.05)
    assert not torch.allclose(mems2[0], emb[ids1.roll(1, 0)[:, -24:]], atol=0.05)  # not another row's text
    assert result.after.loss == result.after.loss  # finite


def test_refusals_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"does not provide 'mems'.*xlnet.*recurrent_memory = 0"):
        train(run_config(tmp_path, "gpt2-tiny", "clm"))
    with pytest.raises(ConfigError, match=r"objective 'mlm' does not pass a memory.*plm"):
        train(run_config(tmp_path, "xlnet-tiny", "mlm"))
    with pytest.raises(ConfigError, match="recurrent_memory"):
        train(run_config(tmp_path, "xlnet-tiny", "plm", recurrent_memory=-1))
