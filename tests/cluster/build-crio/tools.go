//go:build tools

// Package tools pins the command tests/cluster/lib.sh builds for node-d (CRI-O), so
// `go mod tidy` keeps it. crictl has a module of its own (crictl/), so that neither
// changes the other's dependency versions.
package tools

import (
	_ "github.com/cri-o/cri-o/cmd/crio"
)
