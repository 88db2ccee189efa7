#!/usr/bin/env bash
# Pin a vendor with ?vendor= (default gemini), list its models, and show which vendor and model
# answered (response headers X-Vendor-Source, X-Model-Source; -D - prints them).
#   ROUTER_URL=http://localhost:8082 VENDOR=openai ./vendor.sh
set -euo pipefail
ROUTER_URL="${ROUTER_URL:-http://localhost:8082}"
VENDOR="${VENDOR:-gemini}"
auth=()
[ -n "${ROUTER_API_KEY:-}" ] && auth=(-H "Authorization: Bearer ${ROUTER_API_KEY}")

curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} "${ROUTER_URL}/v1/models?vendor=${VENDOR}"
echo
curl -sS --fail-with-body -D - ${auth[@]+"${auth[@]}"} "${ROUTER_URL}/v1/chat/completions?vendor=${VENDOR}" \
  -H "Content-Type: application/json" \
  -d '{"model": "any-model", "messages": [{"role": "user", "content": "Hello"}]}'
echo
