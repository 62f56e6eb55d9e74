"""Two frontgate configs side by side on one core, under the same load at the same time.

On a machine whose speed drifts (a VM with busy neighbours), two legs measured one after the other can
differ by 40% for nothing. Here both gateways share the proxy core for the same seconds, each loaded by its
own wrk, so whatever slows the core slows both. Each round reports both ratios: requests/s, and CPU time
per request (user + system of each server's processes over the requests it served; the steadier one, as
it does not assume the core was split evenly). It answers "how much of its speed does this plugin keep?";
bench/run.sh remains the harness for absolute numbers.

    .venv/bin/python bench/paired.py BASE.yaml OTHER.yaml [ROUNDS] [SECONDS]
    .venv/bin/python bench/paired.py nginx bench/frontgate.yaml     # against nginx as the reverse proxy
    BENCH_HEADER="Authorization: Bearer ..." .venv/bin/python bench/paired.py ...   # a header for both

Layout as in bench/run.sh: Debian's nginx as the upstream and both wrk processes on core 0; both gateways
(`--workers 1`) on core 1. A Redis of its own (`redis-server` on a free port, core 0 too, given to the
configs as FG_BENCH_REDIS) keeps the store's work off the proxy core, as the upstream's is. Each round swaps
which gateway's wrk starts first.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import group_cpu_ticks  # bench/report.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
FRONTGATE = ROOT / ".venv" / "bin" / "frontgate"
LOAD_CPUS, PROXY_CPUS = os.environ.get("BENCH_LOAD_CPUS", "0"), os.environ.get("BENCH_PROXY_CPUS", "1")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "50"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def start_nginx(work: Path, cpus: str, http: str) -> subprocess.Popen[bytes]:
    """Debian's nginx, one worker on `cpus`, with `http` inside its http block; its files in `work`."""
    work.mkdir(exist_ok=True)
    (work / "nginx.conf").write_text(f"""
worker_processes 1; pid {work}/nginx.pid; error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off; client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    keepalive_requests 1000000;
{http}
}}""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen(["taskset", "-c", cpus, nginx, "-p", str(work), "-c", str(work / "nginx.conf"),
                             "-g", "daemon off;"], stderr=subprocess.DEVNULL, start_new_session=True)


def start_upstream(work: Path, port: int) -> subprocess.Popen[bytes]:
    return start_nginx(work, LOAD_CPUS, f"""
    server {{ listen 127.0.0.1:{port} backlog=4096;
              location = /plain {{ default_type text/plain; return 200 "ok\\n"; }} }}""")


def start_nginx_proxy(work: Path, port: int, upstream_port: int) -> subprocess.Popen[bytes]:
    """nginx as the reference reverse proxy, configured as bench/run.sh configures it."""
    return start_nginx(work, PROXY_CPUS, f"""
    upstream origin {{ server 127.0.0.1:{upstream_port}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}""")


def start_redis(port: int) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    return subprocess.Popen(["taskset", "-c", LOAD_CPUS, server, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)


def start_gateway(config: str, port: int, upstream_port: int, admin_port: int, redis_port: int
                  ) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FG_BENCH_PORT": str(port), "FG_BENCH_UPSTREAM_PORT": str(upstream_port),
           "FG_BENCH_ADMIN_PORT": str(admin_port), "FG_BENCH_REDIS": f"redis://127.0.0.1:{redis_port}/0"}
    return subprocess.Popen(["taskset", "-c", PROXY_CPUS, str(FRONTGATE), "run", "-c", config, "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wrk(port: int, seconds: int) -> subprocess.Popen[str]:
    header = os.environ.get("BENCH_HEADER")
    return subprocess.Popen(["taskset", "-c", LOAD_CPUS, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s",
                             *(["-H", header] if header else []), f"http://127.0.0.1:{port}/plain"],
                            stdout=subprocess.PIPE, text=True)


def served(output: str) -> tuple[float, int]:
    """Requests/s and requests of one wrk run."""
    rate, total = re.search(r"Requests/sec:\s*([\d.]+)", output), re.search(r"(\d+) requests in", output)
    if rate is None or total is None or "Non-2xx" in output:
        raise SystemExit("wrk failed or got errors:\n" + output)
    return float(rate.group(1)), int(total.group(1))


def main() -> None:
    base, other = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    seconds = int(sys.argv[4]) if len(sys.argv) > 4 else 6
    build = subprocess.run([str(FRONTGATE.with_name("python")), "-c", "import frontgate.server.exchange as m; "
                            "print('compiled (mypyc)' if m.__file__.endswith('.so') else 'pure Python')"],
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"frontgate build: {build} (./scripts/build-native compiles it)")
    with tempfile.TemporaryDirectory(prefix="frontgate-paired-") as tmp:
        upstream_port, redis_port, ports = free_port(), free_port(), (free_port(), free_port())
        processes = [start_upstream(Path(tmp), upstream_port), start_redis(redis_port)]
        try:
            wait_port(upstream_port)
            wait_port(redis_port)
            for config, port in zip((base, other), ports, strict=True):
                if config == "nginx":
                    processes.append(start_nginx_proxy(Path(tmp) / f"proxy-{port}", port, upstream_port))
                else:
                    processes.append(start_gateway(config, port, upstream_port, free_port(), redis_port))
                wait_port(port)
            for port in ports:  # warm-up, one at a time
                wrk(port, 2).communicate()
            servers = [process.pid for process in processes[2:]]  # process groups: a server and its workers
            by_rate, by_cpu = [], []
            for r in range(rounds):
                order = ports if r % 2 == 0 else ports[::-1]
                ticks = [group_cpu_ticks(pid) for pid in servers]
                runs = {port: wrk(port, seconds) for port in order}
                results = [served(runs[port].communicate()[0]) for port in ports]
                ticks = [group_cpu_ticks(pid) - before for pid, before in zip(servers, ticks, strict=True)]
                cpu_us = [t / os.sysconf("SC_CLK_TCK") * 1e6 / n for t, (_, n) in zip(ticks, results, strict=True)]
                by_rate.append(results[1][0] / results[0][0])
                by_cpu.append(cpu_us[0] / cpu_us[1])
                print(f"round {r + 1}: {base} {results[0][0]:,.0f} req/s {cpu_us[0]:.0f} us CPU/req, "
                      f"{other} {results[1][0]:,.0f} req/s {cpu_us[1]:.0f} us CPU/req: "
                      f"{by_rate[-1]:.1%} by req/s, {by_cpu[-1]:.1%} by CPU/req", flush=True)
            print(f"median: {other} keeps {statistics.median(by_cpu):.1%} of {base}'s requests per CPU second "
                  f"(rounds: {', '.join(f'{x:.1%}' for x in by_cpu)}) and {statistics.median(by_rate):.1%} of its "
                  f"requests/s (rounds: {', '.join(f'{x:.1%}' for x in by_rate)})")
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(10)


if __name__ == "__main__":
    main()
