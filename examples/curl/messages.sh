#!/usr/bin/env bash
# The Anthropic Messages API (POST /v1/messages), answered by the router's OpenAI and Gemini models.
# Prints the message as JSON; STREAM=1 prints its server-sent events (event: ... / data: ...) instead.
#   ROUTER_URL=http://localhost:8082 ./messages.sh          (ROUTER_API_KEY too, if the router wants one)
set -euo pipefail
ROUTER_URL="${ROUTER_URL:-http://localhost:8082}"
auth=()  # ${auth[@]+...} below: an empty array is "unbound" to macOS bash 3.2 under set -u
[ -n "${ROUTER_API_KEY:-}" ] && auth=(-H "Authorization: Bearer ${ROUTER_API_KEY}")
stream=false
[ -n "${STREAM:-}" ] && stream=true

curl -sS -N --fail-with-body ${auth[@]+"${auth[@]}"} "${ROUTER_URL}/v1/messages" \
  -H "Content-Type: application/json" \
  -H "anthropic-version: 2023-06-01" \
  -d '{"model": "any-model", "max_tokens": 1024, "system": "Be brief.",
       "messages": [{"role": "user", "content": "Hello, how are you?"}], "stream": '"${stream}"'}'
echo
