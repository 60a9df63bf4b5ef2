"""The whole suite: pure-core tests once, then every host test once per ComfyUI host found (one process each).

Prints the hosts it used and a closing ``N passed, N failed`` line; exits non-zero if anything failed or if no
host or no test was found.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from devkit import hosts

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"

COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?)")


def run_pytest(label: str, target: str, extra_env: dict[str, str], arguments: list[str]) -> dict[str, int]:
    print(f"\n=== {label}", flush=True)
    env = {**os.environ, **extra_env, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "pytest", str(TESTS_DIR / target), "-q", *arguments],
                               cwd=TESTS_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = bytearray()
    while chunk := os.read(process.stdout.fileno(), 4096):  # echoed as it comes: pytest's dots are the progress
        output += chunk
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    process.wait()
    text = output.decode(errors="replace").strip()
    last_line = text.splitlines()[-1] if text else ""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for number, kind in COUNT.findall(last_line):
        counts["error" if kind.startswith("error") else kind] += int(number)
    if process.returncode not in (0, 1) or sum(counts.values()) == 0:
        counts["error"] += 1  # pytest could not run (usage error, nothing collected, crash)
    return counts


def main() -> int:
    found = hosts.discover()
    print("ComfyUI hosts found:")
    for host in found:
        print(f"  - {host.label}")
    if not found:
        print("  none: run `make test`, which installs the 2024 ComfyUI from PyPI")
        return 1
    arguments = sys.argv[1:]
    results = {"pure core (no ComfyUI)": run_pytest("pure core (no ComfyUI)", "unit", {}, arguments)}
    for host in found:
        label = f"host {hosts.describe(host.path)}"
        results[label] = run_pytest(label, "host", {"AG_TEST_HOST": str(host.path)}, arguments)

    print("\n=== summary")
    for label, counts in results.items():
        print(f"  {label}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped, "
              f"{counts['error']} errors")
    total = {kind: sum(counts[kind] for counts in results.values()) for kind in ("passed", "failed", "skipped", "error")}
    failed = total["failed"] + total["error"]
    print(f"total: {total['passed']} passed, {failed} failed, {total['skipped']} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
