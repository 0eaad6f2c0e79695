"""Write each method card's "Measured on the demo" section from `leantrain ablate` results.

    .venv/bin/python bench/cut_cards.py runs/ablate-demo runs/ablate-demo-steps

Every cut isolated by one of the given ablations gets its figures (alone against the
baseline, and added on top of the previous rung) and a verdict, including when it did
not pay off; the others say why the demo ablations do not measure them.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from leantrain.ablate.findings import findings_markdown
from leantrain.cuts import REGISTRY

CARDS = Path(__file__).resolve().parent.parent / "docs" / "cuts"
HEADING = "## Measured on the demo"
MEASURED_LINE = "(measured by `leantrain ablate` on the demo: see docs/ablate.md)"
# Why a cut is absent from the demo ablations, when it is.
NOT_MEASURED = {
    "grad_accumulation": "it is not in the demo recipe, so not in the default ladder; measure \"demo + accumulation\" "
                         "with `leantrain ablate examples/demo.yaml --steps 40 --cuts grad_accumulation,curriculum`.",
    "curriculum": "it is not in the demo recipe, so not in the default ladder; measure \"demo + curriculum\" "
                  "with `leantrain ablate examples/demo.yaml --steps 40 --cuts grad_accumulation,curriculum`.",
    "early_stopping": "a 40-step rung evaluates once (an epoch is 48 steps), so early stopping never triggers; "
                      "measure it with `leantrain ablate RECIPE --to-metric accuracy=0.8 --cuts early_stopping`.",
    "warm_start": "the demo has no word-vector source to copy from; it starts from pretrained MiniLM, whose "
                  "embeddings are already trained. See tests/cuts/test_cut_warm_start.py for its effect on a "
                  "model trained from scratch.",
}


def conditions(ablation: dict, path: Path) -> str:
    mode = ablation.get("mode", {})
    steps = f"{mode['steps']} optimizer steps per rung" if mode.get("steps") else "time to target"
    loads = [r["load_average"] for r in ablation.get("rungs", []) if r.get("load_average") is not None]
    load = f", 1-minute load average {min(loads):.1f}-{max(loads):.1f} after the rungs that recorded it" if loads else ""
    total = f"; {ablation['total_seconds']:.0f} s in all" if ablation.get("total_seconds") else ""
    return f"`{path}` ({ablation.get('recipe')}, {steps}, ${ablation.get('price_per_hour')}/h{load}{total})"


def section(cut: str, ablations: list[tuple[Path, dict]], note: str) -> str:
    parts = [HEADING, "", MEASURED_LINE, ""]
    for path, ablation in ablations:
        found = findings_markdown(ablation, cut)
        if found:
            parts += [f"From {conditions(ablation, path)}:", "", found, ""]
    if len(parts) == 4:
        parts += [f"Not isolated by the demo ablations: {NOT_MEASURED.get(cut, 'not in their ladders.')}", ""]
    if note:
        parts += [note, ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ablations", nargs="+", type=Path, help="folders holding ablation.json")
    parser.add_argument("--note", default="", help="a sentence added to every section (e.g. the machine's state)")
    args = parser.parse_args()
    ablations = [(p, json.loads((p / "ablation.json").read_text())) for p in args.ablations]
    for cut in sorted(REGISTRY):
        card = CARDS / f"{cut}.md"
        text = card.read_text(encoding="utf-8")
        head, _, rest = text.partition(HEADING)
        following = re.search(r"^## ", rest, flags=re.M)
        tail = rest[following.start():] if following else ""
        card.write_text(head + section(cut, ablations, args.note) + ("\n" + tail if tail else ""), encoding="utf-8")
        print(f"updated {card}")


if __name__ == "__main__":
    main()
