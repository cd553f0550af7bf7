#!/usr/bin/env bash
# End to end on a kind cluster, where Docker and kind exist (they do not on
# this project's development and CI machines; there the same scenarios run
# against the local control plane: docs/e2e.md).
#
#   e2e/kind/run.sh            # create, build, install, test, tear down
#   RUNNEL_KIND_KEEP=1 e2e/kind/run.sh   # keep the cluster afterwards
#
# Steps: (0) check the chart (installs helm/kubectl if missing), (1) create a
# kind cluster, (2) build the operator and runtime images and load them into
# it, (3) helm install the operator, (4) deploy the dev stack (Kafka, S3) and
# wait for it, (5) run the scenarios against the cluster:
#   RUNNEL_E2E_KUBECONFIG=<kubeconfig> RUNNEL_E2E_NAMESPACE=<ns> \
#     cargo test -p runnel-e2e --test scenarios
# and (6) tear the cluster down (on failure, after printing diagnostics).
#
# Environment: RUNNEL_KIND_CLUSTER (default runnel-e2e), RUNNEL_E2E_NAMESPACE
# (default runnel-e2e), RUNNEL_KIND_NODE_IMAGE (default: kind's),
# RUNNEL_KIND_KEEP=1, RUNNEL_IMAGE_TAG (default dev).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${RUNNEL_KIND_CLUSTER:-runnel-e2e}
NAMESPACE=${RUNNEL_E2E_NAMESPACE:-runnel-e2e}
TAG=${RUNNEL_IMAGE_TAG:-dev}
KEEP=${RUNNEL_KIND_KEEP:-0}
OPERATOR_NAMESPACE=runnel-system
OPERATOR_IMAGE=runnel-operator:$TAG
RUNTIME_IMAGE=runnel:$TAG
STATE_DIR=${RUNNEL_KIND_STATE_DIR:-$PWD/target/kind}
KUBECONFIG_FILE=$STATE_DIR/$CLUSTER.kubeconfig

step() { echo; echo "== kind e2e: $*"; }
die() { echo "kind e2e: FAILED: $*" >&2; exit 1; }

for tool in docker kind cargo; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (this script needs Docker, kind and a Rust toolchain)"
done
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"

# (0) The chart and manifests are valid; this also installs helm and kubectl
# into ~/.local/bin when they are missing.
mkdir -p "$STATE_DIR"
step "checking the chart and manifests (.ci/chart-check)"
.ci/chart-check >"$STATE_DIR/chart-check.log" 2>&1 || {
    cat "$STATE_DIR/chart-check.log" >&2; die ".ci/chart-check"; }
export PATH="${RUNNEL_TOOLS_DIR:-$HOME/.local/bin}:$PATH"

kc() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

created=false
diagnostics() {
    echo "---- diagnostics ----" >&2
    kc get nodes -o wide >&2 || true
    kc get all,streamjobs,events -A >&2 || true
    kc -n "$OPERATOR_NAMESPACE" logs deploy/runnel --all-containers --tail=200 >&2 || true
    kc -n "$NAMESPACE" describe streamjobs >&2 || true
    kc -n runnel-dev describe pods >&2 || true
}
teardown() {
    local rc=$?
    if [ "$rc" -ne 0 ] && $created; then diagnostics; fi
    if $created && [ "$KEEP" != 1 ]; then
        step "deleting the kind cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" || true
    elif $created; then
        echo "kept the cluster: KUBECONFIG=$KUBECONFIG_FILE (delete: kind delete cluster --name $CLUSTER)"
    fi
    exit "$rc"
}
trap teardown EXIT

# (1) The cluster.
step "creating the kind cluster $CLUSTER"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    die "a kind cluster named $CLUSTER exists already; delete it (kind delete cluster --name $CLUSTER) or set RUNNEL_KIND_CLUSTER"
fi
image_args=()
[ -n "${RUNNEL_KIND_NODE_IMAGE:-}" ] && image_args=(--image "$RUNNEL_KIND_NODE_IMAGE")
created=true
kind create cluster --name "$CLUSTER" --config e2e/kind/kind-config.yaml \
    --kubeconfig "$KUBECONFIG_FILE" --wait 180s "${image_args[@]}"
# The scenarios' file sinks write to this hostPath of the node (mounted by
# their podTemplate), writable for the runtime's non-root user; the tests read
# it back with docker exec to check exactly-once output.
NODE=$CLUSTER-control-plane
docker exec "$NODE" mkdir -p -m 1777 /tmp/runnel-e2e

# (2) The images, built with BuildKit (cargo cache mounts) and loaded into
# the node (no registry involved: pull policy IfNotPresent/Never finds them).
step "building $OPERATOR_IMAGE and $RUNTIME_IMAGE"
DOCKER_BUILDKIT=1 docker build -f docker/operator.Dockerfile -t "$OPERATOR_IMAGE" .
DOCKER_BUILDKIT=1 docker build -f docker/runtime.Dockerfile -t "$RUNTIME_IMAGE" .
step "loading the images into $CLUSTER"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$RUNTIME_IMAGE"

# (3) The operator. Runtime defaults point every StreamJob at the dev stack.
step "helm install runnel (operator) into $OPERATOR_NAMESPACE"
helm install runnel charts/runnel-operator \
    --kubeconfig "$KUBECONFIG_FILE" \
    --namespace "$OPERATOR_NAMESPACE" --create-namespace \
    --set fullnameOverride=runnel \
    --set image.repository=runnel-operator --set image.tag="$TAG" --set image.pullPolicy=Never \
    --set runtime.image="$RUNTIME_IMAGE" \
    --set runtime.s3.endpoint=http://s3.runnel-dev.svc.cluster.local:5000 \
    --set runtime.s3.region=us-east-1 \
    --set runtime.s3.pathStyle=true \
    --set runtime.s3.credentialsSecret=runnel-s3 \
    --set logFormat=text \
    --wait --timeout 5m
kc -n "$OPERATOR_NAMESPACE" rollout status deploy/runnel --timeout=180s

# (4) The dev stack, and the Secret the StreamJobs name, in the scenarios'
# namespace and in default (for manifests/*.yaml).
step "deploying the dev stack (manifests/dev-stack/)"
kc apply -f manifests/dev-stack/
kc create namespace "$NAMESPACE" --dry-run=client -o yaml | kc apply -f -
for ns in "$NAMESPACE" default; do
    kc apply -n "$ns" -f manifests/dev-stack/job-namespace/
done
kc -n runnel-dev rollout status deploy/kafka --timeout=300s
kc -n runnel-dev rollout status deploy/s3 --timeout=300s
kc -n runnel-dev wait --for=condition=complete job/create-bucket job/create-topics --timeout=300s

# (5) The scenarios (the runnel-e2e crate), against this cluster.
step "running the scenarios against $CLUSTER (namespace $NAMESPACE)"
echo "from the host: Kafka localhost:30092, S3 http://localhost:30500"
RUNNEL_E2E_KUBECONFIG=$KUBECONFIG_FILE RUNNEL_E2E_NAMESPACE=$NAMESPACE \
    RUNNEL_E2E_KIND_NODE=$NODE \
    cargo test -p runnel-e2e --test scenarios

step "passed"
