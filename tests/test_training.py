"""Training with the stock Trainer: held-out loss goes down, the run folder is complete, stateful truncated BPTT
carries a detached state between consecutive batches of the same streams, the regularisers do what they claim, and an
interrupted run resumed from its checkpoint ends with the same weights."""

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, make_tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from modeling_lstmlm import LSTMLMCache, LSTMLMForCausalLM
from modeling_lstmlm.data import BPTTStreams, LMCollator, TokenBlocks
from modeling_lstmlm.modeling_lstmlm import LSTMLMLayer
from modeling_lstmlm.training import (
    BPTT_STATE_FILE,
    DataArguments,
    LMTrainer,
    ModelArguments,
    TimeBudgetCallback,
    TimeBudgetProgressCallback,
    plot_loss_curve,
    run_training,
)

TOKENIZER_DIR = REPO_ROOT / "tokenizer"
SHAKESPEARE = REPO_ROOT / "data" / "tinyshakespeare" / "input.txt"
needs_corpus = pytest.mark.skipif(
    not (TOKENIZER_DIR / "tokenizer.json").is_file() or not SHAKESPEARE.is_file(),
    reason="the committed tokenizer/ or data/tinyshakespeare is missing",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def training_args(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        max_steps=6,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def random_stream(n: int = 2000, vocab: int = 64, seed: int = 0) -> torch.LongTensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (n,), generator=generator)


# -- the Trainer lowers held-out loss; the run folder ------------------------------------------------------------------


@needs_corpus
@pytest.mark.parametrize("stateful", [False, True], ids=["blocks", "stateful-bptt"])
def test_short_trainer_run_lowers_held_out_loss(tmp_path, stateful):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    lines = SHAKESPEARE.read_text().splitlines(keepends=True)
    train_ids = torch.tensor([0] + tokenizer("".join(lines[:1500]))["input_ids"])
    valid_ids = torch.tensor([0] + tokenizer("".join(lines[1500:1700]))["input_ids"])
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config(vocab_size=len(tokenizer), hidden_size=32))
    args = training_args(tmp_path, max_steps=40, learning_rate=1e-2, max_grad_norm=1.0)
    if stateful:
        train, valid = BPTTStreams(train_ids, 4, 32), BPTTStreams(valid_ids, 4, 32)
    else:
        train, valid = TokenBlocks(train_ids, 32), TokenBlocks(valid_ids, 32)
    trainer = LMTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=valid,
        data_collator=LMCollator(),
        stateful_bptt=stateful,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert before > math.log(len(tokenizer)) - 0.5  # about uniform at the start
    assert after < before - 1.0


@needs_corpus
def test_run_training_writes_a_complete_run_folder(tmp_path):
    output = tmp_path / "run"
    data_args = DataArguments(
        train_file=[str(SHAKESPEARE)],
        train_lines="0:300",
        validation_lines="300:340",
        test_lines="340:380",
        block_size=16,
        stateful=True,
        eval_window=32,
        cache_dir=str(tmp_path / "cache"),
    )
    model_args = ModelArguments(hidden_size=16, num_hidden_layers=1)
    args = training_args(output, max_steps=4, eval_strategy="steps", eval_steps=2)
    results = run_training(model_args, data_args, args, default_tokenizer=TOKENIZER_DIR)

    model = AutoModelForCausalLM.from_pretrained(output)
    assert isinstance(model, LSTMLMForCausalLM) and model.config.hidden_size == 16
    assert model.config.use_cache is True  # the Trainer had written use_cache=False
    assert model.generation_config.eos_token_id == 0 and model.generation_config.pad_token_id == 1
    assert AutoTokenizer.from_pretrained(output).bos_token_id == 0
    assert (output / "loss_curve.png").read_bytes()[:8] == PNG_SIGNATURE
    assert list(tmp_path.joinpath("cache").glob("tokens-*.bin")) and list(
        tmp_path.joinpath("cache").glob("tokens-*.json")
    )

    saved = json.loads((output / "eval_results.json").read_text())
    assert saved == pytest.approx(results)
    for split in ("validation", "test"):
        assert saved[f"{split}_word_perplexity"] == pytest.approx(
            math.exp(saved[f"{split}_nll_sum"] / saved[f"{split}_num_words"])
        )
        assert saved[f"{split}_token_perplexity"] == pytest.approx(math.exp(saved[f"{split}_loss"]))
    run_args = json.loads((output / "run_args.json").read_text())
    assert run_args["data"]["train_lines"] == "0:300" and run_args["model"]["hidden_size"] == 16
    assert run_args["training"]["max_steps"] == 4
    assert saved["train_steps"] == 4


@needs_corpus
def test_fine_tuning_an_existing_folder(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    base = LSTMLMForCausalLM(make_tiny_config(vocab_size=len(tokenizer), hidden_size=16))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    data_args = DataArguments(
        train_file=[str(SHAKESPEARE)],
        train_lines="0:200",
        validation_lines="200:240",
        block_size=16,
        cache_dir=str(tmp_path / "cache"),
    )
    model_args = ModelArguments(model_name_or_path=str(tmp_path / "base"), output_dropout=0.3)
    run_training(model_args, data_args, training_args(tmp_path / "ft", max_steps=3))
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "ft")
    assert tuned.config.hidden_size == 16 and tuned.config.output_dropout == 0.3
    assert not torch.equal(tuned.model.embed_tokens.weight, base.model.embed_tokens.weight)  # it trained
    with pytest.raises(ValueError, match="`hidden_size` cannot change when fine-tuning"):
        run_training(ModelArguments(model_name_or_path=str(tmp_path / "base"), hidden_size=32), data_args,
                     training_args(tmp_path / "ft2", max_steps=1))  # fmt: skip


def test_plot_loss_curve_writes_a_png(tmp_path):
    history = [{"loss": 3.0, "step": 1}, {"loss": 2.5, "step": 2}, {"eval_loss": 2.7, "step": 2}]
    path = plot_loss_curve(history, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_time_budget_callback_stops_training(tmp_path):
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config())
    callback = TimeBudgetCallback(minutes=1e-9)
    trainer = LMTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=50),
        train_dataset=TokenBlocks(random_stream(), 8),
        data_collator=LMCollator(),
        callbacks=[callback],
    )
    trainer.train()
    assert trainer.state.global_step == 1
    with pytest.raises(ValueError, match="must be > 0 minutes"):
        TimeBudgetCallback(0)


@pytest.mark.parametrize(
    "schedule, expected", [("linear", 0.75), ("cosine", 0.5 * (1 + math.cos(math.pi * 0.25))), ("constant", 1.0)]
)
def test_time_budget_runs_the_schedule_on_elapsed_time(tmp_path, schedule, expected):
    model = LSTMLMForCausalLM(make_tiny_config())
    args = training_args(tmp_path, lr_scheduler_type=schedule, learning_rate=0.1, warmup_steps=0)
    trainer = LMTrainer(
        model=model,
        args=args,
        train_dataset=TokenBlocks(random_stream(), 8),
        data_collator=LMCollator(),
        max_train_minutes=10,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.time_budget.start = time.monotonic() - 150  # a quarter of the 10 minutes is gone
    trainer.optimizer.step()  # no gradients: changes nothing, but keeps the optimizer-then-scheduler order
    trainer.lr_scheduler.step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * expected, rel=1e-3)


def test_time_budget_progress_bar_counts_the_budget_not_the_epochs(tmp_path):
    def trainer(**overrides):
        args = training_args(tmp_path, max_steps=-1, num_train_epochs=1000, **overrides)
        data = TokenBlocks(random_stream(), 8)
        return LMTrainer(
            model=LSTMLMForCausalLM(make_tiny_config()),
            args=args,
            train_dataset=data,
            data_collator=LMCollator(),
            max_train_minutes=0.05,
        )

    shown = trainer(disable_tqdm=False)
    bars = [cb for cb in shown.callback_handler.callbacks if isinstance(cb, ProgressCallback)]
    assert [type(cb) for cb in bars] == [TimeBudgetProgressCallback]
    seen = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append((bars[0].training_bar.total, bars[0].training_bar.n, state.global_step))

    shown.add_callback(Watch())
    shown.train()
    assert seen and all(total == 3 for total, _, _ in seen)  # seconds of the 0.05-minute budget, not 1000 epochs
    assert [n for _, n, _ in seen] == sorted(n for _, n, _ in seen) and seen[-1][1] <= 3
    assert seen[-1][2] == shown.state.global_step > 1
    quiet = trainer(disable_tqdm=True)  # no bar at all, as with the stock Trainer
    assert not any(isinstance(cb, ProgressCallback) for cb in quiet.callback_handler.callbacks)


def test_time_budget_refuses_step_only_schedules(tmp_path):
    args = training_args(tmp_path, lr_scheduler_type="polynomial")
    with pytest.raises(ValueError, match="`lr_scheduler_type` must be one of"):
        LMTrainer(model=LSTMLMForCausalLM(make_tiny_config()), args=args, max_train_minutes=1)


# -- stateful truncated BPTT -----------------------------------------------------------------------------------------


def stateful_trainer(tmp_path, model, stream, batch_size=3, block_size=5, **overrides):
    args = training_args(tmp_path, per_device_train_batch_size=batch_size, **overrides)
    streams = BPTTStreams(stream, batch_size, block_size)
    return LMTrainer(
        model=model, args=args, train_dataset=streams, data_collator=LMCollator(), stateful_bptt=True
    ), streams


def test_train_dataloader_continues_streams_batch_after_batch(tmp_path):
    model = LSTMLMForCausalLM(make_tiny_config())
    trainer, streams = stateful_trainer(tmp_path, model, random_stream(500), gradient_accumulation_steps=2)
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == streams.num_windows
    for k in range(len(batches) - 1):
        assert batches[k]["bptt_window"] == k
        # Row i of batch k+1 continues row i of batch k, token for token.
        assert batches[k + 1]["input_ids"][:, 0].tolist() == batches[k]["shift_labels"][:, -1].tolist()
    for i in range(3):
        row = torch.cat([batch["input_ids"][i] for batch in batches])
        start = i * streams.stream_length
        assert row.tolist() == streams.input_ids[start : start + row.numel()].tolist()


@pytest.mark.parametrize("batch_size", [1, 3], ids=["batch1", "batch3"])
def test_carried_state_is_used_and_detached(tmp_path, batch_size):
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config(initializer_range=1.0)).train()  # dropouts are off
    trainer, streams = stateful_trainer(tmp_path, model, random_stream(500), batch_size=batch_size)
    collate = LMCollator()
    batch1 = collate([streams[i] for i in range(batch_size)])
    batch2 = collate([streams[batch_size + i] for i in range(batch_size)])
    assert batch2["bptt_window"] == 1

    loss1 = trainer.compute_loss(model, dict(batch1))
    loss2 = trainer.compute_loss(model, dict(batch2))

    # Used: batch 2 with the carried state scores its tokens exactly as one pass over batches 1+2 does.
    both = torch.cat([batch1["input_ids"], batch2["input_ids"]], dim=1)
    logits = model(input_ids=both).logits[:, 5:]
    expected = F.cross_entropy(logits.reshape(-1, 64), batch2["shift_labels"].reshape(-1))
    torch.testing.assert_close(loss2, expected, rtol=1e-6, atol=1e-6)

    # Detached: the carried state has no graph, and batch 2's backward does not reach batch 1's graph
    # (batch 1's graph is still intact afterwards: backward through it a second time would fail).
    state = trainer.carried_state.slots["train"]
    assert all(not h.requires_grad and not c.requires_grad for h, c in state)
    loss2.backward()
    grads2 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss1.backward()

    # And batch 2's gradient is the one from a fresh forward that starts from the same (constant) state.
    carried = LSTMLMCache(config=model.config)
    cache1 = LSTMLMCache(config=model.config)
    with torch.no_grad():
        model(input_ids=batch1["input_ids"], cache=cache1, use_cache=True)
    for i in range(model.config.num_hidden_layers):
        carried.set_state(i, *cache1.get_state(i))
    model.zero_grad()
    out = model(input_ids=batch2["input_ids"], cache=carried, use_cache=True)
    F.cross_entropy(out.logits.reshape(-1, 64), batch2["shift_labels"].reshape(-1)).backward()
    for got, want in zip(grads2, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_state_resets_at_window_zero(tmp_path):
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config(initializer_range=1.0)).eval()
    trainer, streams = stateful_trainer(tmp_path, model, random_stream(500))
    collate = LMCollator()
    first = collate([streams[i] for i in range(3)])
    with torch.no_grad():
        fresh = trainer.compute_loss(model, dict(first))
        trainer.compute_loss(model, collate([streams[3 + i] for i in range(3)]))
        again = trainer.compute_loss(model, dict(first))  # window 0 again (a new epoch / evaluation): zero state
        plain = model(input_ids=first["input_ids"], labels=first["labels"], shift_labels=first["shift_labels"]).loss
    torch.testing.assert_close(fresh, again)
    torch.testing.assert_close(fresh, plain)


def test_stateful_evaluation_scores_each_stream_as_one_pass(tmp_path):
    """trainer.evaluate() on BPTTStreams carries the state across windows: the same loss as one forward pass over
    each whole stream (from a zero state), averaged over every token."""
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config(initializer_range=1.0))
    args = training_args(tmp_path, per_device_eval_batch_size=2)
    valid = BPTTStreams(random_stream(300, seed=1), num_streams=2, block_size=7)
    trainer = LMTrainer(model=model, args=args, eval_dataset=valid, data_collator=LMCollator(), stateful_bptt=True)
    eval_loss = trainer.evaluate()["eval_loss"]
    model.eval()
    streams = torch.stack([valid.stream(s) for s in range(2)])  # (2, windows * 7 + 1)
    with torch.no_grad():
        logits = model(input_ids=streams[:, :-1]).logits  # (2, windows * 7, vocab): each stream in one pass
    expected = F.cross_entropy(logits.reshape(-1, 64), streams[:, 1:].reshape(-1)).item()
    assert eval_loss == pytest.approx(expected, rel=1e-5)
    # Without the carried state (every window from zero) the loss differs: the test can tell.
    windows = streams[:, :-1].reshape(2, -1, 7).transpose(0, 1).reshape(-1, 7)
    targets = streams[:, 1:].reshape(2, -1, 7).transpose(0, 1).reshape(-1, 7)
    with torch.no_grad():
        cold = F.cross_entropy(model(input_ids=windows).logits.reshape(-1, 64), targets.reshape(-1)).item()
    assert abs(cold - expected) > 1e-3


def test_stateful_trainer_rejects_mismatched_streams(tmp_path):
    model = LSTMLMForCausalLM(make_tiny_config())
    args = training_args(tmp_path, per_device_train_batch_size=4)
    trainer = LMTrainer(
        model=model,
        args=args,
        train_dataset=BPTTStreams(random_stream(), 3, 5),
        data_collator=LMCollator(),
        stateful_bptt=True,
    )
    with pytest.raises(ValueError, match="has 3 streams x 1 shards, but batches have 4 rows"):
        trainer.get_train_dataloader()
    trainer = LMTrainer(
        model=model,
        args=args,
        train_dataset=TokenBlocks(random_stream(), 5),
        data_collator=LMCollator(),
        stateful_bptt=True,
    )
    with pytest.raises(ValueError, match="train dataset to be a BPTTStreams, got TokenBlocks"):
        trainer.get_train_dataloader()


def test_gradient_accumulation_matches_one_big_step(tmp_path):
    """Stateful, 2 micro-batches of accumulation == 1 step over both windows with the state carried in between."""
    torch.manual_seed(0)
    config = make_tiny_config(initializer_range=1.0)
    model_a, model_b = LSTMLMForCausalLM(config), LSTMLMForCausalLM(config)
    model_b.load_state_dict(model_a.state_dict())
    stream = random_stream(400)
    common = dict(max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, lr_scheduler_type="constant")
    trainer, streams = stateful_trainer(tmp_path / "a", model_a, stream, gradient_accumulation_steps=2, **common)
    trainer.train()

    # By hand: loss summed over both windows' tokens / all tokens, state carried from window 0 to window 1.
    collate = LMCollator()
    batches = [collate([streams[3 * k + i] for i in range(3)]) for k in range(2)]
    optimizer = torch.optim.SGD(model_b.parameters(), lr=0.5)
    cache = LSTMLMCache(config=config)
    losses = []
    for batch in batches:
        logits = model_b(input_ids=batch["input_ids"], cache=cache, use_cache=True).logits
        losses.append(F.cross_entropy(logits.reshape(-1, 64), batch["shift_labels"].reshape(-1), reduction="sum"))
        state = [tuple(t.detach().clone() for t in cache.get_state(i)) for i in range(config.num_hidden_layers)]
        cache = LSTMLMCache(config=config)
        for i, (h, c) in enumerate(state):
            cache.set_state(i, h, c)
    (sum(losses) / (2 * 3 * 5)).backward()
    optimizer.step()
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# -- resume ----------------------------------------------------------------------------------------------------------


class StopAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def _weights(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("stateful", [True, False], ids=["stateful-bptt", "shuffled-blocks"])
def test_resume_from_checkpoint_ends_with_the_same_weights(tmp_path, stateful):
    """Dropout on (new masks every step: RNG restore matters) and, when stateful, the carried state restored."""
    config = make_tiny_config(
        embedding_dropout=0.2, hidden_dropout=0.2, output_dropout=0.2, weight_dropout=0.3, variational_dropout=True
    )
    stream = random_stream(1200)

    def make(output_dir, callbacks=()):
        torch.manual_seed(0)
        model = LSTMLMForCausalLM(config)
        args = training_args(
            output_dir,
            max_steps=8,
            save_strategy="steps",
            save_steps=3,
            gradient_accumulation_steps=2,
            optim="adamw_torch",
            learning_rate=3e-3,
        )
        dataset = BPTTStreams(stream, 4, 6) if stateful else TokenBlocks(stream, 6)
        return LMTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=LMCollator(),
            stateful_bptt=stateful,
            callbacks=list(callbacks),
        )

    full = make(tmp_path / "full")
    full.train()
    expected = _weights(full.model)

    interrupted = make(tmp_path / "resumed", callbacks=[StopAtStep(3)])  # "killed" right after checkpoint-3
    interrupted.train()
    assert interrupted.state.global_step == 3
    checkpoint = tmp_path / "resumed" / "checkpoint-3"
    assert (checkpoint / BPTT_STATE_FILE.format(rank=0)).is_file() == stateful
    assert json.loads((checkpoint / "config.json").read_text())["use_cache"] is True

    resumed = make(tmp_path / "resumed")  # a fresh process would start the same way
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name, tensor in _weights(resumed.model).items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
    assert resumed.state.global_step == 8


def test_resume_without_saved_state_warns(tmp_path, caplog):
    model = LSTMLMForCausalLM(make_tiny_config())
    trainer, _ = stateful_trainer(tmp_path, model, random_stream(500), max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    os.remove(tmp_path / "checkpoint-1" / BPTT_STATE_FILE.format(rank=0))
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    finally:
        hf_logging.disable_propagation()
    assert "restarts from zero" in caplog.text


# -- regularisers ----------------------------------------------------------------------------------------------------


def test_weight_drop_new_mask_each_training_forward_off_in_eval_inside_the_layer():
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config(weight_dropout=0.5, initializer_range=1.0))
    layer = model.model.layers[0]
    assert all(isinstance(m, LSTMLMLayer) for m in model.model.layers)
    seen = []
    original_weights = LSTMLMLayer._weights

    def spy(self):  # the layer's kernels run with what `_weights` gives; record its hidden weights
        weights = original_weights(self)
        if self is layer:
            seen.append(weights[1].detach().clone())
        return weights

    ids = torch.randint(0, 64, (2, 6))
    original = layer.weight_hh_l0.detach().clone()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LSTMLMLayer, "_weights", spy)
        model.train()
        model(input_ids=ids)
        model(input_ids=ids)
        model.eval()
        model(input_ids=ids)
    first, second, evaluated = seen
    zero1, zero2 = first == 0, second == 0
    assert 0.3 < zero1.float().mean() < 0.7 and 0.3 < zero2.float().mean() < 0.7
    assert not torch.equal(zero1, zero2)  # a new mask each forward
    torch.testing.assert_close(first[~zero1], original[~zero1] * 2)  # kept weights rescaled by 1 / (1 - p)
    assert torch.equal(evaluated, original)  # off in eval
    assert torch.equal(layer.weight_hh_l0, original)  # the parameter itself is never modified


def test_weight_drop_gradient_reaches_the_raw_weights():
    torch.manual_seed(0)
    model = LSTMLMForCausalLM(make_tiny_config(weight_dropout=0.5)).train()
    ids = torch.randint(0, 64, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.model.layers[0].weight_hh_l0.grad.abs().sum() > 0


def test_locked_dropout_uses_one_mask_per_sequence():
    torch.manual_seed(0)
    config = make_tiny_config(output_dropout=0.5, variational_dropout=True, initializer_range=1.0)
    model = LSTMLMForCausalLM(config).train()
    ids = torch.randint(0, 64, (3, 10))
    hidden = model.model(input_ids=ids).last_hidden_state  # (3, 10, 16), after the output dropout
    zeros = hidden == 0
    # The same units are zeroed at every time step of a sequence...
    assert torch.equal(zeros, zeros[:, :1].expand_as(zeros))
    assert 0 < zeros[:, 0].float().mean() < 1
    # ...and sequences get different masks.
    assert not torch.equal(zeros[0, 0], zeros[1, 0]) or not torch.equal(zeros[1, 0], zeros[2, 0])
    # Standard dropout, for contrast, draws a new mask per position.
    model.config.variational_dropout = False
    zeros = model.model(input_ids=ids).last_hidden_state == 0
    assert not torch.equal(zeros, zeros[:, :1].expand_as(zeros))


def test_embedding_dropout_drops_whole_vocabulary_rows():
    torch.manual_seed(0)
    config = make_tiny_config(embedding_row_dropout=0.5)
    model = LSTMLMForCausalLM(config).train()
    captured = []
    handle = model.model.layers[0].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    ids = torch.tensor([[5, 7, 5, 9, 7, 5, 11, 9, 5, 7] * 2])
    model(input_ids=ids)
    model.eval()
    model(input_ids=ids)
    handle.remove()
    trained, evaluated = captured[0][0], captured[1][0]  # (20, 16) embeddings fed to the first LSTM
    dropped = (trained == 0).all(dim=-1)
    for token in ids[0].unique():
        positions = ids[0] == token
        assert dropped[positions].all() or not dropped[positions].any()  # all occurrences together
    assert dropped.any() and not dropped.all()
    torch.testing.assert_close(trained[~dropped], evaluated[~dropped] * 2)  # kept rows rescaled by 1 / (1 - p)


def test_ar_and_tar_are_added_to_the_training_loss_only():
    torch.manual_seed(0)
    alpha, beta = 2.0, 3.0
    config = make_tiny_config(activation_regularization=alpha, temporal_activation_regularization=beta)
    model = LSTMLMForCausalLM(config)
    ids = torch.randint(0, 64, (2, 7))

    model.train()
    out = model(input_ids=ids, labels=ids, output_hidden_states=True)
    top = out.hidden_states[-1]  # (2, 7, 16): dropouts are off, so this is the top of the stack
    cross_entropy = F.cross_entropy(out.logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    penalty = alpha * top.pow(2).mean() + beta * (top[:, 1:] - top[:, :-1]).pow(2).mean()
    torch.testing.assert_close(out.loss, cross_entropy + penalty)
    assert penalty > 1e-3

    model.eval()
    out = model(input_ids=ids, labels=ids)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1)))


def test_ar_and_tar_count_once_per_step_under_gradient_accumulation():
    # The Trainer passes `num_items_in_batch` (the items of all micro-batches of one optimizer step) and sums the
    # micro-batch losses; the sum must equal the loss of the whole batch in one forward.
    torch.manual_seed(0)
    config = make_tiny_config(activation_regularization=2.0, temporal_activation_regularization=3.0)
    model = LSTMLMForCausalLM(config).train()
    ids = torch.randint(0, 64, (4, 7))
    whole = model(input_ids=ids, labels=ids).loss
    num_items = torch.tensor(4 * 6)
    parts = [model(input_ids=ids[i : i + 2], labels=ids[i : i + 2], num_items_in_batch=num_items).loss for i in (0, 2)]
    torch.testing.assert_close(parts[0] + parts[1], whole, rtol=1e-6, atol=1e-6)
    assert model(input_ids=ids[:2], labels=ids[:2]).loss > parts[0] * 1.5  # without it each part is a full mean


# -- several processes -----------------------------------------------------------------------------------------------


@needs_corpus
@pytest.mark.parametrize(
    "extra",
    [[], pytest.param(["--streaming", "--no_cache_tokens"], marks=pytest.mark.slow)],
    ids=["token-file", "streamed-no-cache"],
)
def test_torchrun_two_processes_train_and_save_one_model(tmp_path, extra):
    """DDP on 2 processes (gloo): from the token file, and (slow) straight from the text stream without one (rank 0
    reads the stream; accelerate deals each batch's rows to the ranks, as it deals the token file's batches)."""
    output = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO_ROOT / "scripts" / "train.py"),
        "--smoke",
        "--output_dir",
        str(output),
        "--cache_dir",
        str(tmp_path / "cache"),
        *extra,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(output)
    assert model.config.use_cache is True
    results = json.loads((output / "eval_results.json").read_text())
    assert results["train_steps"] == 8
    # 8 steps x 2 processes x 4 rows x 16 tokens: each process trained on its own streams.
    assert results["train_tokens"] == 8 * 2 * 4 * 16
    run_args = json.loads((output / "run_args.json").read_text())
    assert run_args["world_size"] == 2
