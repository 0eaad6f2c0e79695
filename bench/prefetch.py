"""Prefetching with worker processes: `train.data_workers` 0 vs 1 vs 2, side by side.

Each configuration trains the demo recipe (LoRA + bf16 MiniLM) for ``--steps`` steps
on the same batches, with the data loader leantrain uses (``batch_loader``), timing how
long each step waits for its batch (as the training loop does) and how long the
forward, backward and optimizer step take. Three per-batch costs are compared:

* tokenize-once cache: the collator only pads already tokenized rows (leantrain's path);
* on-the-fly tokenization: the collator tokenizes the batch's raw texts (a pipeline
  without the cache);
* on-the-fly tokenization plus pure-Python per-batch work (an augmentation, say) that
  holds the GIL and costs half a training step (``--transform-ms`` to fix it): the case
  worker processes exist for, since a worker can prepare the next batch during the step.

Two tables: steps that train the model on this CPU (where a worker competes with the
step for the same cores), and steps that only sleep for ``--accelerator-step-ms``, as
the host does while a GPU computes (where a worker has the CPU to itself). The first
batch of every loader (worker start-up) is reported apart from the steady state. Configurations run one after the other, in ``--rounds`` rounds, so that machine
noise hits them alike; medians over rounds are printed.

    .venv/bin/python bench/prefetch.py --steps 12
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers fork after the tokenizer ran

import torch  # noqa: E402

from leantrain.data.batching import batch_loader  # noqa: E402
from leantrain.engine.loop import move_to_device  # noqa: E402
from leantrain.engine.session import build_session  # noqa: E402
from leantrain.recipe import load_recipe  # noqa: E402


class TokenizeOnTheFly:
    """Collate raw texts: tokenize, pad and label each batch as it is drawn (picklable)."""

    def __init__(self, tokenizer, max_length: int, transform_ms: float = 0.0):
        self.tokenizer, self.max_length, self.transform_ms = tokenizer, max_length, transform_ms

    def __call__(self, rows: list[dict]) -> dict:
        if self.transform_ms:
            deadline = time.perf_counter() + self.transform_ms / 1000
            while time.perf_counter() < deadline:  # Python work: holds the GIL, like an augmentation
                pass
        batch = self.tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch["labels"] = torch.tensor([r["labels"] for r in rows])
        return batch


def train_step(session) -> Callable[[dict], None]:
    run, task, cuts = session.run, session.task, session.cuts

    def step(batch: dict) -> None:
        batch = move_to_device(batch, run.device)
        with cuts.forward_context(run):
            loss = task.loss_sum(run.model, batch) / task.count(batch)
        loss.backward()
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)

    return step


def accelerator_step(seconds: float) -> Callable[[dict], None]:
    """A step that leaves the CPU free, as a GPU's does: the host only waits for it."""
    return lambda batch: time.sleep(seconds)


def measure(step: Callable[[dict], None], examples, batches, collate, workers: int) -> dict:
    loader = iter(batch_loader(examples, batches, collate, workers))
    waits, computes, samples = [], [], 0
    for _ in batches:
        started = time.perf_counter()
        batch = next(loader)
        waited = time.perf_counter() - started
        step(batch)
        waits.append(waited)
        computes.append(time.perf_counter() - started - waited)
        samples += int(batch["labels"].shape[0])
    steady_wait, steady_total = sum(waits[1:]), sum(waits[1:]) + sum(computes[1:])
    return {
        "startup": waits[0],
        "wait_fraction": steady_wait / steady_total,
        "samples_per_s": (samples - len(batches[0])) / steady_total,
        "wait_fraction_with_startup": sum(waits) / (sum(waits) + sum(computes)),
        "step_s": statistics.median(computes[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="examples/demo.yaml")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per configuration (after the first batch)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--transform-ms", type=float, default=None,
                        help="simulated Python work per batch in the costliest case (default: half the measured step)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accelerator-step-ms", type=float, default=100.0,
                        help="step time of the second table, where the step leaves the CPU free (its transform costs half of it)")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, ["output.dir=runs/bench-prefetch"])
    session = build_session(recipe)
    tokenizer, cached = session.tokenizer, session.train_examples
    texts = tokenizer.batch_decode([ex["input_ids"] for ex in cached], skip_special_tokens=True)
    raw = [{"text": t, "labels": ex["labels"]} for t, ex in zip(texts, cached)]
    batches = session.epoch_batches(0)[: args.steps + 1]
    # Warm-up (first-call costs of the model and kernels), which also times a step.
    cpu_step = train_step(session)
    warm = measure(cpu_step, cached, batches[:3], session.collate, 0)
    transform_ms = args.transform_ms if args.transform_ms is not None else round(500 * warm["step_s"])
    print(f"demo recipe, batch {recipe.train.batch_size}, {args.steps} timed steps x {args.rounds} rounds per configuration, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, median step {warm['step_s']:.3f} s in warm-up\n")

    def cases(ms: float) -> dict:
        return {
            "tokenize-once cache (leantrain)": (cached, session.collate),
            "on-the-fly tokenization": (raw, TokenizeOnTheFly(tokenizer, recipe.data.max_length)),
            f"on-the-fly + {ms:g} ms Python transform": (raw, TokenizeOnTheFly(tokenizer, recipe.data.max_length, ms)),
        }

    table("Training on this CPU (the step uses every core)", cpu_step, cases(transform_ms), batches, args)
    seconds = args.accelerator_step_ms / 1000
    table(f"Accelerator-like step: the host sleeps {args.accelerator_step_ms:g} ms per step, CPU free (as with a GPU)",
          accelerator_step(seconds), cases(args.accelerator_step_ms / 2), batches, args)


def table(title: str, step, cases: dict, batches, args) -> None:
    results: dict[tuple, list[dict]] = {}
    for _ in range(args.rounds):
        for case, (examples, collate) in cases.items():
            for workers in args.workers:
                results.setdefault((case, workers), []).append(measure(step, examples, batches, collate, workers))

    def median(case, workers, key):
        return statistics.median(r[key] for r in results[(case, workers)])

    print(f"### {title}\n")
    print("| per-batch cost | data_workers | data-wait fraction | samples/s | vs 0 workers | first batch (s) | wait incl. start-up |")
    print("|---|---|---|---|---|---|---|")
    for case in cases:
        base = median(case, args.workers[0], "samples_per_s")
        for workers in args.workers:
            speed = median(case, workers, "samples_per_s")
            print(f"| {case} | {workers} | {median(case, workers, 'wait_fraction'):.1%} | {speed:.1f} | {speed / base:.2f}x "
                  f"| {median(case, workers, 'startup'):.2f} | {median(case, workers, 'wait_fraction_with_startup'):.1%} |")
    print(flush=True)


if __name__ == "__main__":
    main()
