"""The router from the official OpenAI Python SDK: a chat, a stream, a tool call, a pinned vendor,
the Responses API and embeddings.

    pip install openai
    ROUTER_URL=http://localhost:8082 python examples/python/chat.py

Only ``base_url`` changes; ``api_key`` is one of the router's ROUTER_API_KEYS (any text when the
router has none). The router's own headers (vendor, model, attempts) come with raw responses.
"""

import json
import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("ROUTER_URL", "http://localhost:8082") + "/v1",
    api_key=os.environ.get("ROUTER_API_KEY", "unused-unless-ROUTER_API_KEYS-is-set"),
)

# A whole answer. The answer's model is the name asked for; the one that answered is in headers.
raw = client.chat.completions.with_raw_response.create(
    model="any-model", messages=[{"role": "user", "content": "Hello, how are you?"}]
)
answer = raw.parse()
print("chat:", answer.choices[0].message.content)
print(f"  answered by {raw.headers['x-vendor-source']} / {raw.headers['x-model-source']}")

# A stream: chunks arrive as the vendor writes them.
print("stream: ", end="")
for chunk in client.chat.completions.create(
    model="any-model", messages=[{"role": "user", "content": "Write a short poem"}], stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()

# Tools: every tool call has an id, whichever vendor answered.
weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather information for a location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "City name"}},
            "required": ["location"],
        },
    },
}
answer = client.chat.completions.create(
    model="any-model",
    messages=[{"role": "user", "content": "What is the weather in Boston?"}],
    tools=[weather],
)
for call in answer.choices[0].message.tool_calls or []:
    print(f"tool call: {call.id} {call.function.name}({json.loads(call.function.arguments)})")
print("  finish_reason:", answer.choices[0].finish_reason)

# One vendor only: ?vendor= is a query parameter the SDK passes with extra_query.
raw = client.chat.completions.with_raw_response.create(
    model="any-model", messages=[{"role": "user", "content": "Hello"}], extra_query={"vendor": "gemini"}
)
print("pinned:", raw.headers["x-vendor-source"], "-", raw.parse().choices[0].message.content)

print("models:", ", ".join(model.id for model in client.models.list()))

# The Responses API, on whichever vendor is chosen (Gemini included): the router translates it.
response = client.responses.create(model="any-model", instructions="Be brief.", input="Hello from Responses")
print("responses:", response.output_text)

# Embeddings go only to models configured with "type": "embedding".
embeddings = client.embeddings.create(model="any-model", input=["first text", "second text"])
print(f"embeddings: {len(embeddings.data)} vectors of {len(embeddings.data[0].embedding)} values")
