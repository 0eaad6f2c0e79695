"""Build the LLM demo's instruction set: "which library is this docstring from?" as chats.

Source: the first paragraph of public functions' and classes' docstrings in six Python
libraries installed with leantrain (numpy, pandas, matplotlib, torch, sympy, networkx),
read with ``ast`` from their installed sources, without importing them; each library's
own licence (BSD-3-Clause for numpy, pandas, torch, sympy and networkx; matplotlib's
PSF-based licence). The library's name is masked in the text. Each row is a
``messages`` conversation: the user asks which of the six libraries the docstring comes
from, the assistant answers with the name alone, so the answer can be scored exactly.

    python examples/docstring_chat.py --output data/demo-llm
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import random
import re
from pathlib import Path

LIBRARIES = ["numpy", "pandas", "matplotlib", "torch", "sympy", "networkx"]
QUESTION = ("Which Python library is this docstring from: numpy, pandas, matplotlib, torch, sympy or networkx? "
            "Answer with the library name only.\n\n{doc}")


def docstrings(library: str, min_chars: int = 60, max_chars: int = 320) -> list[str]:
    spec = importlib.util.find_spec(library)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{library} is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    seen: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        if any(part in ("tests", "test", "testing", "_vendor", "externals") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                text = " ".join(doc.strip().split("\n\n", 1)[0].split())
                text = re.sub(re.escape(library), "lib", text, flags=re.IGNORECASE)
                if min_chars <= len(text) <= max_chars:
                    seen.setdefault(text)
    return list(seen)


def build(output: Path, train_per_library: int, eval_per_library: int, seed: int) -> dict:
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    for library in LIBRARIES:
        texts = docstrings(library)
        rng.shuffle(texts)
        picked = {"eval": texts[:eval_per_library], "train": texts[eval_per_library : eval_per_library + train_per_library]}
        for split, chosen in picked.items():
            splits[split] += [{"messages": [{"role": "user", "content": QUESTION.format(doc=t)},
                                            {"role": "assistant", "content": library}]} for t in chosen]
    output.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        rng.shuffle(rows)
        with (output / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return {split: len(rows) for split, rows in splits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="data/demo-llm")
    parser.add_argument("--train-per-library", type=int, default=40)
    parser.add_argument("--eval-per-library", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = build(Path(args.output), args.train_per_library, args.eval_per_library, args.seed)
    print(f"wrote {counts['train']} training and {counts['eval']} eval conversations to {args.output}")


if __name__ == "__main__":
    main()
