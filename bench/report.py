"""Helpers for bench/run.sh (standard library only).

report.py meta RUN_DIR     machine info as Markdown
report.py probe [https:]PORT  check a proxy answers /plain and /16k correctly (exit 1 with the reason if not)
report.py line WRK_FILE    one-line summary of a wrk run
report.py cputicks PGID    CPU time (clock ticks, user+system) used so far by the processes of a group
report.py report RUN_DIR   the Markdown report; exit 1 when a leg failed, crashed or had errors
"""

from __future__ import annotations

import http.client
import os
import re
import ssl
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
EXPECTED = {"plain": b"ok\n", "16k": 16384}
# handshake: GET /plain with `Connection: close`, a new connection (a full TLS handshake) per request.
SCENARIOS = ("plain", "16k", "handshake")


@dataclass
class WrkRun:
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int | None = None
    non2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    failure: str | None = None  # wrk did not produce a result at all
    cpu_busy: list[float] = field(default_factory=list)  # % busy per CPU during the run
    proxy_cpu_us: float | None = None  # CPU time the proxy under test spent during the run, microseconds
    duration_s: float | None = None

    @property
    def proxy_share(self) -> float | None:
        """The proxy's CPU time over the run's wall time, in % of one core."""
        if self.proxy_cpu_us is None or not self.duration_s:
            return None
        return self.proxy_cpu_us / self.duration_s / 1e4

    @property
    def cpu_per_req_us(self) -> float | None:
        if self.proxy_cpu_us is None or not self.requests:
            return None
        return self.proxy_cpu_us / self.requests

    @property
    def problems(self) -> list[str]:
        out = []
        if self.failure:
            out.append(self.failure)
        if self.non2xx:
            out.append(f"{self.non2xx} non-2xx/3xx")
        errs = {k: v for k, v in self.socket_errors.items() if v}
        if errs:
            out.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errs.items()))
        return out


def _latency(text: str, pct: str) -> float | None:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    return float(m.group(1)) * UNITS_MS[m.group(2)] if m else None


def parse_wrk(text: str) -> WrkRun:
    run = WrkRun()
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if m:
        run.rps = float(m.group(1))
    run.p50_ms = _latency(text, "50")
    run.p99_ms = _latency(text, "99")
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", text, re.M)
    if m:
        run.requests = int(m.group(1))
        run.duration_s = float(m.group(2)) * UNITS_MS[m.group(3)] / 1000
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        run.non2xx = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        run.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
    m = re.search(r"wrk exited with status (\d+)", text)
    if run.rps is None or run.p50_ms is None or run.p99_ms is None or not run.requests:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no output")
        run.failure = "no result from wrk" + (f" (exit {m.group(1)})" if m else "") + f": {first[:120]}"
    elif m:
        run.failure = f"wrk exited with status {m.group(1)}"
    return run


def cpu_busy(stat0: Path, stat1: Path) -> list[float]:
    """Per-CPU busy percentage between two snapshots of the cpuN lines of /proc/stat."""
    try:
        a = [list(map(int, ln.split()[1:])) for ln in stat0.read_text().splitlines()]
        b = [list(map(int, ln.split()[1:])) for ln in stat1.read_text().splitlines()]
    except (OSError, ValueError):
        return []
    out = []
    for x, y in zip(a, b, strict=False):
        d = [j - i for i, j in zip(x, y, strict=False)]
        total = sum(d[:8])  # user nice system idle iowait irq softirq steal
        idle = d[3] + d[4]
        out.append(100.0 * (total - idle) / total if total > 0 else 0.0)
    return out


def load_run(path: Path) -> WrkRun:
    run = parse_wrk(path.read_text(errors="replace"))
    stem = path.with_suffix("")
    run.cpu_busy = cpu_busy(Path(f"{stem}.stat0"), Path(f"{stem}.stat1"))
    try:
        ticks = int(Path(f"{stem}.cpu1").read_text()) - int(Path(f"{stem}.cpu0").read_text())
        run.proxy_cpu_us = ticks * 1e6 / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return run


def group_cpu_ticks(pgid: int) -> int:
    """utime + stime of the live processes whose process group is pgid (Linux /proc)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total


def fmt_cpu(busy: Sequence[float | None], proxy: float | None = None) -> str:
    cores = " ".join(f"c{i} {b:.0f}%" for i, b in enumerate(busy) if b is not None) or "-"
    return cores if proxy is None else f"{proxy:.0f}% / {cores}"


def cpu_list(spec: str) -> list[int]:
    """A taskset list such as "1", "0-1" or "0,2-3" as CPU numbers."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out += range(int(lo), int(hi or lo) + 1) if (hi or lo).isdigit() else []
    return out


def fmt_us(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} us"


def fmt_rps(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# --- subcommands ---------------------------------------------------------------------------------------


def read_tsv(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [ln.split("\t") for ln in path.read_text().splitlines() if ln.strip()]


def cmd_meta(run_dir: Path) -> str:
    rows = read_tsv(run_dir / "meta.tsv")
    return "\n".join(f"- **{k}**: {v}" for k, v, *_ in rows)


def cmd_probe(target: str) -> int:
    """`target` is PORT or SCHEME:PORT (https: the bench's self-signed certificate, not verified)."""
    scheme, _, port_text = target.rpartition(":")
    port = int(port_text)
    for path, want in (("/plain", EXPECTED["plain"]), ("/16k", EXPECTED["16k"])):
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                               context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            header = os.environ.get("BENCH_HEADER", "")
            name, _, value = header.partition(":")
            conn.request("GET", path, headers={name.strip(): value.strip()} if header else {})
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            print(f"GET {path}: {type(exc).__name__}: {exc}")
            return 1
        finally:
            conn.close()
        if resp.status != 200:
            print(f"GET {path}: status {resp.status}, body {body[:100]!r}")
            return 1
        if isinstance(want, bytes) and body != want:
            print(f"GET {path}: body {body[:100]!r}, expected {want!r}")
            return 1
        if isinstance(want, int) and len(body) != want:
            print(f"GET {path}: {len(body)} bytes, expected {want}")
            return 1
    return 0


def cmd_line(path: Path) -> str:
    run = load_run(path)
    if run.failure and run.rps is None:
        return f"!!! FAILED: {run.failure}"
    out = (
        f"{fmt_rps(run.rps):>9} req/s  p50 {fmt_ms(run.p50_ms):>9}  p99 {fmt_ms(run.p99_ms):>9}  "
        f"proxy CPU/req {fmt_us(run.cpu_per_req_us):>6}  CPU proxy/cores {fmt_cpu(run.cpu_busy, run.proxy_share)}"
    )
    if run.problems:
        out += "   !!! ERRORS: " + "; ".join(run.problems)
    return out


def cmd_report(run_dir: Path) -> tuple[str, int]:
    legs = [leg + [""] * (5 - len(leg)) for leg in read_tsv(run_dir / "legs.tsv")]  # name kind base state note
    meta = {r[0]: r[1] for r in read_tsv(run_dir / "meta.tsv") if len(r) >= 2}
    runs: dict[tuple[str, str], list[tuple[int, WrkRun]]] = {}
    for f in sorted((run_dir / "wrk").glob("*.txt")):
        m = re.fullmatch(r"(.+)\.(plain|16k|handshake)\.r(\d+)\.txt", f.name)
        if m:  # warm-ups do not match
            runs.setdefault((m.group(1), m.group(2)), []).append((int(m.group(3)), load_run(f)))
    for key in runs:
        runs[key].sort(key=lambda x: x[0])
    scenarios = [sc for sc in SCENARIOS if any(k[1] == sc for k in runs)]

    def rounds(name: str, sc: str) -> list[WrkRun]:
        return [r for _, r in runs.get((name, sc), [])]

    alarms: list[str] = []
    for name, _kind, _base, state, note, *_ in legs:
        if state != "up":
            alarms.append(f"**{name}**: {note or state}")
    for (name, sc), numbered in sorted(runs.items()):
        for rnd, run in numbered:
            if run.problems:
                alarms.append(f"**{name}** {sc} round {rnd}: " + "; ".join(run.problems))

    Stats = tuple[float | None, float | None, float | None, float | None]
    stats: dict[tuple[str, str], Stats] = {}
    for sc in scenarios:
        for name, *_ in legs:
            rr = rounds(name, sc)
            stats[(name, sc)] = (
                median([r.rps for r in rr]),
                median([r.p50_ms for r in rr]),
                median([r.p99_ms for r in rr]),
                median([r.cpu_per_req_us for r in rr]),
            )

    lines = [f"## frontgate benchmark, {meta.get('date', run_dir.name)}", ""]
    if alarms:
        lines += ["> **!!! PROBLEMS: read these before trusting any number below !!!**", ">"]
        lines += [f"> - {a}" for a in alarms]
        lines.append("")
    lines += [cmd_meta(run_dir), ""]
    lines += [
        "| scenario | server | req/s (median) | req/s per round | p50 | p99 | proxy CPU/req "
        "| req/s vs nginx | p99 vs nginx | CPU/req vs nginx | CPU: proxy / cores | errors |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    noisy: list[str] = []
    crowded: list[str] = []
    single_core_legs = {leg[0] for leg in legs if not leg[0].endswith("-w2")}
    for sc in scenarios:
        for name, _kind, base, state, note, *_ in legs:
            rr = rounds(name, sc)
            if not rr:
                lines.append(f"| {sc} | {name} | - | - | - | - | - | - | - | - | - | **{note or state}** |")
                continue
            rps, p50, p99, cpr = stats[(name, sc)]
            vals = [r.rps for r in rr if r.rps]
            if len(vals) > 1 and max(vals) > 1.2 * min(vals):
                noisy.append(f"{name} {sc}")
            errs = "; ".join(p for r in rr for p in r.problems)
            if state == "crashed":
                errs = (errs + "; " if errs else "") + "CRASHED"
            ncpu = max(len(r.cpu_busy) for r in rr)
            busy = [median([r.cpu_busy[c] if c < len(r.cpu_busy) else None for r in rr]) for c in range(ncpu)]
            share = median([r.proxy_share for r in rr])
            proxy_cores = [busy[c] for c in cpu_list(meta.get("proxy_cpus", "1")) if c < len(busy)]
            if (
                name in single_core_legs
                and share is not None
                and share < 80
                and proxy_cores
                and min(b or 0 for b in proxy_cores) > 95
            ):
                crowded.append(f"{name} {sc} ({share:.0f}%)")
            b_rps, _, b_p99, b_cpr = stats.get((base, sc), (None, None, None, None))
            ratios = f"{fmt_ratio(rps, b_rps)} | {fmt_ratio(p99, b_p99)} | {fmt_ratio(cpr, b_cpr)}" if base else " | | "
            lines.append(
                f"| {sc} | {name} | {fmt_rps(rps)} | {' / '.join(fmt_rps(r.rps) for r in rr)} "
                f"| {fmt_ms(p50)} | {fmt_ms(p99)} | {fmt_us(cpr)} | {ratios} | {fmt_cpu(busy, share)} "
                f"| {'**' + errs + '**' if errs else '0'} |"
            )
    lines += [
        "",
        "req/s: median over rounds. p50/p99: median over rounds of each round's wrk `--latency` percentile. "
        "proxy CPU/req: user+system CPU time of the proxy's processes divided by the requests it served "
        "(steadier than req/s when the machine is shared). "
        '"vs nginx": against the nginx leg on the same cores (frontgate-w2 against nginx-w2); '
        "req/s above 1 is better, p99 and CPU/req below 1 are better. "
        "CPU: proxy / cores: the proxy's own CPU time in % of one core, then how busy each core was "
        f"(wrk and the upstream have core(s) {meta.get('load_cpus', '0')}, the proxy core(s) "
        f"{meta.get('proxy_cpus', '1')}). A proxy at ~100% is the bottleneck; a proxy well under 100% on a busy "
        "core is being crowded out by other processes (its req/s then understates it: 1e6 / CPU/req is "
        "what one full core would serve); a load core at 100% with an idle proxy core makes the req/s a floor.",
    ]
    if noisy:
        lines += [
            "",
            "**Noisy:** req/s differed by more than 20% between rounds for "
            + ", ".join(noisy)
            + f" (load average before the run: {meta.get('loadavg', '?')}). "
            "Trust the CPU/req column more, or rerun on a quiet machine or with more rounds.",
        ]
    if crowded:
        lines += [
            "",
            "**Crowded:** the proxy core was fully busy but the proxy itself got only part of it for "
            + ", ".join(crowded)
            + ": other processes were running on that core, so req/s and latency understate the proxy. "
            "Compare CPU/req, or rerun on a quiet machine.",
        ]
    notes = [(leg[0], leg[4]) for leg in legs if leg[4] and leg[3] == "up"]
    if notes:
        lines += ["", "Legs:"] + [f"- {n}: {t}" for n, t in notes]
    return "\n".join(lines) + "\n", 1 if alarms else 0


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, arg = argv[1], argv[2]
    if cmd == "meta":
        print(cmd_meta(Path(arg)))
        return 0
    if cmd == "probe":
        return cmd_probe(arg)
    if cmd == "cputicks":
        print(group_cpu_ticks(int(arg)))
        return 0
    if cmd == "line":
        print(cmd_line(Path(arg)))
        return 0
    if cmd == "report":
        text, rc = cmd_report(Path(arg))
        sys.stdout.write(text)
        return rc
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
