"""The model card (README.md) of every saved model folder: the cost story travels with the model.

PEFT writes an empty template there; a hub page, a colleague or a later audit needs what
was trained on what, how well it did, and what it cost, all of it read from the run's own
measured summary, never estimated here.
"""
from __future__ import annotations

from pathlib import Path

import yaml

PIPELINE_TAGS = {"sequence-classification": "text-classification", "causal-lm": "text-generation"}


def write_model_cards(summary: dict, recipe, label_names: list[str] | None) -> list[Path]:
    """README.md in each folder of ``summary["saved"]`` that holds a model; returns them."""
    written = []
    for kind, folder in summary.get("saved", {}).items():
        folder = Path(folder)
        if kind == "checkpoint" or not any((folder / f).is_file() for f in ("config.json", "adapter_config.json")):
            continue
        adapter = (folder / "adapter_config.json").is_file()
        path = folder / "README.md"
        path.write_text(render_card(summary, recipe, label_names, adapter), encoding="utf-8")
        written.append(path)
    return written


def _front_matter(summary: dict, recipe, base: str, adapter: bool) -> str:
    meta = {
        "base_model": base,
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": PIPELINE_TAGS.get(recipe.model.task),
        "tags": ["leantrain", *summary.get("cuts", [])],
    }
    return "---\n" + yaml.safe_dump({k: v for k, v in meta.items() if v is not None}, sort_keys=False) + "---\n"


def _metric_rows(evaluation: dict) -> list[str]:
    return [f"| {name} | {value:.4g} |" for name, value in evaluation.items() if isinstance(value, (int, float))]


def _cut_lines(recipe) -> list[str]:
    lines = []
    for name, config in recipe.enabled_cuts().items():
        settings = {k: v for k, v in config.model_dump(mode="json").items() if k != "enabled" and v not in (None, [], {})}
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        lines.append(f"- `{name}`" + (f": {shown}" if shown else ""))
    return lines or ["- none (a plain full fine-tune)"]


def _data_lines(summary: dict, recipe, label_names: list[str] | None) -> list[str]:
    data = summary.get("data", {})
    files = [Path(f).name for f in (recipe.data.train, recipe.data.eval) if isinstance(f, str) and f]
    lines = [f"- source: {', '.join(f'`{f}`' for f in files) or 'passed in code'}",
             f"- rows: {data.get('rows_train', '?')} train, {data.get('rows_eval', '?')} eval "
             f"(max_length {recipe.data.max_length})"]
    if label_names:
        lines.append(f"- {len(label_names)} classes: {', '.join(label_names)}")
    if data.get("tokens_train") is not None:
        lines.append(f"- {data['tokens_train']:,} training tokens")
    return lines


def _usage(task: str, adapter: bool) -> str:
    if task == "sequence-classification":
        code = ('from transformers import pipeline\n\n'
                'classify = pipeline("text-classification", model="PATH_TO_THIS_FOLDER")\n'
                'print(classify("your text"))')
    elif adapter:
        code = ('from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n'
                'model = AutoPeftModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")\n'
                'tokenizer = AutoTokenizer.from_pretrained("PATH_TO_THIS_FOLDER")')
    else:
        code = ('from transformers import pipeline\n\n'
                'generate = pipeline("text-generation", model="PATH_TO_THIS_FOLDER")')
    note = ("\nThe folder holds the base weights, the label names (config.json) and the adapter; "
            "transformers loads the adapter on top through its PEFT integration.\n" if adapter and task == "sequence-classification" else "")
    return f"```python\n{code}\n```\n{note}"


def render_card(summary: dict, recipe, label_names: list[str] | None, adapter: bool) -> str:
    from leantrain.models.loading import portable_model_name

    base = portable_model_name(recipe.model.name_or_path)
    versions = summary.get("versions", {})
    seconds = summary.get("train_seconds", 0.0)
    hardware = summary.get("price_source") or f"{summary.get('device', '?')} at ${summary.get('price_per_hour', 0)}/device-hour"
    peak = summary.get("peak_memory_bytes")
    parts = [
        _front_matter(summary, recipe, base, adapter),
        f"# {recipe.name}: {recipe.model.task} fine-tuned from `{base}`\n",
        f"Trained with leantrain {versions.get('leantrain', '?')}"
        f"{' from a random initialisation' if recipe.model.from_scratch else ''}; "
        f"status `{summary.get('status')}` after {summary.get('steps')} steps ({summary.get('epochs')} epochs).\n",
        "## Evaluation (held-out split)\n",
        "| metric | value |\n|---|---|",
        *(_metric_rows(summary.get("eval", {})) or ["| (no evaluation) | |"]),
        "\n## Cost (measured by the run)\n",
        f"- training time: {seconds:.1f} s on {summary.get('world_size', 1)} × {summary.get('device', '?')}"
        f" (set-up {summary.get('setup_seconds', 0):.1f} s)",
        f"- cost: ${summary.get('cost_usd', 0):.6f} at ${summary.get('price_per_hour', 0)}/device-hour ({hardware})",
        f"- throughput: {summary.get('samples_per_second', 0)} samples/s"
        + (f"; peak memory {peak / 2**30:.2f} GiB ({summary.get('peak_memory_method')})" if peak else ""),
        f"- trainable parameters: {summary.get('trainable_params', 0):,} of {summary.get('total_params', 0):,}",
        "\n## Data\n",
        *_data_lines(summary, recipe, label_names),
        "\n## Recipe\n",
        f"- train: epochs {recipe.train.epochs}, batch size {recipe.train.batch_size}, lr {recipe.train.lr}, "
        f"schedule {recipe.train.schedule}, seed {recipe.train.seed}",
        "- cuts:",
        *("  " + line for line in _cut_lines(recipe)),
        "\nThe whole recipe is the run directory's `config.yaml`.\n",
        "## Use it\n",
        _usage(recipe.model.task, adapter),
        "## Software\n",
        ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n",
    ]
    return "\n".join(parts)
