//go:build tools

// Package tools pins kube-router, the network policy controller of the `make e2e` node
// (scripts/k8s-tools.sh builds it from this module; see README.md there).
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
