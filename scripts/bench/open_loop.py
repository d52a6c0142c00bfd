#!/usr/bin/env python3
"""Open-loop (constant offered rate) runs for scripts/bench-api.sh.

    open_loop.py get|post BASE_URL RATE SECONDS IDS_FILE

Requests are sent on schedule whatever the answers, and each latency counts from the
request's scheduled send, so a stall shows up in the latencies instead of silently lowering
the rate (no coordinated omission, unlike a closed loop such as wrk).
- `get`: oha -q RATE --latency-correction on 64 connections, the ids of IDS_FILE
  (--urls-from-file). oha costs about 25 µs of CPU per request here.
- `post`: vegeta at RATE with a stream of targets, each with an email unique per request
  (oha -Z draws body lines at random, so its emails repeat and get 409s). vegeta costs
  about 87 µs per request here, fine at POST rates.
Prints one line:
    OPEN <offered/s> <achieved/s> <p50 ms> <p99 ms> <p99.9 ms> <max ms> <non-2xx> <requests>
Requests without an answer (refused, reset, timed out) count as non-2xx.
"""
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import threading


def oha_get(base, rate, seconds, ids_file, tmp):
    ids = [line.strip() for line in open(ids_file) if line.strip()]
    random.shuffle(ids)
    urls = os.path.join(tmp, "urls")
    with open(urls, "w") as f:
        f.writelines(f"{base}/users/{i}\n" for i in ids)
    out = subprocess.run(
        [os.environ.get("OHA", "oha"), "-q", str(rate), "-z", f"{seconds}s", "-c", "64",
         "--latency-correction", "--no-tui", "--output-format", "json", "-w",
         "--urls-from-file", urls],
        check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    summary, pct = report["summary"], report["latencyPercentiles"]
    codes = report.get("statusCodeDistribution", {})
    ok = sum(n for code, n in codes.items() if 200 <= int(code) < 300)
    total = sum(codes.values()) + sum(report.get("errorDistribution", {}).values())
    ms = lambda s: (s or 0) * 1000  # noqa: E731
    return (summary["requestsPerSec"], ms(pct["p50"]), ms(pct["p99"]), ms(pct["p99.9"]),
            ms(summary["slowest"]), total - ok, total)


def quantile(sorted_ns, q):
    i = min(len(sorted_ns) - 1, max(0, int(round(q * len(sorted_ns) + 0.5)) - 1))
    return sorted_ns[i] / 1e6


def vegeta_post(base, rate, seconds, tmp):
    vegeta = os.environ.get("VEGETA", "vegeta")
    proc = subprocess.Popen(
        [vegeta, "attack", f"-rate={rate}/s", f"-duration={seconds}s", "-timeout=10s",
         "-max-connections=256", "-lazy", "-format=json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    tag = os.getpid()

    def feed():
        try:
            for n in range(rate * seconds + 1000):  # never more than the run can send
                body = json.dumps({"name": f"Open User {n}",
                                   "email": f"o-{tag}-{n}@bench.example.com"})
                proc.stdin.write(json.dumps({
                    "method": "POST", "url": f"{base}/users",
                    "header": {"Content-Type": ["application/json"]},
                    "body": base64.b64encode(body.encode()).decode(),
                }).encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass

    threading.Thread(target=feed, daemon=True).start()
    results = os.path.join(tmp, "results.bin")
    with open(results, "wb") as out:
        while chunk := proc.stdout.read(1 << 16):
            out.write(chunk)
    if proc.wait() != 0:
        sys.exit("vegeta attack failed")
    csv = subprocess.run([vegeta, "encode", "-to=csv", results], check=True,
                         capture_output=True, text=True).stdout
    latencies, non2xx, first, last = [], 0, None, None
    for line in csv.splitlines():
        ts, code, latency = (int(x) for x in line.split(",")[:3])
        first = ts if first is None else min(first, ts)
        last = ts if last is None else max(last, ts)
        latencies.append(latency)
        non2xx += not 200 <= code < 300
    if not latencies:
        sys.exit("vegeta sent nothing")
    latencies.sort()
    span = (last - first) / 1e9 if last > first else seconds
    return (len(latencies) / span, quantile(latencies, 0.5), quantile(latencies, 0.99),
            quantile(latencies, 0.999), latencies[-1] / 1e6, non2xx, len(latencies))


def main():
    mode, base, rate, seconds, ids_file = sys.argv[1:6]
    rate, seconds = int(rate), int(seconds)
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "get":
            r = oha_get(base, rate, seconds, ids_file, tmp)
        elif mode == "post":
            r = vegeta_post(base, rate, seconds, tmp)
        else:
            sys.exit(f"unknown mode {mode}")
    print("OPEN %d %.0f %.2f %.2f %.2f %.2f %d %d" % ((rate,) + r))


if __name__ == "__main__":
    main()
