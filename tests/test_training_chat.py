"""Conversation data: chat-template rendering, the assistant-only loss mask every objective honours, one
conversation per block, the typed refusals, and `spec train` on a conversation file."""

from __future__ import annotations

import json

import pytest
import torch

from spec.errors import DataError, TokenizerError
from spec.models.tiny import tiny_model
from spec.registry import DRAFTERS, HeadOptions
from spec.training import (
    ChatTemplateError,
    ConversationError,
    LanguageModelObjective,
    TokenBlocks,
    TrainConfig,
    conversation_blocks,
    is_conversation_data,
    iter_conversations,
    render_conversation,
    train,
)

CHATML = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
          "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
WORDS = 40
VOCAB = 64


def chat_tokenizer(template: str | None = CHATML):
    """A word-level tokenizer (w0 .. w39, the roles, ChatML markers) with a chat template, built here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]
    words += [f"w{i}" for i in range(WORDS)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = template
    return tokenizer


def text(*numbers: int) -> str:
    return " ".join(f"w{n}" for n in numbers)


def conversation(seed: int, tail: tuple[int, ...] = (1, 2, 3)) -> list[dict]:
    """system, user, assistant, user, assistant, then a trailing user turn ``tail`` (after every assistant token)."""
    g = torch.Generator().manual_seed(seed)
    words = lambda n: text(*torch.randint(WORDS, (n,), generator=g).tolist())  # noqa: E731
    return [{"role": "system", "content": words(2)}, {"role": "user", "content": words(3)},
            {"role": "assistant", "content": words(5)}, {"role": "user", "content": words(2)},
            {"role": "assistant", "content": words(4)}, {"role": "user", "content": text(*tail)}]


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer()


def test_only_the_assistants_content_and_end_of_turn_are_masked_in(tokenizer):
    messages = [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3 w4 w5"},
                {"role": "user", "content": "w6"}, {"role": "assistant", "content": "w7"}]
    ids, mask = render_conversation(tokenizer, messages)
    words = tokenizer.convert_ids_to_tokens(ids)
    assert [w for w, m in zip(words, mask) if m] == ["w3", "w4", "w5", "<|im_end|>", "w7", "<|im_end|>"]
    # The header the template writes before a reply is the prompt's, not the assistant's.
    assert words[5:7] == ["<|im_start|>", "assistant"] and not any(mask[5:7])


def test_sharegpt_and_messages_records_render_alike_and_are_sniffed(tokenizer, tmp_path):
    messages = conversation(0)
    sharegpt = [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]}
                for m in messages]
    (tmp_path / "a.jsonl").write_text(json.dumps({"messages": messages}) + "\n\n"
                                      + json.dumps({"conversations": sharegpt}) + "\n")
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": "w1 w2"}) + "\n")
    assert is_conversation_data(tmp_path / "a.jsonl") and not is_conversation_data(tmp_path / "text.jsonl")
    first, second = list(iter_conversations(tmp_path / "a.jsonl"))
    assert first == second == messages
    with pytest.raises(DataError, match="conversation"):  # plain-text reading names the chat reader
        from spec.training import iter_texts

        list(iter_texts(tmp_path / "a.jsonl"))


@pytest.mark.parametrize("record, error, named", [
    ({"messages": []}, ConversationError, "empty conversation"),
    ({"conversations": []}, ConversationError, "empty conversation"),
    ({"messages": [{"role": "user", "content": "w1"}]}, ConversationError, "no assistant turn"),
    ({"messages": [{"role": "tool", "content": "w1"}, {"role": "assistant", "content": "w2"}]},
     ConversationError, "unknown role 'tool'"),
    ({"conversations": [{"from": "bing", "value": "w1"}, {"from": "gpt", "value": "w2"}]},
     ConversationError, "human -> user, gpt -> assistant"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "w2"}]}, ConversationError, "string 'content'"),
    ({"text": "w1"}, ConversationError, "neither a 'messages'"),
])
def test_unusable_conversations_are_typed_refusals(record, error, named):
    with pytest.raises(error, match=named):
        list(iter_conversations([record]))


def test_a_conversation_opening_with_the_assistant_and_malformed_blocks_are_refused(tokenizer):
    with pytest.raises(ConversationError, match="starts with the assistant"):
        conversation_blocks([[{"role": "assistant", "content": "w1"}, {"role": "user", "content": "w2"}]],
                            tokenizer, block_size=8)
    with pytest.raises(DataError, match="loss_mask"):
        TokenBlocks(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(DataError, match="int64"):
        TokenBlocks(torch.zeros(2, 5), torch.ones(2, 5, dtype=torch.bool))


def test_a_tokenizer_without_a_usable_chat_template_is_refused(tokenizer):
    messages = conversation(0)
    with pytest.raises(ChatTemplateError, match="has none") as caught:
        conversation_blocks([messages], chat_tokenizer(None), block_size=16)
    assert isinstance(caught.value, TokenizerError)
    # A template that ends the whole conversation differently from its prefixes cannot locate the replies.
    closing = CHATML + "{% if not add_generation_prompt %} <pad> {% endif %}"
    with pytest.raises(ChatTemplateError, match="token prefixes"):
        render_conversation(chat_tokenizer(closing), messages)


def test_each_conversation_gets_its_own_padded_blocks(tokenizer):
    short, long = conversation(1)[1:3], conversation(2) + conversation(3)
    blocks = conversation_blocks([short, long], tokenizer, block_size=16)
    ids_short, mask_short = render_conversation(tokenizer, short)
    ids_long, _ = render_conversation(tokenizer, long)
    assert blocks.tokens[0, :len(ids_short)].tolist() == ids_short  # the short one alone, then padding
    assert (blocks.tokens[0, len(ids_short):] == tokenizer.pad_token_id).all()
    assert not blocks.loss_mask[0, len(ids_short):].any()
    assert blocks.loss_mask[0, :len(ids_short)].tolist() == mask_short
    # The long one is cut like text (one token of overlap), its blocks holding none of the short one's tokens.
    assert blocks.tokens[1].tolist() == ids_long[:17] and blocks.tokens[2].tolist()[:17] == ids_long[16:33]
    # Another conversation before it changes nothing in its blocks (nor, below, in the features it gets).
    again = conversation_blocks([conversation(9), long], tokenizer, block_size=16)
    n = blocks.shape[0] - 1
    assert again.shape[0] > n + 1  # the conversation before it took more blocks
    assert torch.equal(again.tokens[-n:], blocks.tokens[1:]) and torch.equal(again.loss_mask[-n:], blocks.loss_mask[1:])


def test_a_conversations_features_do_not_depend_on_the_other_conversations_in_its_batch(tokenizer):
    model = tiny_model("llama", seed=0, vocab_size=VOCAB)
    one = conversation_blocks([conversation(1), conversation(2)], tokenizer, block_size=40)
    other = conversation_blocks([conversation(5), conversation(2)], tokenizer, block_size=40)
    assert one.shape[0] == 2 and not torch.equal(one.tokens[0], other.tokens[0])
    assert torch.equal(one.tokens[1], other.tokens[1])
    with torch.no_grad():
        a = model(input_ids=one.tokens[:, :-1], output_hidden_states=True).hidden_states[-1]
        b = model(input_ids=other.tokens[:, :-1], output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(a[1], b[1], rtol=0, atol=1e-12)


RECIPES = [("medusa", "medusa1"), ("medusa", "medusa2"), ("medusa", "self-distill"), ("hydra", "hydra"),
           ("hydra", "hydra++"), ("clover", "clover"), ("kangaroo", "kangaroo"), ("eagle", "eagle"),
           ("eagle3", "eagle3"), ("lm", "lm")]


def objective_for(drafter: str, recipe: str):
    model = tiny_model("llama", seed=0, vocab_size=VOCAB)
    if drafter == "lm":
        return LanguageModelObjective(model)
    _, objective = DRAFTERS[drafter].build(model, recipe, HeadOptions(num_heads=2, num_layers=1, exit_layer=1, seed=0))
    return objective


def loss_of(objective, batch) -> torch.Tensor:
    torch.manual_seed(0)  # EAGLE's input noise
    return objective.loss(objective.trainable(), batch, step=1000)[0]  # medusa2: past its head warm-up


@pytest.mark.parametrize("drafter, recipe", RECIPES)
def test_every_objective_ignores_masked_positions(tokenizer, drafter, recipe):
    """Tokens after the last assistant token (a trailing user turn, the padding) are only ever targets of
    masked-out positions: changing them leaves the loss bit for bit; changing an assistant token moves it."""
    objective = objective_for(drafter, recipe)
    base = conversation_blocks([conversation(4), conversation(6)], tokenizer, block_size=40)
    assert base.shape[0] == 2
    last = [int(row.nonzero().max()) for row in base.loss_mask]
    tokens = base.tokens.clone()
    for row, end in enumerate(last):
        tokens[row, end + 1:] = torch.randint(WORDS, (tokens.shape[1] - end - 1,), generator=torch.Generator().manual_seed(row)) + 7
    assert not torch.equal(tokens, base.tokens)
    reference = loss_of(objective, base)
    assert torch.equal(loss_of(objective, TokenBlocks(tokens, base.loss_mask)), reference)
    changed = base.tokens.clone()
    changed[0, last[0] - 1] = (changed[0, last[0] - 1] + 1 - 7) % WORDS + 7  # an assistant word
    assert not torch.allclose(loss_of(objective, TokenBlocks(changed, base.loss_mask)), reference)
    # Nothing to learn: zero loss, zero gradient.
    module = objective.trainable()
    module.zero_grad(set_to_none=True)
    nothing = loss_of(objective, TokenBlocks(base.tokens, torch.zeros_like(base.loss_mask)))
    assert float(nothing.detach()) == 0.0
    nothing.backward()
    assert all(p.grad is None or not p.grad.any() for p in module.parameters())


def test_changing_a_user_turn_after_the_replies_does_not_move_medusa_or_hydra_training(tokenizer, tmp_path):
    """Medusa and Hydra++ heads trained a few steps on conversations: a user turn with other words (the same
    token count) gives the same loss and the same weights; another assistant word gives others."""
    data = [conversation(seed) for seed in range(8)]
    user_changed = [conversation(seed, tail=(30, 31, 32)) for seed in range(8)]
    reply_changed = [list(data[0][:4]) + [{"role": "assistant", "content": "w0 w0 w0 w0"}, data[0][5]]] + data[1:]

    def run(drafter, recipe, conversations, name):
        model = tiny_model("llama", seed=0, vocab_size=VOCAB, dtype=torch.float32)
        built, objective = DRAFTERS[drafter].build(model, recipe, HeadOptions(num_heads=2, num_layers=1, seed=0))
        blocks = conversation_blocks(conversations, tokenizer, block_size=32)
        config = TrainConfig(out_dir=str(tmp_path / f"{recipe}-{name}"), steps=3, batch_size=4, lr=1e-2,
                             warmup_steps=1, checkpoint_every=100, eval_every=3, log_every=1, progress=False)
        result = train(objective, blocks, config, eval_blocks=blocks[:2])
        losses = [json.loads(line)["loss"] for line in result.log_path.read_text().splitlines()]
        return losses, {k: v.clone() for k, v in objective.trainable().state_dict().items()}, result

    for drafter, recipe in (("medusa", "medusa1"), ("hydra", "hydra++")):
        losses, weights, result = run(drafter, recipe, data, "data")
        assert "eval_head0_top1" in result.final_metrics and all(loss > 0 for loss in losses)
        same_losses, same_weights, _ = run(drafter, recipe, user_changed, "user")
        assert same_losses == losses
        assert all(torch.equal(weights[k], same_weights[k]) for k in weights)
        other_losses, _, _ = run(drafter, recipe, reply_changed, "reply")
        assert other_losses != losses


def test_self_distillation_writes_the_first_reply_and_masks_in_only_it(tokenizer):
    from spec.training.distill import generate_own_conversations

    model = tiny_model("llama", seed=0, vocab_size=VOCAB)
    data = [conversation(seed) for seed in range(3)] + [conversation(0)[1:3]]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    blocks = generate_own_conversations(model, tokenizer, data, new_tokens=6, block_size=24, seed=0, batch_size=2,
                                        stop_token_ids=[end, 9])
    prompt_ids = tokenizer.apply_chat_template(conversation(0)[:2], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
    row, mask = blocks.tokens[0].tolist(), blocks.loss_mask[0].tolist()
    assert row[:len(prompt_ids)] == prompt_ids and not any(mask[:len(prompt_ids)])
    reply = [t for t, m in zip(row, mask) if m]
    assert 1 <= len(reply) <= 6 and all(t not in (end, 9) for t in reply[:-1])
    assert len(reply) == 6 or reply[-1] in (end, 9)  # cut right after the end of its turn
    assert mask[len(prompt_ids): len(prompt_ids) + len(reply)] == [True] * len(reply)
    with pytest.raises(ConversationError, match="starts with the assistant"):
        generate_own_conversations(model, tokenizer, [[{"role": "assistant", "content": "w1"}]], 4, 16)


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("chat-model")
    tiny_model("llama", seed=0, vocab_size=VOCAB, dtype=torch.float32).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    lines = [json.dumps({"messages": conversation(seed)}) for seed in range(6)]
    lines += [json.dumps({"conversations": [{"from": "human", "value": text(seed, 2)},
                                            {"from": "gpt", "value": text(seed, 3, 4, 5)}]}) for seed in range(6)]
    (path / "chat.jsonl").write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("drafter, recipe", [("medusa", "medusa1"), ("medusa", "self-distill"), ("eagle3", "eagle3")])
def test_spec_train_sniffs_conversation_data(chat_model_dir, tmp_path, drafter, recipe):
    """Conversation .jsonl is read as such without an option; EAGLE-3's draft vocabulary comes from its
    assistant tokens."""
    from spec.apps.cli import main

    out = tmp_path / recipe
    code = main(["train", "--drafter", drafter, "--recipe", recipe, "--model", str(chat_model_dir),
                 "--data", str(chat_model_dir / "chat.jsonl"), "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--block-size", "24", "--num-heads", "2", "--eval-every", "2",
                 "--distill-tokens", "6", "--heldout-fraction", "0.2"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["run"]["data_format"] == "chat"
    assert (out / "heads" / "model.safetensors").exists() and (out / "acceptance_stats.json").exists()


def test_spec_train_data_format_chat_reads_jsonl_only(chat_model_dir, tmp_path, capsys):
    from spec.apps.cli import main

    (tmp_path / "notes.txt").write_text("w1 w2")
    code = main(["train", "--drafter", "medusa", "--model", str(chat_model_dir), "--data", str(tmp_path / "notes.txt"),
                 "--data-format", "chat", "--out", str(tmp_path / "out")])
    assert code == 2 and "--data-format chat reads .jsonl only" in capsys.readouterr().err
