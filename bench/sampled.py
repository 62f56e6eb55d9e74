"""Where a gateway under load spends its time: py-spy samples a running `frontgate run` while wrk loads it.

bench/hotpath.py counts our Python without sockets, and callgrind exaggerates work that is paced by the
clock (batches flushed every 100 ms, export backoffs) because it slows the process fifty-fold. This one
samples the real server, kernel time included (a sample inside `transport.write` is a send), at the
layout of bench/run.sh: upstream nginx and wrk on core 0, the gateway (`--workers 1`) on core 1.

    .venv/bin/pip install -e '.[bench]'     # py-spy
    .venv/bin/python bench/sampled.py bench/frontgate-observability.yaml [SECONDS] [TOP]

Prints the share of samples per thread, per function (self and inclusive) and, for the costliest
functions, per line. Samples are taken without pausing the process (`--nonblocking`), so the gateway runs
at full speed and its requests/s is printed beside the profile.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import LOAD_CPUS, free_port, start_gateway, start_upstream, wait_port, wrk  # beside this file

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def sample(config: str, seconds: int, output: Path) -> str:
    """Run the gateway under wrk and record py-spy's raw samples into `output`; wrk's summary line."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="frontgate-sampled-") as tmp:
        upstream_port, port = free_port(), free_port()
        processes = [start_upstream(Path(tmp), upstream_port)]
        try:
            wait_port(upstream_port)
            gateway = start_gateway(config, port, upstream_port, free_port(), free_port())
            processes.append(gateway)
            wait_port(port)
            wrk(port, 2).communicate()  # warm-up
            load = wrk(port, seconds + 2)
            time.sleep(1)
            subprocess.run(["taskset", "-c", LOAD_CPUS, spy, "record", "--nonblocking", "--threads", "-r", "400",
                            "-d", str(seconds), "-f", "raw", "-o", str(output), "--pid", str(gateway.pid)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            summary = load.communicate()[0]
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(10)
    rate = re.search(r"Requests/sec:\s*([\d.]+)", summary)
    return f"{float(rate.group(1)):,.0f} req/s" if rate else "wrk printed no rate"


def report(raw: Path, top: int) -> None:
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    lines: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for entry in raw.read_text().splitlines():
        stack, _, count_text = entry.rpartition(" ")
        count = int(count_text)
        total += count
        thread, *frames = stack.split(";")
        threads[thread] += count
        names = []
        for frame in frames:
            match = _FRAME.match(frame)
            names.append(f"{match['function']} ({match['file']})" if match else frame)
        if not names:
            continue
        own[names[-1]] += count
        last = _FRAME.match(frames[-1])
        if last and last["line"]:
            lines[names[-1]][last["line"]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        raise SystemExit("py-spy recorded no samples")

    def share(count: int) -> str:
        return f"{count / total:6.1%}"

    print(f"{total} samples")
    for thread, count in threads.most_common():
        print(f"{share(count)}  {thread}")
    print("\nself (the line running was in this function; a C call made from it counts here):")
    for name, count in own.most_common(top):
        print(f"{share(count)}  {name}")
    print("\ninclusive (this function was on the stack):")
    for name, count in inclusive.most_common(top):
        print(f"{share(count)}  {name}")
    print("\nby line, for the costliest functions (self):")
    for name, _ in own.most_common(8):
        hot = ", ".join(f"{line}: {count / total:.1%}" for line, count in lines[name].most_common(6))
        print(f"  {name}: {hot}")


def main() -> None:
    config = sys.argv[1]
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    with tempfile.TemporaryDirectory(prefix="frontgate-samples-") as tmp:
        raw = Path(tmp) / "samples.txt"
        print(f"{config}: {sample(config, seconds, raw)} while sampled")
        report(raw, top)


if __name__ == "__main__":
    main()
