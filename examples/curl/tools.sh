#!/usr/bin/env bash
# Tools (function calling): the answer carries tool_calls, each with an id, and
# finish_reason "tool_calls", whichever vendor answered.
#   ROUTER_URL=http://localhost:8082 ./tools.sh
set -euo pipefail
ROUTER_URL="${ROUTER_URL:-http://localhost:8082}"
auth=()
[ -n "${ROUTER_API_KEY:-}" ] && auth=(-H "Authorization: Bearer ${ROUTER_API_KEY}")

curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} "${ROUTER_URL}/v1/chat/completions" \
  -H "Content-Type: application/json" \
  -d '{
    "model": "any-model",
    "messages": [{"role": "user", "content": "What is the weather in Boston?"}],
    "tools": [{
      "type": "function",
      "function": {
        "name": "get_weather",
        "description": "Get weather information for a location",
        "parameters": {
          "type": "object",
          "properties": {"location": {"type": "string", "description": "City name"}},
          "required": ["location"]
        }
      }
    }],
    "tool_choice": "auto"
  }'
echo
