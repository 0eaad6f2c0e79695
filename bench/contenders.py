"""The contenders of bench/vs_hf.py, each run alone in a fresh process.

Why a fresh process: peak RSS is a process-wide high-water mark, and one contender's
imports, caches and allocator state must not help or hurt the next. Each contender
prints one JSON line (its figures) as the last line of stdout; the orchestrator reads it.

    python bench/contenders.py CONTENDER '{"max_steps": 24, ...}'

Contenders (same model, data split, LoRA settings, batch size, seed, schedule):
  leantrain    - ``leantrain.train`` on examples/demo.yaml (optionally with --set overrides)
  hf-best      - transformers.Trainer + PEFT as its docs recommend for speed: dynamic
                 padding (DataCollatorWithPadding), group_by_length, bf16
  hf-tutorial  - Trainer + PEFT as a typical tutorial: padding="max_length", fp32
  hand         - a minimal hand-written PyTorch loop doing the same steps as leantrain
  leantrain-sdpa - leantrain keeping PyTorch's fused attention kernel in bf16 on CPU
  leantrain-native-dropout - leantrain with torch's own CPU dropout (cuts.fast_dropout off)
"""
from __future__ import annotations

import csv
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RECIPE = REPO / "examples" / "demo.yaml"


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def demo_recipe(overrides: list[str] | None = None):
    from leantrain.engine.run import as_recipe

    return as_recipe(str(RECIPE), overrides or [])


def demo_split(recipe):
    """The demo's train/eval rows and label names, split exactly as leantrain splits them."""
    from leantrain.data.text import _label_names, _split

    with open(recipe.resolve_path(recipe.data.train), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    train_rows, eval_rows = _split(rows, recipe.data.eval_fraction, recipe.train.seed)
    labels = _label_names([str(r[recipe.data.label_column]) for r in train_rows])
    return train_rows, eval_rows, labels


def hf_model(recipe, labels: list[str], lora: bool = True):
    """The demo model as a user of transformers + PEFT builds it."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    from leantrain.models.loading import resolve_model_path

    logging.set_verbosity_error()
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(recipe.model.name_or_path), num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )
    if not lora:
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    cfg = recipe.cuts.lora  # the recipe's LoRA settings, all of them
    return get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, task_type=TaskType.SEQ_CLS,
                                            target_modules=cfg.target_modules, modules_to_save=cfg.modules_to_save,
                                            layers_to_transform=cfg.layers))


def run_leantrain(opts: dict) -> dict:
    """leantrain through its Python API; figures from its summary.json."""
    from leantrain.engine.run import train

    out = Path(tempfile.mkdtemp(prefix="bench-lt-"))
    # No checkpoints and one evaluation at the end, as in the Trainer runs (eval_every
    # larger than the run: the loop evaluates at its last step only), unless asked.
    sets = [f"output.dir={out}", "output.save_model=false", "train.checkpoint_every=null",
            f"train.eval_every={opts.get('eval_every', 100000)}"]
    sets += [f"train.{key}={opts[key]}" for key in ("max_steps", "epochs") if opts.get(key)]
    summary = train(str(RECIPE), overrides=sets + list(opts.get("sets", [])), show_progress=False).summary
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("event") == "eval"]
    return {
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "samples_per_second": summary["samples_per_second"],
        "accuracy": summary["eval"].get("accuracy"),
        "accountant_peak_bytes": summary["peak_memory_bytes"],
        "accountant_method": summary["peak_memory_method"],
        "evals": [{"step": e["step"], "wall_seconds": e["wall_seconds"], "train_seconds": e["train_seconds"], "accuracy": e["accuracy"]}
                  for e in evals],
        "padded_token_fraction": summary.get("padded_token_fraction"),
    }


def run_leantrain_sdpa(opts: dict) -> dict:
    """leantrain with the fused SDPA attention kept in bf16 on CPU: the before of that change."""
    import leantrain.cuts.precision as precision

    precision.use_matmul_attention = lambda model: False
    return run_leantrain(opts)


def run_hf(opts: dict, tutorial: bool) -> dict:
    """transformers.Trainer + PEFT, configured as its docs recommend (or as a tutorial does)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from leantrain.models.loading import resolve_model_path

    recipe = demo_recipe(list(opts.get("sets", [])))
    cfg, data_cfg = recipe.train, recipe.data
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train_rows, eval_rows, labels = demo_split(recipe)
    index = {n: i for i, n in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(recipe.model.name_or_path))
    padding = "max_length" if tutorial else False

    def dataset(rows):
        ds = Dataset.from_dict({"text": [r[data_cfg.text_column] for r in rows],
                                "label": [index[str(r[data_cfg.label_column])] for r in rows]})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=data_cfg.max_length, padding=padding),
                      batched=True, remove_columns=["text"])

    train_ds, eval_ds = dataset(train_rows), dataset(eval_rows)
    model = hf_model(recipe, labels)
    steps = opts.get("max_steps") or -1
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-hf-"), per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, num_train_epochs=opts.get("epochs") or cfg.epochs, max_steps=steps,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.schedule, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, data_seed=cfg.seed, use_cpu=True,
        bf16=not tutorial, train_sampling_strategy="random" if tutorial else "group_by_length",
        # CPU: no pinned memory to gain; workers would compete with the 2 compute cores.
        dataloader_num_workers=0, dataloader_pin_memory=False,
        eval_strategy="no", save_strategy="no", logging_steps=cfg.log_every, report_to="none", disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})
    out = trainer.train()
    metrics = trainer.evaluate()
    return {
        "steps": out.global_step,
        "train_seconds": out.metrics["train_runtime"],
        "samples_per_second": out.global_step * cfg.batch_size / out.metrics["train_runtime"]
        if steps > 0 else out.metrics["train_samples_per_second"],
        "accuracy": metrics["eval_accuracy"],
    }


def run_hand(opts: dict) -> dict:
    """A minimal hand-written loop: same model, LoRA, bf16 autocast, attention kernel,
    batches, optimizer groups, schedule and clipping as leantrain; nothing else (no
    hooks, logging, guards)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, DataCollatorWithPadding, get_scheduler

    from leantrain.data.batching import epoch_order
    from leantrain.engine.session import seed_everything
    from leantrain.models.loading import resolve_model_path

    recipe = demo_recipe(list(opts.get("sets", [])))
    cfg, data_cfg = recipe.train, recipe.data
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    train_rows, _, labels = demo_split(recipe)
    index = {n: i for i, n in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(recipe.model.name_or_path))
    enc = tokenizer([r[data_cfg.text_column] for r in train_rows], truncation=True, max_length=data_cfg.max_length)
    examples = [{**dict(zip(enc.keys(), v)), "labels": index[str(r[data_cfg.label_column])]}
                for v, r in zip(zip(*enc.values()), train_rows)]
    lengths = [len(e["input_ids"]) for e in examples]
    collate = DataCollatorWithPadding(tokenizer)
    model = hf_model(recipe, labels)
    if recipe.cuts.precision.enabled and recipe.cuts.precision.dtype == "bf16":
        model.set_attn_implementation("eager")  # same attention kernel as leantrain's bf16 on CPU
    if recipe.cuts.precision.enabled and recipe.cuts.precision.frozen_dtype == "bf16":
        for p in model.parameters():  # what the recipe's frozen_dtype does, by hand
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    if recipe.cuts.fast_dropout.enabled:  # the same dropout kernel as the recipe's cut, by its public helpers
        from leantrain.cuts.fast_dropout import swap_dropout_modules, use_fast_attention_dropout

        swap_dropout_modules(model)
        use_fast_attention_dropout(model)
    if recipe.cuts.frozen_prefix.enabled:  # the same prefix cache as the recipe's cut, by its public helper
        from leantrain.cuts.frozen_prefix import install

        prefix = recipe.cuts.frozen_prefix
        install(model, prefix.blocks, prefix.max_cache_mb * 2**20, prefix.store_dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=cfg.lr)
    per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = min(math.ceil(cfg.epochs * per_epoch), opts.get("max_steps") or 10**9)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total), num_training_steps=total)
    step, samples, started = 0, 0, time.perf_counter()
    for epoch in range(math.ceil(cfg.epochs)):
        for batch_indices in epoch_order(len(examples), cfg.batch_size, cfg.seed, epoch, lengths, cfg.bucket_by_length):
            batch = collate([examples[i] for i in batch_indices])
            labels_t = batch.pop("labels")
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(**batch).logits.float(), labels_t)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, samples = step + 1, samples + len(batch_indices)
            if step >= total:
                break
        if step >= total:
            break
    seconds = time.perf_counter() - started
    return {"steps": step, "train_seconds": seconds, "samples_per_second": samples / seconds}


CONTENDERS = {
    "leantrain": run_leantrain,
    "hf-best": lambda opts: run_hf(opts, tutorial=False),
    "hf-tutorial": lambda opts: run_hf(opts, tutorial=True),
    "hand": run_hand,
    "leantrain-sdpa": run_leantrain_sdpa,
    # The before of cuts.fast_dropout: torch's per-element CPU dropout masks.
    "leantrain-native-dropout": lambda opts: run_leantrain({**opts, "sets": [*opts.get("sets", []), "cuts.fast_dropout=false"]}),
}


if __name__ == "__main__":
    name, options = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    figures = CONTENDERS[name](options)
    figures["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(figures))
