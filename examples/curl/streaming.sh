#!/usr/bin/env bash
# A streamed completion: server-sent events printed as they arrive (-N), ending with data: [DONE].
#   ROUTER_URL=http://localhost:8082 ./streaming.sh
set -euo pipefail
ROUTER_URL="${ROUTER_URL:-http://localhost:8082}"
auth=()
[ -n "${ROUTER_API_KEY:-}" ] && auth=(-H "Authorization: Bearer ${ROUTER_API_KEY}")

curl -sS -N --fail-with-body ${auth[@]+"${auth[@]}"} "${ROUTER_URL}/v1/chat/completions" \
  -H "Content-Type: application/json" \
  -d '{"model": "any-model", "messages": [{"role": "user", "content": "Write a short poem"}], "stream": true}'
