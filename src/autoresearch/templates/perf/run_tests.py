"""Run the test suite with the standard library alone (pytest runs the same tests too). Protected.

    python run_tests.py            every test_* function in tests/test_*.py
    python run_tests.py -k NAME    only tests whose name contains NAME

Prints each failure's traceback, then one `FAILED name` line per failure and a summary; exits 1 if anything
failed (or nothing ran), 0 otherwise. This is `experiment.checks`: a change is kept only
if it exits 0.
"""

import importlib.util
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main(argv):
    only = argv[argv.index("-k") + 1] if "-k" in argv else ""
    sys.path.insert(0, str(ROOT))
    passed, failed = 0, []
    t0 = time.time()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"tests.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception:
            failed.append((path.name, traceback.format_exc()))
            continue
        for name in sorted(n for n in vars(module) if n.startswith("test_") and callable(getattr(module, n))):
            if only and only not in name:
                continue
            try:
                getattr(module, name)()
                passed += 1
            except Exception:
                failed.append((f"{path.name}::{name}", traceback.format_exc()))
    for name, tb in failed:
        print(f"---- {name}\n{tb}")
    for name, _ in failed:  # last, so the tail of the output names every failure
        print(f"FAILED {name}")
    print(f"{passed} passed, {len(failed)} failed in {time.time() - t0:.2f}s")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
