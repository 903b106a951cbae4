"""``python -m benchmarks`` (``make bench``): every benchmark, one after another.

Each one is also runnable alone (``python -m benchmarks.sgd`` ...). Never run
two at once on a shared machine: the figures would mean nothing.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["sgd", "joblib_gridsearch", "round_cost", "region_scale", "multi_region", "guard", "verify", "dial_out"]


def main() -> None:
    quick = ["--quick"] if "--quick" in sys.argv[1:] else []
    for name in BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"\n=== benchmarks.{name} ===", flush=True)
        module.main(quick if name != "joblib_gridsearch" else [])


if __name__ == "__main__":
    main()
