// Wrapper module: builds the helm CLI for the chart rendering test (scripts/peers.d/31-helm.sh).
module tern.test/helmpeer

go 1.26.0

require helm.sh/helm/v4 v4.3.1
