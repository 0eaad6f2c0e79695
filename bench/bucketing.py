"""Padding on the demo: fixed-length vs per-batch dynamic vs length-bucketed batches.

Prints the padded-token fraction of a whole epoch for each strategy and the measured
training-step time (forward + backward + optimizer step, the demo's LoRA + bf16 model)
on the same examples, alternating strategies so machine noise hits all of them alike.

    .venv/bin/python bench/bucketing.py --steps 12
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from leantrain.data.batching import epoch_order, padded_fraction
from leantrain.engine.loop import move_to_device
from leantrain.engine.session import build_session
from leantrain.recipe import load_recipe


def fixed_length_fraction(batches, lengths, max_length: int) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / (max_length * sum(len(b) for b in batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="examples/demo.yaml")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per strategy")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, ["output.dir=runs/bench-bucketing"])
    session = build_session(recipe)
    run, cfg, lengths = session.run, recipe.train, session.lengths
    max_length = recipe.data.max_length
    n = len(session.train_examples)
    plain = epoch_order(n, cfg.batch_size, cfg.seed, 0)
    bucketed = epoch_order(n, cfg.batch_size, cfg.seed, 0, lengths, bucket=True)

    def collate_fixed(rows):
        return session.tokenizer.pad(rows, padding="max_length", max_length=max_length, return_tensors="pt")

    strategies = {
        f"pad every row to max_length={max_length}": (plain, collate_fixed),
        "dynamic padding per batch (random batches)": (plain, session.collate),
        "length-bucketed batches (leantrain default)": (bucketed, session.collate),
    }
    fractions = {
        list(strategies)[0]: fixed_length_fraction(plain, lengths, max_length),
        list(strategies)[1]: padded_fraction(plain, lengths),
        list(strategies)[2]: padded_fraction(bucketed, lengths),
    }
    times: dict[str, list[float]] = {name: [] for name in strategies}
    model, task, cuts = run.model, session.task, session.cuts
    for step in range(args.steps + 1):  # step 0 warms up every strategy
        for name, (order, collate) in strategies.items():
            batch = move_to_device(collate([session.train_examples[i] for i in order[step % len(order)]]), run.device)
            started = time.perf_counter()
            with cuts.forward_context(run):
                loss = task.loss_sum(model, batch) / task.count(batch)
            loss.backward()
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            if step:
                times[name].append(time.perf_counter() - started)
    base = statistics.median(times[list(strategies)[0]])
    print(f"{n} training examples of the demo, batch {cfg.batch_size}, {args.steps} timed steps each, torch threads {torch.get_num_threads()}\n")
    print("| batching | padded tokens (epoch) | median step (s) | speed-up vs fixed length |")
    print("|---|---|---|---|")
    for name in strategies:
        median = statistics.median(times[name])
        print(f"| {name} | {fractions[name]:.1%} | {median:.3f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
