// Command etcd is the etcd server, built from the go.etcd.io/etcd/server/v3 module that
// Kubernetes itself depends on, so the test cluster needs no prebuilt etcd download.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
