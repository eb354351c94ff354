//go:build tools

// Package tools pins crictl, which tests/cluster/lib.sh builds for every node.
package tools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
