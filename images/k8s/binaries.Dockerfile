# Kubernetes for the local cluster of `make k8s-up` (docs/kubernetes.md), for machines with no
# registry and no Kubernetes installer: built from Debian bookworm's `kubernetes` source package
# (upstream 1.20.2 with its vendor/ tree) with Debian's Go. It takes 6-10 min on 2 cores, so it is
# an image of its own, built once per machine as Garage is (devstack/k8s.py): only the binaries,
# FROM scratch, which images/k8s/Dockerfile copies into the node and pause images.
# Build context: the repository root (for the extra CA certificates).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY images/ca-certificates/ /usr/local/share/ca-certificates/extra/
# deb-src lines for `apt-get source`, beside whichever form the base keeps its deb lines in.
RUN update-ca-certificates \
    && if [ -f /etc/apt/sources.list.d/debian.sources ]; then \
         sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources; \
       else sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/src.list; fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends golang-go rsync jq make gcc libc6-dev dpkg-dev xz-utils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN apt-get update && apt-get source --download-only kubernetes && rm -rf /var/lib/apt/lists/* \
    && dpkg-source --no-check -x kubernetes_*.dsc kubernetes && rm -f kubernetes_*
WORKDIR /src/kubernetes
# runc on these VMs refuses the sandbox's --oom-score-adj=-998 (a value only root's tools may set
# below the container's own): the pause container gets 0, as any other process.
RUN grep -q 'defaultSandboxOOMAdj int = -998' pkg/kubelet/dockershim/docker_sandbox.go \
    && sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' pkg/kubelet/dockershim/docker_sandbox.go
# No git tree here: the version comes from these (kubectl version shows it).
ENV KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian-bookworm \
    GOFLAGS=-mod=vendor GOCACHE=/tmp/go-cache GOPATH=/tmp/go
RUN make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet" \
    && mkdir -p /out && find _output -type f -perm -u+x \
         \( -name kube-apiserver -o -name kube-controller-manager -o -name kube-scheduler -o -name kubelet \) \
         -exec cp {} /out/ \; \
    && ls /out && rm -rf /tmp/go-cache /tmp/go _output
RUN gcc -Os -static -DVERSION=devstack -o /out/pause build/pause/linux/pause.c

FROM scratch
COPY --from=build /out/ /
