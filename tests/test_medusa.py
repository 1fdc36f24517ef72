import json

import pytest
import torch

from spec import DraftContext, MedusaDrafter, SamplingParams
from spec.drafters import ResBlock
from spec.errors import CheckpointError
from spec.trees import tree_from_choices

from helpers import model


def test_heads_are_distinct_zero_initialised_resblocks_over_a_copy_of_lm_head():
    m = model("llama")
    drafter = MedusaDrafter.from_model(m, num_heads=3, num_layers=2)
    blocks = [b for head in drafter.heads.heads for b in head if isinstance(b, ResBlock)]
    assert len(blocks) == 6 and len({id(b) for b in blocks}) == 6
    assert all(torch.count_nonzero(b.linear.weight) == 0 for b in blocks)
    lm_head = m.get_output_embeddings().weight
    for head in drafter.heads.heads:
        assert torch.equal(head[-1].weight, lm_head)
        assert head[-1].weight.data_ptr() != lm_head.data_ptr()
    assert drafter.num_parameters == 3 * (2 * (32 * 32 + 32) + 96 * 32)


def test_head_k_fills_depth_k_plus_1_with_its_top_k():
    m = model("qwen2")
    drafter = MedusaDrafter.from_model(m, num_heads=2, seed=1)
    with torch.no_grad():
        for p in drafter.heads.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    tree = tree_from_choices([[0], [1], [2], [0, 0], [0, 1], [2, 1]])
    hidden = torch.randn(32, dtype=torch.float64)
    drafter.commit(torch.tensor([4]), hidden[None])  # the state that produced the root, 5
    draft = drafter.propose(tree, DraftContext(tokens=torch.tensor([4, 5])), SamplingParams())
    with torch.no_grad():
        logits = drafter.heads(hidden)
    top0, top1 = logits[0].topk(3).indices, logits[1].topk(3).indices
    assert draft.tokens.tolist() == [5, top0[0], top0[1], top0[2], top1[0], top1[1], top1[1]]
    logp = logits.log_softmax(-1)
    assert draft.log_confidence[4] == pytest.approx(float(logp[0, top0[0]] + logp[1, top1[0]]))


def test_broken_checkpoints_are_refused(tmp_path):
    m = model("llama")
    MedusaDrafter.from_model(m, num_heads=2).save_pretrained(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="does not exist"):
        MedusaDrafter.from_pretrained(tmp_path / "missing", m)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        MedusaDrafter.from_pretrained(tmp_path / "file", m)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="never unpickles"):
        MedusaDrafter.from_pretrained(pickled, m)
    weights = tmp_path / "ok" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        MedusaDrafter.from_pretrained(tmp_path / "ok", m)


def test_config_with_unknown_or_missing_fields_is_refused(tmp_path):
    m = model("llama")
    MedusaDrafter.from_model(m, num_heads=2).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["hyperparameters"]["surprise"] = 1
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown field"):
        MedusaDrafter.from_pretrained(tmp_path, m)
    del config["hyperparameters"]["surprise"], config["hyperparameters"]["num_heads"]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing field"):
        MedusaDrafter.from_pretrained(tmp_path, m)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        MedusaDrafter.from_pretrained(tmp_path, m)


