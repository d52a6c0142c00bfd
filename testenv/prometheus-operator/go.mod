// Wrapper module: pins the prometheus-operator release whose PodMonitor CRD
// (example/prometheus-operator-crd in the module) scripts/cluster.sh installs into the test
// control plane. Nothing is built from it.
module scalable-api-operator.invalid/testenv/prometheus-operator

go 1.25.0

require github.com/prometheus-operator/prometheus-operator v0.85.0
