#!/usr/bin/env bash
# Embeddings from the models configured with "type": "embedding" (the router picks one).
#   ROUTER_URL=http://localhost:8082 ./embeddings.sh   (ROUTER_API_KEY too, if the router wants one)
set -euo pipefail
ROUTER_URL="${ROUTER_URL:-http://localhost:8082}"
auth=()  # ${auth[@]+...} below: an empty array is "unbound" to macOS bash 3.2 under set -u
[ -n "${ROUTER_API_KEY:-}" ] && auth=(-H "Authorization: Bearer ${ROUTER_API_KEY}")

curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} "${ROUTER_URL}/v1/embeddings" \
  -H "Content-Type: application/json" \
  -d '{"model": "any-model", "input": ["first text", "second text"]}'
echo
