#!/bin/bash
# One Kubernetes node in one container (`make k8s-up`, devstack/k8s.py): etcd, the API server, the
# controller manager, the scheduler, the kubelet and cluster_helper.py, supervised together: if one
# exits, all stop and the container exits non-zero (Docker restarts it: --restart unless-stopped).
#
# STATE is a folder at the same path on the host and here: the kubelet hands the paths of pods'
# volumes to the host's Docker, which must find them. It keeps etcd's data and the certificates, so
# a restart or `make k8s-down`/`k8s-up` finds the cluster as it was.
set -euo pipefail
: "${STATE:?set STATE (the cluster folder, at the same path as on the host)}"
: "${PAUSE_IMAGE:?set PAUSE_IMAGE (the pod sandbox image, built beside this one)}"
NODE_NAME=${NODE_NAME:-devstack}
pki=$STATE/pki
mkdir -p "$pki" "$STATE/etcd" "$STATE/kubelet" "$STATE/logs"
chmod 700 "$STATE" "$pki" "$STATE/etcd"
# The address pods reach this node at (Docker's bridge): a new one may come with each start.
node_ip=$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
say() { echo "k8s-node: $*" >&2; }

# Certificates: a cluster CA made once (10 years), the API server's serving certificate made at
# each start (it names this start's node address), an admin client certificate (system:masters)
# for the components here and for you (the kubeconfig `make k8s-up` writes), a service-account key.
ossl() { openssl "$@" 2>/dev/null; }
if [ ! -s "$pki/ca.crt" ]; then
  say "first start: making the cluster's certificate authority"
  ossl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 3650 \
    -subj "/CN=mlflow-devstack-k8s-ca"
  ossl genrsa -out "$pki/sa.key" 2048
  ossl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
  ossl req -newkey rsa:2048 -nodes -keyout "$pki/admin.key" -out "$pki/admin.csr" \
    -subj "/O=system:masters/CN=kubernetes-admin"
  ossl x509 -req -in "$pki/admin.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -out "$pki/admin.crt" -days 3650
fi
cat >"$pki/apiserver.ext" <<EOF
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:$node_ip
extendedKeyUsage=serverAuth
EOF
ossl req -newkey rsa:2048 -nodes -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" -subj "/CN=kube-apiserver"
ossl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" -days 3650
b64() { base64 -w0 <"$1"; }
cat >"$pki/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mlflow-devstack
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: mlflow-devstack-admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: mlflow-devstack
  context: {cluster: mlflow-devstack, user: mlflow-devstack-admin}
current-context: mlflow-devstack
EOF
chmod 600 "$pki"/*.key "$pki/admin.kubeconfig"
kubeconfig=$pki/admin.kubeconfig

pids=()
start() {  # start NAME COMMAND...: its output goes to STATE/logs/NAME.log
  local name=$1
  shift
  "$@" >>"$STATE/logs/$name.log" 2>&1 &
  pids+=("$!")
  say "started $name (pid $!)"
}
stop_all() {
  trap - TERM INT
  say "stopping"
  # The kubelet first, so that it stops acting on pods; the pods' containers stay (a restart resumes them).
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait || true
}
trap 'stop_all; exit 0' TERM INT

# ready NAME URL [PKI]: wait up to 60 s for an HTTP 200 (python3: no curl in this image), while the
# component last started runs.
ready() {
  python3 - "${pids[-1]}" "$@" <<'EOF'
import ssl, sys, time, urllib.request
pid, name, url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
context = None
if url.startswith("https:"):
    pki = sys.argv[4]
    context = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    context.load_cert_chain(f"{pki}/admin.crt", f"{pki}/admin.key")
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as answer:
            if answer.status == 200:
                break
    except OSError:
        pass
    try:  # exited: gone, or a zombie its parent (this script) has not waited for yet
        with open(f"/proc/{pid}/stat") as stat:
            alive = stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        alive = False
    if not alive:
        sys.exit(f"k8s-node: {name} exited at start; see its log in STATE/logs/{name}.log")
    if time.monotonic() > deadline:
        sys.exit(f"k8s-node: {name} did not answer {url} within 60 s; see its log in STATE/logs/")
    time.sleep(0.2)
EOF
}

# etcd on this container's loopback only: the network namespace is the container's own, so nothing
# outside it reaches etcd (the host sees only the ports `make k8s-up` publishes).
start etcd etcd --name "$NODE_NAME" --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --log-level warn
ready etcd http://127.0.0.1:2379/health

start kube-apiserver kube-apiserver --etcd-servers http://127.0.0.1:2379 \
  --bind-address 0.0.0.0 --secure-port 6443 --advertise-address "$node_ip" --insecure-port 0 \
  --service-cluster-ip-range 10.96.0.0/16 --service-node-port-range 30000-32767 \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --anonymous-auth=false --authorization-mode RBAC \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
  --kubelet-preferred-address-types InternalIP \
  --allow-privileged=false --profiling=false
ready kube-apiserver https://127.0.0.1:6443/readyz "$pki"

start kube-controller-manager kube-controller-manager --kubeconfig "$kubeconfig" \
  --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
  --bind-address 127.0.0.1 --port 0 --leader-elect=false \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" --profiling=false
start kube-scheduler kube-scheduler --kubeconfig "$kubeconfig" \
  --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
  --bind-address 127.0.0.1 --port 0 --leader-elect=false --profiling=false
# The kubelet sets three kernel settings a node wants (panic on oops, reboot after a panic, memory
# overcommit) when they differ. They are the host's, not this container's: it sees them as wanted,
# on files of its own bound over /proc/sys here, and the host's kernel is left as it is.
mkdir -p "$STATE/sysctl"
for setting in kernel/panic=10 kernel/panic_on_oops=1 vm/overcommit_memory=1; do
  path=/proc/sys/${setting%=*}
  if [ "$(cat "$path")" != "${setting#*=}" ]; then
    mkdir -p "$(dirname "$STATE/sysctl/${setting%=*}")"
    echo "${setting#*=}" >"$STATE/sysctl/${setting%=*}"
    mount --bind "$STATE/sysctl/${setting%=*}" "$path"
  fi
done
# The kubelet: pods are containers of this machine's Docker (dockershim), on its default bridge (no
# network plugin, no kube-proxy: cluster_helper.py serves NodePorts). Image garbage collection is
# off: it would delete the stack's images the moment no pod uses them.
start kubelet kubelet --kubeconfig "$kubeconfig" --container-runtime docker \
  --docker-endpoint unix:///var/run/docker.sock --pod-infra-container-image "$PAUSE_IMAGE" \
  --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki" \
  --hostname-override "$NODE_NAME" --node-ip "$node_ip" --cgroup-driver cgroupfs --fail-swap-on=false \
  --read-only-port 0 --anonymous-auth=false --client-ca-file "$pki/ca.crt" --authorization-mode AlwaysAllow \
  --healthz-bind-address 127.0.0.1 --make-iptables-util-chains=false \
  --image-gc-high-threshold 100 --image-gc-low-threshold 99 \
  --eviction-hard "memory.available<100Mi,nodefs.available<1%,imagefs.available<1%" \
  --cluster-domain cluster.local --max-pods 60 --serialize-image-pulls=false
start cluster-helper python3 /usr/local/lib/cluster_helper.py --kubeconfig "$kubeconfig" --volumes "$STATE/volumes"
say "node $NODE_NAME at $node_ip: control plane ready"

# Whichever stops first stops the rest: Docker's restart policy then starts the node again.
status=0
wait -n || status=$?
say "a component exited (status $status); its log is in $STATE/logs/"
stop_all
exit $((status == 0 ? 1 : status))
