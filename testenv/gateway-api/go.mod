// Wrapper module: pins the Gateway API release whose CRDs (config/crd/standard in the
// module) scripts/cluster.sh installs into the test control plane. Nothing is built from it.
module scalable-api-operator.invalid/testenv/gateway-api

go 1.25.0

require sigs.k8s.io/gateway-api v1.6.3
