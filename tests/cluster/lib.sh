# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source this
# Shared by tests/cluster/{up,down,status,smoke,node-ctr,node-crictl,node-exec}: versions,
# paths, node table, helpers. Sourced, never run. Everything a node owns lives under its own
# directory so that five kubelets and their runtimes (four containerds, one of them laid out
# as k3s's, and one CRI-O) can share one host without sharing state.

set -euo pipefail
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
# Builds run from module zips, which carry no VCS data; -buildvcs=false keeps go from asking.
case " $GOFLAGS " in *" -buildvcs=false "*) ;; *) GOFLAGS="$GOFLAGS -buildvcs=false" ;; esac

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
E2E=$(realpath -m "${SIDELOAD_E2E_DIR:-$REPO_ROOT/.e2e}")  # absolute: it ends up in config files
CACHE=${SIDELOAD_CACHE:-$HOME/.cache/kubectl-sideload-e2e}

# --- versions ---------------------------------------------------------------------------
# Kubernetes 1.34 is the last minor whose kubelet runs on cgroup v1 without opting out
# (failCgroupV1 defaults to true from 1.35); we still set failCgroupV1: false explicitly.
K8S_VERSION=v1.34.4
# containerd per node, so the plugin meets three runtime generations as in a real fleet:
#   node-a: Debian 12's containerd 1.6.20 (apt), node-b: newest 1.7 patch, node-c: newest 2.x.
CONTAINERD_17_VERSION=v1.7.35
CONTAINERD_2_VERSION=v2.4.2
# node-d: CRI-O, laid out like an OpenShift/RHCOS node; crictl (cri-tools) on every node, as
# kubeadm installs it. Both from their Go modules (build-crio/, build-crio/crictl/).
CRIO_VERSION=v1.34.0
CRICTL_VERSION=v1.34.0
PAUSE_IMAGE=registry.k8s.io/pause:3.10

K8S_BIN=$CACHE/k8s-$K8S_VERSION/bin
CTRD_17_BIN=$CACHE/containerd-$CONTAINERD_17_VERSION/bin
CTRD_2_BIN=$CACHE/containerd-$CONTAINERD_2_VERSION/bin
CTRD_DEB_BIN=$CACHE/containerd-debian/bin   # symlinks to Debian's binaries (one PATH layout for all)
CRIO_BIN=$CACHE/crio-$CRIO_VERSION/bin        # crio, pinns
CRICTL_BIN=$CACHE/crictl-$CRICTL_VERSION/bin  # crictl
# node-e: a k3s node. k3s stamps its kubelet "<kubernetes version>+k3s<n>", which is how the
# plugin tells a k3s node (and its paths) apart: the same kubelet source, built a second
# time with only the version stamp changed, cached on its own (the rest stays v1.34.4).
K3S_VERSION=$K8S_VERSION+k3s1
K3S_KUBELET_BIN=$CACHE/kubelet-$K3S_VERSION/bin   # kubelet

# --- logging ----------------------------------------------------------------------------
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "$(basename "$0") must run as root (it creates netns, cgroups, mounts)"; }

# cluster_lock: one up/down at a time on this host (parallel test jobs may all call up).
# The lock is held until the calling script exits.
cluster_lock() {
  [ "${SIDELOAD_E2E_LOCKED:-}" = 1 ] && return 0   # `up` calling `down` already holds it
  export SIDELOAD_E2E_LOCKED=1
  mkdir -p /run/lock
  exec 8>/run/lock/sideload-e2e.lock
  flock 8
}

# --- building ---------------------------------------------------------------------------

# with_lock FILE CMD...: run CMD holding an exclusive lock, so two `up`s never build the same
# thing at once (the second waits and then finds the result cached).
with_lock() {
  local lock=$1; shift
  mkdir -p "$(dirname "$lock")"
  ( flock 9; "$@" ) 9>"$lock"
}

# k8s_ldflags: the version stamps hack/lib/version.sh sets in a release build, so every
# component (and the API server's /version) reports v1.34.4 instead of v0.0.0-master.
# buildDate: the tag's commit time as the Go module proxy records it.
k8s_ldflags() {
  local date pkg flags="-s -w"
  date=$(go list -m -json "k8s.io/kubernetes@$K8S_VERSION" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Time"])' 2>/dev/null) || date=1970-01-01T00:00:00Z
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date -X $pkg.gitCommit="
  done
  echo "$flags"
}

# A cache dir holds binaries plus .recipe, a hash of how they were built; a different
# recipe (new go.mod, new flags) rebuilds them, the same one never does.
recipe_ok() { [ -f "$1/.recipe" ] && [ "$(cat "$1/.recipe")" = "$2" ]; }

k8s_recipe() {
  { cat "$CLUSTER_DIR/build/go.mod" "$CLUSTER_DIR/build/go.sum" "$CLUSTER_DIR/build/cmd/etcd/main.go"
    declare -f build_k8s k8s_ldflags; } | sha256sum | cut -c1-16
}

build_k8s() {
  local recipe; recipe=$(k8s_recipe)
  recipe_ok "$K8S_BIN" "$recipe" && return 0
  need_go
  log "building Kubernetes $K8S_VERSION + etcd from Go modules (cold: ~15-25 min on 2 cores; cached in $K8S_BIN)"
  local tmp=$K8S_BIN.tmp ld
  ld=$(cd "$CLUSTER_DIR/build" && k8s_ldflags)
  rm -rf "$tmp"; mkdir -p "$tmp"
  # -trimpath/-s -w: smaller binaries; the module in build/ pins every staging module.
  ( cd "$CLUSTER_DIR/build" &&
    go build -trimpath -ldflags "$ld" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kubectl ./cmd/etcd ) >&2 || die "Kubernetes build failed"
  echo "$recipe" >"$tmp/.recipe"
  rm -rf "$K8S_BIN"; mv "$tmp" "$K8S_BIN"
}

# build_containerd MODULE VERSION OUTDIR REPORTED_VERSION
# Builds containerd, ctr and the runc v2 shim from the module zip the Go proxy serves.
# CGO off + no_btrfs/no_devmapper/no_zfs/no_aufs: static binaries without C dependencies
# (the same tags upstream's static release uses to drop those snapshotters).
build_containerd() {
  local mod=$1 ver=$2 out=$3 reported=$4
  local tags="urfave_cli_no_docs no_btrfs no_devmapper no_zfs no_aufs osusergo netgo"
  local ld="-s -w -X $mod/version.Version=$reported -X $mod/version.Revision=gomod-$ver -X $mod/version.Package=$mod"
  local recipe; recipe=$(echo "$mod@$ver $tags $ld" | sha256sum | cut -c1-16)
  recipe_ok "$out" "$recipe" && return 0
  need_go
  log "building containerd $ver from Go module $mod (cached in $out)"
  local dir
  dir=$(go mod download -json "$mod@$ver" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') ||
    die "cannot download Go module $mod@$ver"
  local tmp=$out.tmp
  rm -rf "$tmp"; mkdir -p "$tmp"
  # Revision: a module zip carries no commit id; say where the source came from instead.
  ( cd "$dir" &&
    CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "$ld" -o "$tmp/" \
      ./cmd/containerd ./cmd/ctr ./cmd/containerd-shim-runc-v2 ) >&2 ||
    die "containerd $ver build failed"
  echo "$recipe" >"$tmp/.recipe"
  rm -rf "$out"; mv "$tmp" "$out"
}

# Upstream's release binaries report "vX.Y.Z" (git describe), distro/containerd.io builds
# report "X.Y.Z"; we use one of each so the plugin's version parsing meets both forms:
# node-b reports 1.7.35, node-c v2.4.2 (node-a, Debian, reports 1.6.20~ds1).
build_containerd_17() { build_containerd github.com/containerd/containerd "$CONTAINERD_17_VERSION" "$CTRD_17_BIN" "${CONTAINERD_17_VERSION#v}"; }
build_containerd_2() { build_containerd github.com/containerd/containerd/v2 "$CONTAINERD_2_VERSION" "$CTRD_2_BIN" "$CONTAINERD_2_VERSION"; }

# CRI-O from our module in build-crio/, which requires github.com/cri-o/cri-o at exactly
# CRIO_VERSION and nothing else, so every dependency is at the version CRI-O's own go.mod
# names. Tags: the signature code in pure Go (containers_image_openpgp, no gpgme), seccomp
# (cgo, libseccomp-dev), no btrfs/devicemapper graph drivers (no C headers for them).
# buildDate: the module's time as the Go module proxy records it (like k8s_ldflags).
CRIO_TAGS="containers_image_openpgp seccomp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper"
# Modules of CRI-O 1.34.0's graph the checksum database does not know: their hashes come
# from our go.sum (checked equal to CRI-O's own go.sum when it was made), so the build asks
# the checksum database nothing about them.
CRIO_NOSUMDB=github.com/cri-o/cri-o,github.com/CloudNativeAI/model-spec,github.com/containerd/nri

crio_recipe() {
  { cat "$CLUSTER_DIR/build-crio/go.mod" "$CLUSTER_DIR/build-crio/go.sum" "$CLUSTER_DIR/build-crio/tools.go"
    echo "$CRIO_TAGS"; declare -f build_crio; } | sha256sum | cut -c1-16
}

build_crio() {
  local recipe; recipe=$(crio_recipe)
  recipe_ok "$CRIO_BIN" "$recipe" && return 0
  need_go
  log "building CRI-O $CRIO_VERSION (crio, pinns) from its Go module (cold: ~3 min on 2 cores; cached in $CRIO_BIN)"
  local tmp=$CRIO_BIN.tmp mod=github.com/cri-o/cri-o
  rm -rf "$tmp"; mkdir -p "$tmp"
  ( cd "$CLUSTER_DIR/build-crio" && export GONOSUMDB="$CRIO_NOSUMDB${GONOSUMDB:+,$GONOSUMDB}" &&
    go mod download "$mod" &&
    dir=$(go list -m -f '{{.Dir}}' "$mod") &&
    date=$(go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "$mod") &&
    go build -trimpath -tags "$CRIO_TAGS" -ldflags "-s -w -X $mod/internal/version.buildDate=$date" \
      -o "$tmp/" "$mod/cmd/crio" &&
    # pinns: the small C helper in the same module (pins a pod's namespaces), built static
    # as upstream's pinns/Makefile does.
    gcc -std=c99 -O2 -Wall -Werror -Wextra -static -o "$tmp/pinns" "$dir"/pinns/src/*.c &&
    strip -s "$tmp/pinns" ) >&2 || die "CRI-O build failed"
  echo "$recipe" >"$tmp/.recipe"
  rm -rf "$CRIO_BIN"; mv "$tmp" "$CRIO_BIN"
}

# crictl from a module of its own (build-crio/crictl/), so that cri-tools' newer
# dependencies (k8s.io 0.34 libraries) do not raise CRI-O's. Static, no cgo. Reports
# "crictl version v1.34.0", as the release binaries kubeadm nodes carry.
crictl_recipe() {
  { cat "$CLUSTER_DIR/build-crio/crictl/go.mod" "$CLUSTER_DIR/build-crio/crictl/go.sum" \
      "$CLUSTER_DIR/build-crio/crictl/tools.go"
    declare -f build_crictl; } | sha256sum | cut -c1-16
}

build_crictl() {
  local recipe; recipe=$(crictl_recipe)
  recipe_ok "$CRICTL_BIN" "$recipe" && return 0
  need_go
  log "building crictl $CRICTL_VERSION from Go module sigs.k8s.io/cri-tools (cached in $CRICTL_BIN)"
  local tmp=$CRICTL_BIN.tmp
  rm -rf "$tmp"; mkdir -p "$tmp"
  ( cd "$CLUSTER_DIR/build-crio/crictl" &&
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
      -o "$tmp/" sigs.k8s.io/cri-tools/cmd/crictl ) >&2 || die "crictl build failed"
  echo "$recipe" >"$tmp/.recipe"
  rm -rf "$CRICTL_BIN"; mv "$tmp" "$CRICTL_BIN"
}

# The k3s kubelet: k8s_ldflags with gitVersion v1.34.4+k3s1 (gitMajor/gitMinor, the build
# date and the tree state stay). Its own recipe and cache dir, so build_k8s's never change.
k3s_kubelet_ldflags() {
  local flags; flags="$(k8s_ldflags) "
  flags=${flags//gitVersion=$K8S_VERSION /gitVersion=$K3S_VERSION }
  echo "${flags% }"
}

k3s_kubelet_recipe() {
  { cat "$CLUSTER_DIR/build/go.mod" "$CLUSTER_DIR/build/go.sum"
    declare -f build_k3s_kubelet k3s_kubelet_ldflags k8s_ldflags; } | sha256sum | cut -c1-16
}

build_k3s_kubelet() {
  local recipe; recipe=$(k3s_kubelet_recipe)
  recipe_ok "$K3S_KUBELET_BIN" "$recipe" && return 0
  need_go
  log "building kubelet $K3S_VERSION from the same Go module (after the v1.34.4 build only a link: seconds; cached in $K3S_KUBELET_BIN)"
  local tmp=$K3S_KUBELET_BIN.tmp ld
  ld=$(cd "$CLUSTER_DIR/build" && k3s_kubelet_ldflags)
  case $ld in *"gitVersion=$K3S_VERSION "*) ;; *) die "kubelet ldflags lack gitVersion=$K3S_VERSION: $ld" ;; esac
  rm -rf "$tmp"; mkdir -p "$tmp"
  ( cd "$CLUSTER_DIR/build" &&
    go build -trimpath -ldflags "$ld" -o "$tmp/" k8s.io/kubernetes/cmd/kubelet ) >&2 ||
    die "kubelet $K3S_VERSION build failed"
  "$tmp/kubelet" --version | grep -qxF "Kubernetes $K3S_VERSION" ||
    die "the kubelet built for node-e reports '$("$tmp/kubelet" --version)', want Kubernetes $K3S_VERSION"
  echo "$recipe" >"$tmp/.recipe"
  rm -rf "$K3S_KUBELET_BIN"; mv "$tmp" "$K3S_KUBELET_BIN"
}

build_all() {
  with_lock "$CACHE/.build-k8s-$K8S_VERSION.lock" build_k8s
  with_lock "$CACHE/.build-kubelet-$K3S_VERSION.lock" build_k3s_kubelet
  with_lock "$CACHE/.build-containerd-$CONTAINERD_17_VERSION.lock" build_containerd_17
  with_lock "$CACHE/.build-containerd-$CONTAINERD_2_VERSION.lock" build_containerd_2
  with_lock "$CACHE/.build-crio-$CRIO_VERSION.lock" build_crio
  with_lock "$CACHE/.build-crictl-$CRICTL_VERSION.lock" build_crictl
  # Debian's containerd gets the same bin-dir layout as the built ones, so every node's
  # containerd finds its own shim first on PATH and node-ctr can pick a node's ctr alike.
  mkdir -p "$CTRD_DEB_BIN"
  local b
  for b in containerd ctr containerd-shim-runc-v2; do
    ln -sfn "/usr/bin/$b" "$CTRD_DEB_BIN/$b"
  done
}

# --- host packages ------------------------------------------------------------------------

# ensure_packages: install what the harness runs but does not build (fresh machine, CI as
# root without a terminal). Each entry is "command package".
ensure_packages() {
  local missing=() pair cmd pkg
  # node-d (CRI-O) runs Debian's conmon and writes its images with Debian's skopeo/podman.
  # dockerd and podman are also the local engines of the docker:// and podman:// tests
  # (tests/e2e_sources.rs starts its own dockerd; the package's service is never started).
  for pair in "containerd containerd" "runc runc" "ip iproute2" "nsenter util-linux" \
              "openssl openssl" "musl-gcc musl-tools" "iptables iptables" "conntrack conntrack" \
              "python3 python3" "flock util-linux" "conmon conmon" "skopeo skopeo" "podman podman" \
              "dockerd docker.io"; do
    cmd=${pair%% *}; pkg=${pair#* }
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] ||
    missing+=(containernetworking-plugins)
  # Only to build CRI-O: libseccomp's headers (cgo, through pkg-config) and a static libc
  # for pinns.
  if ! recipe_ok "$CRIO_BIN" "$(crio_recipe)"; then
    [ -f /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f "$(gcc -print-file-name=libc.a 2>/dev/null)" ] ||
      missing+=(libc6-dev)
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing missing packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
    die "apt-get install ${missing[*]} failed"
  # Debian's containerd package starts a system containerd; the harness never uses it and
  # leaves it alone if it was already there before.
}

# --- cluster layout -------------------------------------------------------------------------

NODES=(node-a node-b node-c node-d node-e)
BRIDGE=sl-e2e0                 # in the root netns; the nodes' veths hang off it
BRIDGE_IP=10.213.0.1           # the API server, etcd, controller-manager, scheduler bind here
NODE_NET_PREFIX=24
API_PORT=16443                 # not 6443: a real control plane on the same host may hold it
# A second API server on the same etcd with the exec stream translator off: it proxies exec
# websockets untouched to the runtime's streaming server, which speaks v4.channel.k8s.io at
# most (no stdin close), the protocol older clusters use. The plugin must work on both.
API_V4_PORT=16444
SERVICE_CIDR=10.215.0.0/24
SERVICE_IP=10.215.0.1
RUN=/run/sideload-e2e          # short paths: unix sockets must stay under 108 bytes

node_idx() { case $1 in node-a) echo 1 ;; node-b) echo 2 ;; node-c) echo 3 ;; node-d) echo 4 ;; node-e) echo 5 ;; *) die "unknown node '$1' (have: ${NODES[*]})" ;; esac; }
node_ip() { echo "10.213.0.1$(node_idx "$1")"; }
node_pod_cidr() { echo "10.214.$(node_idx "$1").0/24"; }
node_pod_gw() { echo "10.214.$(node_idx "$1").1"; }
node_netns() { echo "sl-$1"; }
node_veth() { echo "sl-veth-${1#node-}"; }
node_cgroup() { echo "sl-$1"; }           # kubelet cgroupRoot, one per node
node_dir() { echo "$E2E/nodes/$1"; }
node_run() { echo "$RUN/$1"; }
node_mntns() { echo "$RUN/mnt/$1"; }                # the node's mount namespace (nsfs bind mount)
# pool=red: node-d joins no pool of the containerd nodes, so a selector for blue or green
# still means kubeadm-like containerd nodes only; node-e (k3s) has a pool of its own too.
node_labels() { case $1 in node-c) echo "pool=green" ;; node-d) echo "pool=red" ;; node-e) echo "pool=k3s" ;; *) echo "pool=blue" ;; esac; }
node_runtime() { case $1 in node-d) echo crio ;; *) echo containerd ;; esac; }
# How a node is laid out: kubeadm's (node-a..c), RHCOS's (node-d, CRI-O) or k3s's (node-e).
node_flavour() { case $1 in node-d) echo rhcos ;; node-e) echo k3s ;; *) echo kubeadm ;; esac; }
node_ctrd_bin() {
  case $1 in node-a) echo "$CTRD_DEB_BIN" ;; node-b) echo "$CTRD_17_BIN" ;; node-c | node-e) echo "$CTRD_2_BIN" ;; esac
}
# The kubelet binary: node-e's is stamped v1.34.4+k3s1, every other node runs the release one.
node_kubelet_bin() { case $1 in node-e) echo "$K3S_KUBELET_BIN/kubelet" ;; *) echo "$K8S_BIN/kubelet" ;; esac; }

# --- k3s (node-e) ---------------------------------------------------------------------------
# Paths as the node sees them, as k3s lays them out: the binaries it unpacks under
# data/<hash>/bin with data/current a symlink to that dir, containerd's config, root and
# state, and its socket. On the host all of /var/lib/rancher is the node's rancher/ dir,
# /run/k3s is $RUN/node-e/k3s and /run/containerd (where containerd's shims keep their
# sockets, s/, whatever containerd's state dir: so on k3s too) is $RUN/node-e/containerd.
K3S_DATA=/var/lib/rancher/k3s/data
K3S_BIN_DIR=$K3S_DATA/current/bin
K3S_AGENT=/var/lib/rancher/k3s/agent
K3S_CTRD_CONFIG=$K3S_AGENT/etc/containerd/config.toml
K3S_CTRD_ROOT=$K3S_AGENT/containerd
K3S_CTRD_STATE=/run/k3s/containerd
K3S_CTRD_SOCK=$K3S_CTRD_STATE/containerd.sock
# The host's directory behind a node-view path under /var/lib/rancher on node-e.
k3s_host_path() { echo "$(node_dir "$1")/rancher${2#/var/lib/rancher}"; }

# ctr and crictl as an admin on the node runs them (node view): kubeadm puts them on PATH,
# k3s only under its data dir.
node_ctr_path() { case $(node_flavour "$1") in k3s) echo "$K3S_BIN_DIR/ctr" ;; *) echo /usr/bin/ctr ;; esac; }
node_crictl_path() { case $(node_flavour "$1") in k3s) echo "$K3S_BIN_DIR/crictl" ;; *) echo crictl ;; esac; }
# containerd's root dir on the host (its CRI keeps a directory per sandbox in it).
node_ctrd_root() {
  case $(node_flavour "$1") in k3s) k3s_host_path "$1" "$K3S_CTRD_ROOT" ;; *) echo "$(node_dir "$1")/containerd/root" ;; esac
}
# The runtime's socket on the host, and the CRI endpoint as the node (its kubelet, a pod
# with hostPath /) sees it: kubeadm's containerd default, or CRI-O's.
node_sock() {
  case $(node_runtime "$1") in
    crio) echo "$RUN/$1/crio/crio.sock" ;;       # = /var/run/crio/crio.sock in the node's view
    *) case $(node_flavour "$1") in
         k3s) echo "$RUN/$1/k3s/containerd/containerd.sock" ;;   # = /run/k3s/containerd/containerd.sock
         *) echo "$RUN/$1/containerd.sock" ;;    # = /run/containerd/containerd.sock in the node's view
       esac ;;
  esac
}
node_endpoint() {
  case $(node_runtime "$1") in
    crio) echo unix:///var/run/crio/crio.sock ;;
    *) case $(node_flavour "$1") in
         k3s) echo "unix://$K3S_CTRD_SOCK" ;;
         *) echo unix:///run/containerd/containerd.sock ;;
       esac ;;
  esac
}
# The name a node's runtime process has in pid files, logs and tracking cgroups.
node_runtime_name() { echo "$1-$(node_runtime "$1")"; }

# node_exec NODE CMD...: CMD in the node's network and mount namespaces (the node's view of
# /usr/bin, /etc, /run; its own crictl, CRI-O config and storage.conf).
node_exec() {
  local n=$1; shift
  nsenter "--net=/run/netns/$(node_netns "$n")" "--mount=$(node_mntns "$n")" -- "$@"
}

# node_crictl NODE ARGS...: the node's own crictl (/usr/bin/crictl in its namespace; on node-e
# k3s's, under its data dir) against its CRI endpoint, as an admin on that node would run it.
node_crictl() { local n=$1; shift; node_exec "$n" "$(node_crictl_path "$n")" --runtime-endpoint "$(node_endpoint "$n")" "$@"; }

# node_ctr NODE ARGS...: the node's own ctr against its containerd. node-a..c: that version's
# ctr from the build cache with the socket's host path; node-e: k3s's ctr and socket, in the
# node's namespaces (those paths exist only in its mount namespace).
node_ctr() {
  local n=$1; shift
  case $(node_flavour "$n") in
    k3s) node_exec "$n" "$(node_ctr_path "$n")" --address "$K3S_CTRD_SOCK" "$@" ;;
    *) "$(node_ctrd_bin "$n")/ctr" --address "$(node_sock "$n")" "$@" ;;
  esac
}

# --- CRI-O storage (node-d) -----------------------------------------------------------------
# containers-storage under the node's own directories, named in CRI-O's crio.conf ([crio]
# root, runroot, storage_driver, storage_option), while the node's
# /etc/containers/storage.conf keeps the distribution defaults (/var/lib/containers/storage,
# /run/containers/storage): a tool must take the storage from CRI-O's configuration.
crio_root() { echo "$(node_dir "$1")/storage"; }          # [crio] root (graphroot)
crio_runroot() { echo "$(node_run "$1")/storage"; }       # [crio] runroot (tmpfs)
CRIO_STORAGE_DRIVER=overlay
CRIO_STORAGE_OPTS=overlay.mountopt=nodev                  # [crio] storage_option
# The containers-storage transport's spec for that store: [driver@root+runroot:options].
crio_storage_spec() { echo "[$CRIO_STORAGE_DRIVER@$(crio_root "$1")+$(crio_runroot "$1"):$CRIO_STORAGE_OPTS]"; }
# containerd config schema: 1.6 and 1.7 read version 2, 2.x reads version 3.
node_ctrd_schema() { case $1 in node-c | node-e) echo 3 ;; *) echo 2 ;; esac; }

# --- processes ----------------------------------------------------------------------------
# Every process `up` starts runs in a cgroup of our own (sideload-e2e/<name>), and so do its
# children (containerd's shims). `down` finds what to stop there and in the kubelets'
# cgroup roots, and never by process name: a user's own containerd or kubelet must survive.

CG_TRACK=sideload-e2e

cgroup_v2_only() { [ -f /sys/fs/cgroup/cgroup.controllers ]; }

# The hierarchy that tracks our processes: pids (v1) or the unified one (v2).
track_hier() { if cgroup_v2_only; then echo /sys/fs/cgroup; else echo /sys/fs/cgroup/pids; fi; }

# Every mounted cgroup hierarchy (v1 controllers, named ones, the unified one).
cg_hierarchies() {
  if cgroup_v2_only; then echo /sys/fs/cgroup; return; fi
  awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts
}

# cg_mkdir REL: create /REL in every hierarchy. cpuset children start empty and refuse
# tasks, so copy cpus/mems down from the parent as systemd and runc do.
cg_mkdir() {
  local rel=$1 h d p
  for h in $(cg_hierarchies); do
    d=$h
    for p in ${rel//\// }; do
      d=$d/$p
      [ -d "$d" ] && continue
      mkdir "$d"
      if [ -f "$d/cpuset.cpus" ]; then
        cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
        cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
      fi
    done
  done
  if cgroup_v2_only; then
    # kubelet needs the controllers delegated to its cgroup root.
    local ctrls c
    ctrls=$(cat /sys/fs/cgroup/cgroup.controllers)
    for c in $ctrls; do echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true; done
  fi
}

# cg_procs REL: pids in /REL and below, in any hierarchy.
cg_procs() {
  local rel=$1 h
  for h in $(cg_hierarchies); do
    [ -d "$h/$rel" ] || continue
    find "$h/$rel" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

# cg_rmdir REL: remove /REL and its children (bottom up) in every hierarchy.
cg_rmdir() {
  local rel=$1 h
  for h in $(cg_hierarchies); do
    [ -d "$h/$rel" ] || continue
    find "$h/$rel" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

pidfile() { echo "$E2E/pids/$1.pid"; }

# is_ours PID NAME: the process exists and still sits in our tracking cgroup for NAME
# (guards against a recycled pid in a stale pid file).
is_ours() {
  local pid=$1 name=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/cgroup" ] && grep -q "/$CG_TRACK/$name\$" "/proc/$pid/cgroup" &&
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null   # a zombie has stopped
}

running() {
  local f pid
  f=$(pidfile "$1")
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  is_ours "$pid" "$1"
}

# start_bg [--restart] NAME NODE|- CMD...: start CMD detached (new session, no stdin, log
# file), in tracking cgroup NAME and, unless NODE is -, in that node's network and mount
# namespaces (containerd and kubelet of a node share both, as on a real node).
# --restart: keep it running as systemd's Restart=always does for a real node's kubelet
# (a small shell restarts it 2 s after any exit; SIGTERM to that shell stops both).
start_bg() {
  local restart=0
  if [ "$1" = --restart ]; then restart=1; shift; fi
  local name=$1 node=$2; shift 2
  local cg log pf
  cg=$(track_hier)/$CG_TRACK/$name
  log=$E2E/logs/$name.log
  pf=$(pidfile "$name")
  cg_mkdir "$CG_TRACK/$name"
  mkdir -p "$E2E/logs" "$E2E/pids"
  local pre=()
  [ "$node" != - ] && pre=(nsenter "--net=/run/netns/$(node_netns "$node")" "--mount=$(node_mntns "$node")" --)
  printf '\n==== %s starting: %s\n' "$(date -Is)" "$*" >>"$log"
  # The inner shell joins the cgroup and records its pid, then execs (or supervises): the
  # pid file names the process to signal. setsid + nohup: it outlives the script that ran
  # `up`. 8>&-: the daemon must not inherit cluster_lock's descriptor, or it would hold the
  # lock for its whole life and the next up/down would wait forever.
  # shellcheck disable=SC2016  # expanded by the inner shell, not here
  local script='echo $$ >"$1/cgroup.procs" && echo $$ >"$2" && shift 2 && exec "$@"'
  if [ $restart = 1 ]; then
    # shellcheck disable=SC2016
    script='echo $$ >"$1/cgroup.procs" && echo $$ >"$2" && shift 2 || exit 1
      trap '\''[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait; exit 0'\'' TERM INT
      while :; do
        "$@" & child=$!
        wait "$child"; rc=$?
        printf "\n==== %s exited with status %s; restarting in 2 s\n" "$(date -Is)" "$rc"
        sleep 2
      done'
  fi
  setsid nohup sh -c "$script" sh "$cg" "$pf" "${pre[@]}" "$@" </dev/null >>"$log" 2>&1 8>&- &
  local i
  for i in $(seq 50); do [ -s "$pf" ] && return 0; sleep 0.1; done
  die "$name did not start; see $log"
}

# stop_tracked NAME [TIMEOUT]: SIGTERM NAME's main process (pid file, checked against its
# cgroup), give it TIMEOUT seconds, then SIGKILL whatever is left in its tracking cgroup
# (containerd's shims: their containers are gone by then, so they have nothing to do).
stop_tracked() {
  local name=$1 timeout=${2:-10} rel=$CG_TRACK/$1 pid="" i
  [ -f "$(pidfile "$name")" ] && pid=$(cat "$(pidfile "$name")")
  if is_ours "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq $((timeout * 10))); do
      is_ours "$pid" "$name" || break
      sleep 0.1
    done
  fi
  kill_cgroup "$rel" || true
  rm -f "$(pidfile "$name")"
}

# kill_cgroup REL: SIGKILL everything under /REL until it is empty. Freezing first (v1
# freezer) would stop forks racing us; repeated passes do the same for what we run here.
kill_cgroup() {
  local rel=$1 pids i
  for i in $(seq 50); do
    pids=$(cg_procs "$rel")
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  log "warning: processes left in cgroup $rel: $(cg_procs "$rel" | tr '\n' ' ')"
  return 1
}

# --- waiting ------------------------------------------------------------------------------

# wait_for DESC TIMEOUT CMD...: poll CMD until it succeeds.
wait_for() {
  local desc=$1 timeout=$2 start; shift 2
  start=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    if [ $(($(date +%s) - start)) -ge "$timeout" ]; then
      log "timed out after ${timeout}s waiting for $desc"
      return 1
    fi
    sleep 0.5
  done
}

kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$E2E/kubeconfig" "$@"; }

show_log_tails() {
  local f
  for f in "$@"; do
    [ -f "$f" ] || continue
    printf '\n----- last 30 lines of %s -----\n' "$f" >&2
    tail -n 30 "$f" >&2
  done
}

# need_go: the Kubernetes 1.34 build needs Go >= 1.24 (Debian 12's golang-go is 1.19, so
# apt cannot help); only checked when something must be built.
need_go() {
  command -v go >/dev/null 2>&1 || die "Go >= 1.24 is needed to build the cluster components (none on PATH)"
  local v
  v=$(go env GOVERSION | sed 's/^go//')
  case $v in 1.2[4-9]* | 1.[3-9][0-9]* | [2-9].*) ;; *) die "Go >= 1.24 is needed to build the cluster components (found go$v)" ;; esac
}
