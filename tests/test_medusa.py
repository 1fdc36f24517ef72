import copy
import json

import pytest
import torch

from spec import CandidateTree, DraftContext, MedusaDrafter, SamplingParams
from spec.drafters import ResBlock
from spec.errors import CheckpointError, IncompatibleDrafterError, TreeTooDeepError
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


def test_save_load_round_trip_is_bit_identical(tmp_path):
    m = model("llama")
    drafter = MedusaDrafter.from_model(m, num_heads=3, num_layers=1, seed=0)
    with torch.no_grad():
        for p in drafter.heads.parameters():
            p.add_(torch.randn_like(p))
    drafter.save_pretrained(tmp_path)
    loaded = MedusaDrafter.from_pretrained(tmp_path, m)
    for (name, a), (_, b) in zip(drafter.heads.state_dict().items(), loaded.heads.state_dict().items()):
        assert torch.equal(a, b), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["drafter_type"] == "medusa" and config["base_model"]["vocab_size"] == 96


def test_loading_onto_another_model_is_refused(tmp_path):
    drafter = MedusaDrafter.from_model(model("llama"), num_heads=2)
    drafter.save_pretrained(tmp_path)
    with pytest.raises(IncompatibleDrafterError, match="weights differ"):
        MedusaDrafter.from_pretrained(tmp_path, model("llama", seed=1))
    with pytest.raises(IncompatibleDrafterError, match="vocabulary"):
        MedusaDrafter.from_pretrained(tmp_path, model("llama", vocab_size=128))
    with pytest.raises(IncompatibleDrafterError, match="hidden"):
        MedusaDrafter.from_pretrained(tmp_path, model("llama", hidden_size=48))
    # The same weights in another dtype are the same model.
    MedusaDrafter.from_pretrained(tmp_path, copy.deepcopy(model("llama")).to(torch.float32))


def test_heads_built_for_another_model_are_refused():
    heads = MedusaDrafter.from_model(model("llama"), num_heads=2).heads
    with pytest.raises(IncompatibleDrafterError, match="vocabulary"):
        MedusaDrafter(model("llama", vocab_size=128), heads)
    with pytest.raises(IncompatibleDrafterError, match="hidden"):
        MedusaDrafter(model("llama", hidden_size=48), heads)


def test_tree_deeper_than_heads_is_refused():
    drafter = MedusaDrafter.from_model(model("llama"), num_heads=2)
    tree = tree_from_choices([[0], [0, 0], [0, 0, 0]])
    with pytest.raises(TreeTooDeepError, match="2 heads"):
        drafter.propose(tree, DraftContext(tokens=torch.tensor([1, 2])),
                        SamplingParams())


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


def test_one_token_prompt_drafts_nothing_first():
    drafter = MedusaDrafter.from_model(model("llama"), num_heads=2)
    draft = drafter.propose(tree_from_choices([[0]]), DraftContext(tokens=torch.tensor([3])),
                            SamplingParams())
    assert draft.tree == CandidateTree.root_only() and draft.tokens.tolist() == [3]
