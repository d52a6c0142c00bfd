#!/usr/bin/env python3
"""Open-loop (constant offered rate) run with vegeta, for scripts/bench-api.sh.

    open_loop.py get|post BASE_URL RATE SECONDS [IDS_FILE]

Requests are sent on schedule whatever the answers, so a stall shows up in the latencies
(no coordinated omission, unlike a closed loop such as wrk). `get` cycles through the ids
in IDS_FILE in a random order (a static targets file); `post` streams targets with an email
unique per request (vegeta -lazy). Prints one line:
    OPEN <offered/s> <achieved/s> <p50 ms> <p99 ms> <p99.9 ms> <max ms> <non-2xx> <requests>
vegeta counts a request that got no answer (timeout, refused) as code 0: a non-2xx here.
"""
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import threading


def quantile(sorted_ns, q):
    if not sorted_ns:
        return float("nan")
    i = min(len(sorted_ns) - 1, max(0, int(round(q * len(sorted_ns) + 0.5)) - 1))
    return sorted_ns[i] / 1e6


def main():
    mode, base, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    vegeta = os.environ.get("VEGETA", "vegeta")
    attack = [vegeta, "attack", f"-rate={rate}/s", f"-duration={seconds}s", "-timeout=10s",
              "-keepalive=true", "-max-connections=256"]
    feeder = None
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "get":
            ids = [line.strip() for line in open(sys.argv[5]) if line.strip()]
            random.shuffle(ids)
            targets = os.path.join(tmp, "targets")
            with open(targets, "w") as f:
                for i in ids:
                    f.write(f"GET {base}/users/{i}\n\n")
            proc = subprocess.Popen(attack + [f"-targets={targets}"], stdout=subprocess.PIPE)
        elif mode == "post":
            proc = subprocess.Popen(attack + ["-lazy", "-format=json"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
            tag = os.getpid()

            def feed():
                n = 0
                try:
                    # Bounded: never more targets than the run can send.
                    while n < rate * seconds + 1000:
                        n += 1
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

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
        else:
            sys.exit(f"unknown mode {mode}")
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
        fields = line.split(",")
        ts, code, latency = int(fields[0]), int(fields[1]), int(fields[2])
        first = ts if first is None else min(first, ts)
        last = ts if last is None else max(last, ts)
        latencies.append(latency)
        if not 200 <= code < 300:
            non2xx += 1
    latencies.sort()
    span = (last - first) / 1e9 if latencies and last > first else seconds
    print("OPEN %d %.0f %.2f %.2f %.2f %.2f %d %d" % (
        rate, len(latencies) / span, quantile(latencies, 0.5), quantile(latencies, 0.99),
        quantile(latencies, 0.999), latencies[-1] / 1e6 if latencies else float("nan"),
        non2xx, len(latencies)))


if __name__ == "__main__":
    main()
