#!/usr/bin/env bash
# make deploy-check: the deployment files are valid as their tools read them. The compose file
# with Debian's docker-compose (`config`, with placeholder secrets: it refuses to run without
# them), the Kubernetes manifests with kubernetes-validate (strict: unknown fields fail), pinned
# and installed from PyPI into target/deploy-venv. No Docker engine or cluster is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing docker-compose with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
  else
    echo "docker-compose missing: install it (Debian: apt-get install docker-compose)" >&2
    exit 1
  fi
fi
venv=target/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==1.37.0"
fi

POSTGRES_PASSWORD=placeholder RAMPART_ADMIN_TOKEN=placeholder-admin-token \
  RAMPART_CURSOR_SECRET=placeholder-cursor-secret-of-32-characters \
  docker-compose -f docker/compose.yml config -q
echo "docker/compose.yml: valid"
"$venv/bin/kubernetes-validate" --strict --quiet docker/k8s/*.yaml
echo "docker/k8s: $(ls docker/k8s/*.yaml | wc -l) manifests valid"
