"""Gradient checkpointing: far fewer bytes saved for backward, identical gradients."""
from __future__ import annotations

import pytest
import torch

from cuts_helpers import SavedTensorBytes, make_cut, run_context
from leantrain import UserError, train
from leantrain.cuts.gradient_checkpointing import checkpoint_blocks


def forward_backward(model, inputs: dict, loss_of) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
    """Saved-for-backward bytes of one forward, the loss, and every parameter's gradient."""
    model.zero_grad(set_to_none=True)
    with SavedTensorBytes() as saved:
        loss = loss_of(model(**inputs))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return saved.bytes, loss.detach(), grads


def assert_same_grads(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-8, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
def test_minilm_saved_bytes_fall_4x_and_grads_match(bundled_model_dir):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        bundled_model_dir, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    ).float()
    model.train()  # transformers only checkpoints in training mode; dropout is 0 so runs are deterministic
    inputs = {
        "input_ids": torch.randint(1000, 20000, (4, 128), generator=torch.Generator().manual_seed(1)),
        "attention_mask": torch.ones(4, 128, dtype=torch.long),
    }
    labels = torch.tensor([0, 1, 2, 0])

    def loss_of(out):
        return torch.nn.functional.cross_entropy(out.logits, labels)

    plain_bytes, plain_loss, plain_grads = forward_backward(model, inputs, loss_of)

    run = run_context()
    model = make_cut("gradient_checkpointing").prepare_model(model, run)
    assert run.extras["checkpointed_blocks"] == "transformers"
    cut_bytes, cut_loss, cut_grads = forward_backward(model, inputs, loss_of)

    assert cut_bytes * 4 <= plain_bytes, f"saved bytes {plain_bytes} -> {cut_bytes}"
    torch.testing.assert_close(cut_loss, plain_loss, rtol=1e-6, atol=0)
    assert len(plain_grads) == len(list(model.parameters()))
    assert_same_grads(cut_grads, plain_grads)


def test_tiny_llama_checkpointing_turns_off_kv_cache_and_keeps_grads(tiny_llama_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama_dir, attention_dropout=0.0)).train()
    ids = torch.randint(1000, 20000, (2, 64), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def loss_of(out):
        return out.logits[:, :-1].float().logsumexp(-1).mean()

    plain_bytes, _, plain_grads = forward_backward(model, inputs, loss_of)
    run = run_context()
    model = make_cut("gradient_checkpointing").prepare_model(model, run)
    assert model.config.use_cache is False
    cut_bytes, _, cut_grads = forward_backward(model, inputs, loss_of)
    assert cut_bytes < plain_bytes
    assert_same_grads(cut_grads, plain_grads)


class Block(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, width)

    def forward(self, x, scale: float = 1.0):
        return x + scale * self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class BlockNet(torch.nn.Module):
    """A plain module: an input layer, a ModuleList of blocks, a small side list and a head."""

    def __init__(self, width: int = 32, depth: int = 4):
        super().__init__()
        self.embed = torch.nn.Linear(8, width)
        self.blocks = torch.nn.ModuleList(Block(width) for _ in range(depth))
        self.side = torch.nn.ModuleList([torch.nn.Identity()])  # a smaller ModuleList, not the blocks
        self.head = torch.nn.Linear(width, 3)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, scale=0.5)  # keyword arguments must pass through the checkpoint
        for layer in self.side:
            h = layer(h)
        return self.head(h.mean(1))


def _blocknet_inputs():
    gen = torch.Generator().manual_seed(3)
    return {"x": torch.randn(8, 32, 8, generator=gen)}, torch.randint(0, 3, (8,), generator=gen)


def test_generic_blocks_saved_bytes_fall_and_grads_match():
    torch.manual_seed(0)
    model = BlockNet()
    inputs, labels = _blocknet_inputs()

    def loss_of(out):
        return torch.nn.functional.cross_entropy(out, labels)

    plain_bytes, plain_loss, plain_grads = forward_backward(model, inputs, loss_of)
    assert checkpoint_blocks(model) == 4  # the largest ModuleList: the 4 blocks
    cut_bytes, cut_loss, cut_grads = forward_backward(model, inputs, loss_of)

    assert cut_bytes * 4 <= plain_bytes, f"saved bytes {plain_bytes} -> {cut_bytes}"
    torch.testing.assert_close(cut_loss, plain_loss, rtol=1e-6, atol=0)
    assert_same_grads(cut_grads, plain_grads)

    # Without gradients (evaluation) the blocks run plainly and give the same output.
    with torch.no_grad():
        fresh = BlockNet()
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(**inputs), fresh(**inputs))


def test_generic_path_through_the_cut_and_named_modules():
    model = BlockNet()
    run = run_context()
    make_cut("gradient_checkpointing").prepare_model(model, run)
    assert run.extras["checkpointed_blocks"] == 4

    inputs, _ = _blocknet_inputs()
    with SavedTensorBytes() as plain_saved:
        BlockNet()(**inputs)

    # Naming the list to checkpoint: the blocks by name give the same saving as the default,
    # the small side list alone leaves the blocks' activations stored.
    for modules, count, cut_most in ((["blocks"], 4, True), (["side"], 1, False)):
        model = BlockNet()
        run = run_context()
        make_cut("gradient_checkpointing", modules=modules).prepare_model(model, run)
        assert run.extras["checkpointed_blocks"] == count
        with SavedTensorBytes() as saved:
            model(**inputs)
        assert (saved.bytes * 4 <= plain_saved.bytes) is cut_most, (modules, saved.bytes, plain_saved.bytes)


def test_generic_path_errors_name_the_recipe_key():
    with pytest.raises(UserError, match=r"cuts\.gradient_checkpointing\.modules: no submodule named 'nope'"):
        make_cut("gradient_checkpointing", modules=["nope"]).prepare_model(BlockNet(), run_context())
    with pytest.raises(UserError, match=r"cuts\.gradient_checkpointing"):
        make_cut("gradient_checkpointing").prepare_model(torch.nn.Linear(2, 2), run_context())


def test_generic_model_trains_through_the_engine(tmp_path):
    torch.manual_seed(0)
    model = BlockNet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(4)
    xs, ys = torch.randn(24, 16, 8, generator=gen), torch.randint(0, 3, (24,), generator=gen)
    data = [(xs[i], ys[i]) for i in range(24)]

    def loss_fn(m, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(m(x=x), y)

    result = train(
        {"cuts": {"gradient_checkpointing": True}, "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2},
         "output": {"dir": str(tmp_path / "run"), "save_model": False}},
        model=model, loss_fn=loss_fn, train_data=data, show_progress=False,
    )
    assert result.summary["extras"]["checkpointed_blocks"] == 4
    assert result.summary["status"] == "completed"
    assert all(not torch.equal(p, before[n]) for n, p in result.model.named_parameters())
