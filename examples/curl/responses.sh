#!/usr/bin/env bash
# The Responses API, translated by the router onto chat completions for whichever vendor it picks.
#   ROUTER_URL=http://localhost:8082 ./responses.sh    (ROUTER_API_KEY too, if the router wants one)
set -euo pipefail
ROUTER_URL="${ROUTER_URL:-http://localhost:8082}"
auth=()  # ${auth[@]+...} below: an empty array is "unbound" to macOS bash 3.2 under set -u
[ -n "${ROUTER_API_KEY:-}" ] && auth=(-H "Authorization: Bearer ${ROUTER_API_KEY}")

curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} "${ROUTER_URL}/v1/responses" \
  -H "Content-Type: application/json" \
  -d '{"model": "any-model", "instructions": "Be brief.", "input": "Hello, how are you?"}'
echo
