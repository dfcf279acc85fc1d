"""Run the whole fault corpus and print the number of cases per outcome class.

    python tests/faults_table.py            # this checkout's onnxprune
    PYTHONPATH=/path/to/other/checkout python tests/faults_table.py --details

The classes and the cases are defined in faults_cases.py; the tests assert each case's class.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
if "PYTHONPATH" not in os.environ:  # measure this checkout unless told otherwise
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faults_cases import all_cases, run_case  # noqa: E402


def main() -> None:
    details = "--details" in sys.argv
    counts: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for number, case in enumerate(all_cases()):
            got, detail = run_case(case, Path(tmp) / str(number))
            counts[got] += 1
            if details and got != case.expect:
                print(f"{got:16} {case.id}: {detail.strip().splitlines()[-1] if detail.strip() else ''}"[:300])
    for name, count in counts.most_common():
        print(f"{name:16} {count}")
    print(f"{'total':16} {sum(counts.values())}")


if __name__ == "__main__":
    main()
