"""What the python tool's OS boundary costs per call: bubblewrap (namespaces + seccomp) against the weak
audit-hooks mode (a plain ``python -I -S`` process), on the same programs in the same run.

    python bench/sandbox_latency.py [--runs 20]

Prints the median and 90th-percentile wall time per call of each mode, and the ratio bubblewrap / weak.
"""

import argparse
import statistics
import time
import warnings

from chatforge.tools import run_python
from chatforge.tools.isolation import AUDIT_HOOKS, BUBBLEWRAP

PROGRAMS = {
    "print": "print(6 * 7)",
    "arithmetic": "import math\nprint(sum(math.comb(40, k) for k in range(41)))",
    "numpy": "import numpy as np\nprint(np.linalg.det(np.eye(50) * 2))",
}


def timings(code: str, isolation: str, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        run_python(code, isolation=isolation)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"{'program':<12}{'mode':<13}{'median ms':>10}{'p90 ms':>9}")
    for name, code in PROGRAMS.items():
        medians = {}
        for isolation in (AUDIT_HOOKS, BUBBLEWRAP):
            run_python(code, isolation=isolation)  # warm the page cache and the one-time checks
            seconds = sorted(timings(code, isolation, args.runs))
            medians[isolation] = statistics.median(seconds)
            print(f"{name:<12}{isolation:<13}{1e3 * medians[isolation]:>10.1f}"
                  f"{1e3 * seconds[int(0.9 * (len(seconds) - 1))]:>9.1f}")
        print(f"{name:<12}{'ratio':<13}{medians[BUBBLEWRAP] / medians[AUDIT_HOOKS]:>10.2f}x")


if __name__ == "__main__":
    main()
