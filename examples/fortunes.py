"""Build the demo dataset: Debian's fortune cookies, labelled by topic file.

Source: Debian packages `fortunes` and `fortunes-min` (BSD-licensed fortune-mod data,
human-written quotations and jokes). Each fortune file is a topic (computers, food, law,
...), which makes a small, real topic-classification set. Nothing is downloaded from a
model or dataset hub: the files come from the system's package manager, and this script
only reads them.

    python examples/fortunes.py --output data/demo/fortunes.csv
"""
from __future__ import annotations

import argparse
import csv
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOPICS = ["computers", "food", "law", "medicine", "sports", "startrek"]
SEARCH = [Path("/usr/share/games/fortunes"), Path("/usr/share/fortunes")]


def fortune_dir(cache: Path) -> Path:
    """A folder with the fortune files: the system's, else unpacked from Debian's .deb files."""
    for candidate in SEARCH + [cache / "usr/share/games/fortunes"]:
        if (candidate / TOPICS[0]).is_file():
            return candidate
    if not shutil.which("apt-get"):
        sys.exit("examples/fortunes.py: needs Debian's `fortunes` package (apt-get not found)")
    with tempfile.TemporaryDirectory() as tmp:
        # `apt-get download` needs no root and installs nothing; it needs package lists.
        get = ["apt-get", "download", "fortunes", "fortunes-min"]
        if subprocess.run(get, cwd=tmp, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
            subprocess.run(get, cwd=tmp, check=True, capture_output=True)
        cache.mkdir(parents=True, exist_ok=True)
        for deb in Path(tmp).glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(cache)], check=True)
    return cache / "usr/share/games/fortunes"


def read_fortunes(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    entries = [" ".join(e.split()) for e in text.split("\n%\n")]
    return [e for e in entries if 20 <= len(e) <= 600]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="data/demo/fortunes.csv")
    parser.add_argument("--per-topic", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.output)
    source = fortune_dir((out.parent / "debian").resolve())
    rows = []
    rng = random.Random(args.seed)
    for topic in TOPICS:
        entries = read_fortunes(source / topic)
        rng.shuffle(entries)
        rows += [(e, topic) for e in entries[: args.per_topic]]
    rng.shuffle(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} fortunes in {len(TOPICS)} topics to {out} (from {source})")


if __name__ == "__main__":
    main()
