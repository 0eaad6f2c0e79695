"""One rank of a real DDP run (gloo) that counts what DDP hands to its all-reduce.

It trains a recipe through ``leantrain.train`` with a DDP communication hook that records
every gradient bucket's bytes and then does exactly what DDP's default hook does, so the
run is unchanged. Usage (under torchrun): python ddp_comm_worker.py RECIPE.json OUT_DIR
"""
from __future__ import annotations

import json
import os
import sys

from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from leantrain import train
from leantrain.engine.distributed import Parallel


def main(recipe_path: str, out_dir: str) -> None:
    buckets: list[int] = []
    plain_wrap = Parallel.wrap

    def counting_wrap(self, model, device):
        wrapped = plain_wrap(self, model, device)

        def hook(state, bucket):
            buckets.append(bucket.buffer().numel() * bucket.buffer().element_size())
            return default_hooks.allreduce_hook(state, bucket)

        wrapped.register_comm_hook(None, hook)
        return wrapped

    Parallel.wrap = counting_wrap
    with open(recipe_path, encoding="utf-8") as f:
        result = train(json.load(f), show_progress=False)
    rank = int(os.environ["RANK"])
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump({"bucket_bytes": buckets, "steps": result.summary["steps"], "status": result.summary["status"]}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
