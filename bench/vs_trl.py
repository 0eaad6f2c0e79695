"""leantrain against TRL's SFTTrainer (+ PEFT) on the LLM demo: same model, data, LoRA,
schedule, batch and epochs; fresh processes, alternating rounds, medians, ratios, spread.

TRL is configured as its SFT docs recommend: conversational prompt/completion data with
completion-only loss, packing (best-fit decreasing) padding-free, LoRA through
``peft_config``, bf16, and gradient checkpointing (SFTConfig's default in trl 1.16: left on
one side only, it would make that side slower and leaner). leantrain runs
examples/demo-llm.yaml with packing and checkpointing matched.
Both train one epoch (the same conversations, so the same tokens); the held-out figures
come from one shared function run on each trained model in its own process (not timed).

bf16: on a CPU without native bf16 units a bf16 matmul is emulated (measured 5-100x
slower here, see `leantrain.cuts.precision.cpu_bf16_slowdown`); ``--bf16 auto`` (the
default) turns bf16 on for both contenders only where that probe says it is faster.

    python bench/vs_trl.py --rounds 3            # writes bench/results/vs_trl.json
    python bench/vs_trl.py --contender trl '{"pack": true, "bf16": false, "checkpointing": true}'   # one run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RECIPE = REPO / "examples" / "demo-llm.yaml"
DATA = REPO / "data" / "demo-llm"
CONTENDERS = ("leantrain", "trl")


def recipe(opts: dict, out: Path):
    from leantrain.engine.run import as_recipe

    sets = [f"output.dir={out}", "output.save_model=false", "train.checkpoint_every=null", "train.eval_every=100000",
            "train.eval_at_start=false", "data.chat.eval_generate=0", "train.epochs=1", f"data.pack={opts['pack']}",
            f"cuts.precision={'bf16' if opts['bf16'] else 'false'}",
            f"cuts.gradient_checkpointing={'true' if opts['checkpointing'] else 'false'}"]
    return as_recipe(str(RECIPE), sets)


def held_out(model, tokenizer, max_new_tokens: int = 6) -> dict:
    """Completion-only eval loss and greedy exact match on the held-out chats: the same
    function, on the same rows, for both contenders."""
    import torch

    from leantrain.engine.chat_eval import greedy_reply, normalise

    rows = [json.loads(line) for line in (DATA / "eval.jsonl").read_text().splitlines()]
    model.eval()
    nll, tokens, hits = 0.0, 0, 0
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, return_dict=False)
            full = tokenizer.apply_chat_template(row["messages"], return_dict=False)
            ids = torch.tensor([full])
            labels = ids.clone()
            labels[:, : len(prompt)] = -100
            out = model(input_ids=ids, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            nll, tokens = nll + out.loss.item() * n, tokens + n
            reply = greedy_reply(model, tokenizer, prompt, max_new_tokens)
            hits += normalise(reply) == normalise(row["messages"][-1]["content"])
    loss = nll / tokens
    return {"eval_loss": round(loss, 4), "eval_perplexity": round(math.exp(loss), 4), "exact_match": round(hits / len(rows), 4)}


def run_leantrain(opts: dict) -> dict:
    from transformers import AutoTokenizer

    from leantrain.engine.run import train
    from leantrain.models.loading import resolve_model_path

    rec = recipe(opts, Path(tempfile.mkdtemp(prefix="bench-lt-")))
    result = train(rec, show_progress=False)
    summary = result.summary
    tokens = summary["data"]["tokens_train"]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(rec.model.name_or_path))
    return {"steps": summary["steps"], "train_seconds": summary["train_seconds"], "train_tokens": tokens,
            "padded_token_fraction": summary["data"].get("padded_token_fraction"),
            "peak_rss_bytes": summary.get("peak_rss_bytes"), **held_out(result.model, tokenizer)}


def run_trl(opts: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from leantrain.models.loading import resolve_model_path

    rec = recipe(opts, Path(tempfile.mkdtemp(prefix="bench-trl-out-")))
    cfg, lora = rec.train, rec.cuts.lora
    torch.manual_seed(cfg.seed)
    path = resolve_model_path(rec.model.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()]
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=cfg.batch_size, num_train_epochs=1,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.schedule, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, gradient_checkpointing=opts["checkpointing"], seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=True, bf16=opts["bf16"],
        max_length=rec.data.max_length, packing=opts["pack"], padding_free=opts["pack"], completion_only_loss=True,
        dataloader_num_workers=0, dataloader_pin_memory=False, include_num_input_tokens_seen="non_padding",
        eval_strategy="no", save_strategy="no", logging_steps=cfg.log_every, report_to="none", disable_tqdm=True)
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config)
    out = trainer.train()
    return {"steps": out.global_step, "train_seconds": out.metrics["train_runtime"],
            "train_tokens": int(trainer.state.num_input_tokens_seen),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            **held_out(trainer.model, tokenizer)}


def contender(name: str, opts: dict) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--contender", name, json.dumps(opts)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["wall_seconds"] = round(time.perf_counter() - started, 2)
    figures["tokens_per_second"] = round(figures["train_tokens"] / figures["train_seconds"], 1)
    print(f"  {name}: {json.dumps(figures)}", flush=True)
    return figures


def summarize(rounds: list[dict]) -> dict:
    """Medians per contender, and per-round ratios leantrain/TRL (speed: TRL time over leantrain's)."""
    out: dict = {}
    for name in CONTENDERS:
        runs = [r[name] for r in rounds]
        out[name] = {k: statistics.median(run[k] for run in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}
    ratios = {
        "train_time_trl_over_leantrain": [r["trl"]["train_seconds"] / r["leantrain"]["train_seconds"] for r in rounds],
        "wall_time_trl_over_leantrain": [r["trl"]["wall_seconds"] / r["leantrain"]["wall_seconds"] for r in rounds],
        "tokens_per_second_leantrain_over_trl": [r["leantrain"]["tokens_per_second"] / r["trl"]["tokens_per_second"] for r in rounds],
        "peak_rss_leantrain_over_trl": [r["leantrain"]["peak_rss_bytes"] / r["trl"]["peak_rss_bytes"] for r in rounds],
    }
    out["ratios"] = {k: {"median": round(statistics.median(v), 3), "rounds": [round(x, 3) for x in v]} for k, v in ratios.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", nargs=2, metavar=("NAME", "OPTS"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pack", choices=["true", "false"], default="true")
    parser.add_argument("--bf16", choices=["auto", "true", "false"], default="auto")
    # TRL's SFTConfig turns gradient checkpointing on by default (trl 1.16); both sides match.
    parser.add_argument("--checkpointing", choices=["true", "false"], default="true")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "vs_trl.json")
    args = parser.parse_args()
    if args.contender:
        name, opts = args.contender[0], json.loads(args.contender[1])
        print(json.dumps({"leantrain": run_leantrain, "trl": run_trl}[name](opts)))
        return
    if not (DATA / "train.jsonl").exists():
        subprocess.run([sys.executable, str(REPO / "examples" / "docstring_chat.py"), "--output", str(DATA)], check=True)
    from bench.vs_hf import machine
    from leantrain.cuts.precision import cpu_bf16_slowdown

    slowdown = cpu_bf16_slowdown()
    bf16 = slowdown < 1.0 if args.bf16 == "auto" else args.bf16 == "true"
    opts = {"pack": args.pack == "true", "bf16": bf16, "checkpointing": args.checkpointing == "true"}
    print(f"bf16 matmul / fp32 on this CPU: {slowdown:.2f}x -> bf16 {'on' if bf16 else 'off'}; packing {opts['pack']}; "
          f"checkpointing {opts['checkpointing']}", flush=True)
    rounds = []
    for r in range(args.rounds):
        order = CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]
        print(f"round {r + 1}/{args.rounds}: {', '.join(order)}", flush=True)
        rounds.append({n: contender(n, opts) for n in order})
    result = {"machine": machine(), "options": opts, "bf16_slowdown": round(slowdown, 2), "rounds": rounds,
              "summary": summarize(rounds)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
