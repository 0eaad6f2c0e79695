"""Held-out classification sets the project was never tuned on, built from what Debian
and PyPI packages ship (nothing is downloaded but Debian's package index).

    python bench/heldout_data.py [--only debian-sections,docstrings] [--output data/heldout]

- ``debian-sections``: the long descriptions of Debian packages, labelled by their archive
  section (12 sections: admin, database, editors, electronics, games, graphics, mail,
  math, net, science, sound, video). Source: ``apt-cache dumpavail`` (the package
  index; the texts are the maintainers', under each package's licence, used here as
  test data only). Package names are removed from the text so the label is not given
  away by a name such as ``xgame-foo``.
- ``docstrings``: the first paragraph of public functions' and classes' docstrings in 12
  installed Python libraries, labelled by library (numpy, scipy, sympy, sklearn, pandas,
  matplotlib, networkx, torch, transformers, pyarrow, PIL, datasets). Read with ``ast``
  from the installed sources, no import; each library's own licence (BSD/MIT/Apache).

Each set is written as ``train.csv`` and ``val.csv`` (80/20, stratified, seeded) with
columns ``text,label``; at most ``--per-class`` rows per class, shortest texts dropped.
"""
from __future__ import annotations

import argparse
import csv
import random
import re
import subprocess
import sys
from pathlib import Path

SECTIONS = ["admin", "database", "editors", "electronics", "games", "graphics", "mail", "math", "net", "science",
            "sound", "video"]
LIBRARIES = ["numpy", "scipy", "sympy", "sklearn", "pandas", "matplotlib", "networkx", "torch", "transformers",
             "pyarrow", "PIL", "datasets"]


def debian_sections() -> dict[str, list[str]]:
    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    if "Package:" not in out:
        raise SystemExit("apt-cache knows no packages: run `apt-get update` first")
    by_label: dict[str, dict[str, str]] = {s: {} for s in SECTIONS}
    for stanza in out.split("\n\n"):
        fields = dict(re.findall(r"^(Package|Section|Description(?:-en)?): ?(.*)$", stanza, re.MULTILINE))
        section = fields.get("Section", "").split("/")[-1]
        if section not in by_label:
            continue
        # The long description: the continuation lines after "Description:".
        body = stanza.split("\nDescription", 1)[1].split("\n", 1)[1] if "\nDescription" in stanza else ""
        lines = [ln[1:] for ln in body.split("\n") if ln.startswith(" ")]
        text = " ".join(ln.strip() for ln in lines if ln.strip() != ".")
        name = fields.get("Package", "")
        text = re.sub(re.escape(name), "it", text, flags=re.IGNORECASE) if name else text
        summary = fields.get("Description", fields.get("Description-en", ""))
        text = f"{summary}. {text}".strip()
        by_label[section].setdefault(text, name)  # one row per distinct text (no -dev/-doc copies)
    return {label: list(texts) for label, texts in by_label.items()}


def docstrings() -> dict[str, list[str]]:
    # The same reader as the LLM demo's data (examples/docstring_chat.py), other libraries.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from docstring_chat import docstrings as library_docstrings

    return {lib.lower(): sorted(library_docstrings(lib, min_chars=0, max_chars=10**9)) for lib in LIBRARIES}


def write_split(by_label: dict[str, list[str]], folder: Path, per_class: int, min_chars: int, seed: int) -> dict:
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_label):
        texts = sorted(t for t in by_label[label] if len(t) >= min_chars)
        rng.shuffle(texts)
        texts = texts[:per_class]
        cut = int(round(len(texts) * 0.8))
        train += [{"text": t, "label": label} for t in texts[:cut]]
        val += [{"text": t, "label": label} for t in texts[cut:]]
    rng.shuffle(train)
    rng.shuffle(val)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("val", val)):
        with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    return {"train": len(train), "val": len(val), "classes": len(by_label)}


BUILDERS = {"debian-sections": debian_sections, "docstrings": docstrings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(BUILDERS))
    parser.add_argument("--output", default="data/heldout")
    parser.add_argument("--per-class", type=int, default=420, help="rows per class before the split (420 -> 336 train)")
    parser.add_argument("--min-chars", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.only.split(","):
        stats = write_split(BUILDERS[name](), Path(args.output) / name, args.per_class, args.min_chars, args.seed)
        print(f"{name}: {stats['train']} train / {stats['val']} val rows, {stats['classes']} classes -> {args.output}/{name}")


if __name__ == "__main__":
    main()
