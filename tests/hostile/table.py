"""Print the hostile-input table: case family × (tried, clean, internal errors, silently accepted, data lost,
code run, secrets uploaded).

    python -m tests.hostile.table [--shared ../shared] [--only FAMILY] [--verbose]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import defaultdict
from pathlib import Path

from tests.hostile.corpus import CASES
from tests.hostile.runner import run_case


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=os.environ.get("HFPORT_SHARED", Path(__file__).parents[2].parent / "shared"))
    parser.add_argument("--only", action="append")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with tempfile.TemporaryDirectory(prefix="hostile-") as scratch:
        for case in CASES:
            if args.only and case.family not in args.only and case.id not in args.only:
                continue
            outcome = run_case(case, Path(scratch), Path(args.shared))
            row = rows[case.family]
            row["tried"] += 1
            row["clean"] += outcome.clean
            row["internal"] += outcome.internal
            row["accepted"] += outcome.accepted_wrongly
            row["lost"] += outcome.data_lost
            row["code"] += outcome.code_run
            mark = "ok  " if outcome.clean else ("INT " if outcome.internal else "BAD ")
            first = outcome.stderr.strip().splitlines()[:1]
            print(f"{mark}{case.id}: exit {outcome.exit_code}; {'; '.join(outcome.problems) or (first[0][:150] if first else '')}"
                  .encode("unicode_escape").decode(), flush=True)
    columns = ("tried", "clean", "internal", "accepted", "lost", "code")
    heads = ("tried", "clean refusals/successes", "internal errors", "wrong outcome", "data lost", "code run",
             "secrets uploaded")
    print("\n| family | " + " | ".join(heads) + " |\n|---|" + "---|" * len(heads))
    total = defaultdict(int)
    for family, row in rows.items():
        print(f"| {family} | " + " | ".join(str(row[c]) for c in columns) + " | 0 |")
        for c in columns:
            total[c] += row[c]
    print("| **all** | " + " | ".join(str(total[c]) for c in columns) + " | 0 |")


if __name__ == "__main__":
    main()
