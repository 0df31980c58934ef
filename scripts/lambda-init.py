#!/usr/bin/env python3
"""Measures a Lambda bootstrap's init time locally: from process start to its first request to a
fake Lambda Runtime API on loopback (GET /2018-06-01/runtime/invocation/next), median of N runs.

usage: lambda-init.py RUNS BOOTSTRAP [BOOTSTRAP ...]
"""
import http.server
import os
import statistics
import subprocess
import sys
import threading
import time

first_request = threading.Event()


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/runtime/invocation/next"):
            first_request.set()
            # Hold the long poll as the real Runtime API does; the process is killed meanwhile.
            time.sleep(2)
        self.send_response(204)
        self.end_headers()

    def do_POST(self):
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


def measure(bootstrap, port, env):
    first_request.clear()
    t0 = time.perf_counter()
    proc = subprocess.Popen([bootstrap], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = first_request.wait(timeout=10)
    t1 = time.perf_counter()
    proc.kill()
    proc.wait()
    if not ok:
        sys.exit(f"{bootstrap}: no request to the Runtime API within 10 s")
    return (t1 - t0) * 1000


def main():
    runs = int(sys.argv[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ)
    env.update({
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": "measure",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/measure",
        "AWS_LAMBDA_LOG_STREAM_NAME": "local",
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "measure",
        "AWS_SECRET_ACCESS_KEY": "measure",
        "AWS_SESSION_TOKEN": "measure",
        "AWS_EC2_METADATA_DISABLED": "true",
        # What template.yaml gives the functions.
        "KEYS_TABLE": "keys", "TENANTS_TABLE": "tenants", "DEDUP_TABLE": "dedup",
        "SUBSCRIPTIONS_TABLE": "subscriptions",
        "INCIDENTS_TABLE": "incidents", "DISPATCH_TABLE": "dispatch",
        "ALERT_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/alerts",
        "AGENT_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:agents",
        "RUST_LOG": "info",
    })
    results = {}
    for b in sys.argv[2:]:
        measure(b, port, env)  # warm the page cache
    # Interleave runs so background noise hits every binary alike.
    samples = {b: [] for b in sys.argv[2:]}
    for _ in range(runs):
        for b in sys.argv[2:]:
            samples[b].append(measure(b, port, env))
    for b, s in samples.items():
        results[b] = statistics.median(s)
        print(f"{b}: median init {results[b]:.1f} ms over {runs} runs (min {min(s):.1f}, max {max(s):.1f})")
    server.shutdown()
    return results


if __name__ == "__main__":
    main()
