// The router from the official Anthropic Node SDK: the Messages API (POST /v1/messages), answered by
// the router's OpenAI and Gemini models. A whole message, then a stream.
//
//   cd examples/node && npm ci
//   ROUTER_URL=http://localhost:8082 node messages.mjs
//
// Only baseURL changes (without /v1: the SDK adds it). The router's client key, one of its
// ROUTER_API_KEYS (any text when it has none), goes as a Bearer token: authToken, not apiKey.
import Anthropic from "@anthropic-ai/sdk";

const client = new Anthropic({
  baseURL: process.env.ROUTER_URL ?? "http://localhost:8082",
  authToken: process.env.ROUTER_API_KEY ?? "unused-unless-ROUTER_API_KEYS-is-set",
  apiKey: null, // never ANTHROPIC_API_KEY from the environment
});

// A whole message; the vendor and model that answered are in the router's response headers.
const { data: message, response } = await client.messages
  .create({
    model: "any-model",
    max_tokens: 1024,
    system: "Be brief.",
    messages: [{ role: "user", content: "Hello, how are you?" }],
  })
  .withResponse();
const text = message.content.filter((block) => block.type === "text").map((block) => block.text);
console.log("message:", text.join(""));
console.log(`  answered by ${response.headers.get("x-vendor-source")} / ${response.headers.get("x-model-source")}`);
console.log(`  stop_reason: ${message.stop_reason}, ${message.usage.input_tokens} tokens in, ${message.usage.output_tokens} out`);

// A stream: text as it arrives, then the message the SDK assembled from the events.
const stream = client.messages.stream({
  model: "any-model",
  max_tokens: 1024,
  messages: [{ role: "user", content: "Write a short poem" }],
});
process.stdout.write("stream: ");
stream.on("text", (delta) => process.stdout.write(delta));
const final = await stream.finalMessage();
console.log();
console.log(`  final message: ${final.stop_reason}, ${final.content.length} block(s), ${final.usage.output_tokens} tokens out`);
