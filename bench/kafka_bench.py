"""Measures what the prediction log and the Kafka ingress cost and deliver,
on this machine, in one run:

1. gateway throughput (closed loop, quiver-bench) with the prediction log
   off, to the local log, and to Kafka; the ratios to "off";
2. Kafka ingress end to end: N requests produced to the requests topic,
   time until N answers are on the responses topic;
3. spool replay: the gateway serves N requests while its broker is away
   (everything spools), then the broker starts; time until the spool is
   empty again.

Run through bench/kafka_bench.sh, which builds the release binaries and the
Python client. Prints a Markdown table and writes bench-results/kafka.json.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from confluent_kafka import Consumer, Producer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = os.path.join(ROOT, "target/release/quiver-gateway")
BENCH = os.path.join(ROOT, "target/release/quiver-bench")
NISSHI = os.environ["QUIVER_NISSHI"]
DURATION = float(os.environ.get("DURATION", "10"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "32"))
INGRESS_N = int(os.environ.get("INGRESS_N", "20000"))
SPOOL_N = int(os.environ.get("SPOOL_N", "20000"))


def progress(msg):
    print(f"kafka bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, port=None):
        self.port = port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [NISSHI, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://nisshi/", "--group-initial-rebalance-delay", "0s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def wait_port(port, timeout=30):
    until = time.time() + timeout
    while time.time() < until:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


class Gateway:
    def __init__(self, repo, env):
        self.port = free_port()
        full = dict(os.environ, RUST_LOG="warn", **env)
        self.proc = subprocess.Popen(
            [GATEWAY, "--model-repository", repo, "--http-addr", f"127.0.0.1:{self.port}"],
            env=full, stdout=subprocess.DEVNULL)
        until = time.time() + 60
        while time.time() < until:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("gateway not ready")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name, *labels):
        with urllib.request.urlopen(f"{self.url}/metrics") as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key.split("{")[0] == name and all(l in key for l in labels):
                total += float(value)
        return total

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def repo_with_mlp():
    repo = tempfile.mkdtemp(prefix="quiver-kafka-bench-")
    subprocess.run(["cp", "-r", os.path.join(ROOT, "examples/models/mlp"), repo], check=True)
    return repo


def closed_loop(gw, label):
    out = os.path.join(tempfile.mkdtemp(), f"{label}.json")
    subprocess.run([BENCH, "run", "--url", gw.url, "--model", "mlp", "--closed",
                    "--connections", str(CONNECTIONS), "--duration", str(DURATION),
                    "--label", label, "--out", out], check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        point = json.load(f)["points"][-1]
    return point["achieved_rps"], point["errors"]


def throughput(results):
    repo = repo_with_mlp()
    broker = Broker()
    modes = [
        ("off", {"QUIVER_LOG__PREDICTIONS": "false", "QUIVER_LOG__DIR": tempfile.mkdtemp()}),
        ("local log", {"QUIVER_LOG__DIR": tempfile.mkdtemp()}),
        ("kafka", {"QUIVER_KAFKA__BROKERS": broker.bootstrap,
                   "QUIVER_KAFKA__SPOOL_DIR": tempfile.mkdtemp()}),
    ]
    rows = []
    for name, env in modes:
        progress(f"closed loop, {CONNECTIONS} connections, {DURATION:.0f} s, prediction log {name}")
        gw = Gateway(repo, env)
        rps, errors = closed_loop(gw, name.replace(" ", "-"))
        logged = gw.metric("quiver_log_records_total", 'stream="predictions"')
        dropped = gw.metric("quiver_log_records_total", 'outcome="dropped"')
        gw.stop()
        rows.append({"mode": name, "rps": rps, "errors": errors, "records": logged, "dropped": dropped})
    broker.stop()
    base = rows[0]["rps"]
    for r in rows:
        r["ratio_to_off"] = r["rps"] / base if base else None
    results["throughput"] = rows


def ingress(results):
    repo = repo_with_mlp()
    broker = Broker()
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    x = [0.1] * 16
    progress(f"producing {INGRESS_N} ingress requests")
    for i in range(INGRESS_N):
        body = json.dumps({"model_name": "mlp", "id": f"r{i}", "inputs": [
            {"name": "features", "shape": [1, 16], "datatype": "FP32", "data": x}]})
        while True:
            try:
                producer.produce("quiver.requests", key=f"r{i}", value=body)
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "kafka-bench-reader",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["quiver.responses"])
    progress("starting the gateway with ingress; timing until every answer is on the responses topic")
    started = time.time()
    gw = Gateway(repo, {"QUIVER_KAFKA__BROKERS": broker.bootstrap,
                        "QUIVER_KAFKA__SPOOL_DIR": tempfile.mkdtemp(),
                        "QUIVER_KAFKA__INGRESS__ENABLED": "true"})
    ready = time.time()
    seen = set()
    last = time.time()
    while len(seen) < INGRESS_N and time.time() - last < 30:
        for m in consumer.consume(1000, 0.5):
            if m.error() is None:
                seen.add(m.key())
                last = time.time()
    done = time.time()
    gw.stop()
    consumer.close()
    broker.stop()
    results["ingress"] = {"requests": INGRESS_N, "answered": len(seen),
                          "seconds_from_ready": done - ready,
                          "records_per_s": len(seen) / (done - ready),
                          "startup_s": ready - started}


def spool_replay(results):
    repo = repo_with_mlp()
    port = free_port()
    gw = Gateway(repo, {"QUIVER_KAFKA__BROKERS": f"127.0.0.1:{port}",
                        "QUIVER_KAFKA__SPOOL_DIR": tempfile.mkdtemp(),
                        "QUIVER_KAFKA__PRODUCER__message.timeout.ms": "1000",
                        "QUIVER_KAFKA__RETRY_INTERVAL_MS": "200"})
    progress(f"broker away: serving {SPOOL_N} requests into the spool")
    out = os.path.join(tempfile.mkdtemp(), "spool.json")
    rate = 5000
    subprocess.run([BENCH, "run", "--url", gw.url, "--model", "mlp", "--rate", str(rate),
                    "--duration", str(SPOOL_N / rate), "--label", "spool", "--out", out],
                   check=True, stdout=subprocess.DEVNULL)
    until = time.time() + 30
    while gw.metric("quiver_log_records_total", 'stream="predictions"', 'outcome="spooled"') < SPOOL_N * 0.99:
        if time.time() > until:
            break
        time.sleep(0.1)
    spooled = gw.metric("quiver_log_records_total", 'stream="predictions"', 'outcome="spooled"')
    spool_bytes = gw.metric("quiver_log_spool_bytes", 'stream="predictions"')
    progress(f"{spooled:.0f} records ({spool_bytes / 1e6:.1f} MB) spooled; starting the broker")
    broker = Broker(port)
    started = time.time()
    while gw.metric("quiver_log_spooling") != 0.0 and time.time() - started < 300:
        time.sleep(0.05)
    took = time.time() - started
    replayed = gw.metric("quiver_log_records_total", 'stream="predictions"', 'outcome="replayed"')
    gw.stop()
    broker.stop()
    results["spool"] = {"spooled": spooled, "spool_mb": spool_bytes / 1e6, "replayed": replayed,
                        "seconds": took, "records_per_s": replayed / took if took else None}


def main():
    results = {"machine": os.uname().nodename, "cores": os.cpu_count()}
    throughput(results)
    ingress(results)
    spool_replay(results)
    out_dir = os.path.join(ROOT, "bench-results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "kafka.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("| prediction log | req/s (closed loop) | ratio to off | records logged | dropped |")
    print("|---|---|---|---|---|")
    for r in results["throughput"]:
        print(f"| {r['mode']} | {r['rps']:,.0f} | {r['ratio_to_off']:.2f} | {r['records']:,.0f} | {r['dropped']:.0f} |")
    i = results["ingress"]
    print(f"\nKafka ingress: {i['answered']:,} of {i['requests']:,} answered in {i['seconds_from_ready']:.1f} s "
          f"after ready = {i['records_per_s']:,.0f} records/s end to end")
    s = results["spool"]
    print(f"Spool replay: {s['replayed']:,.0f} records ({s['spool_mb']:.1f} MB) in {s['seconds']:.1f} s "
          f"= {s['records_per_s']:,.0f} records/s")


if __name__ == "__main__":
    main()
