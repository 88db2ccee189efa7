// The router from the official OpenAI Node SDK: a chat, a stream, a tool call, a pinned vendor,
// the Responses API and embeddings.
//
//   cd examples/node && npm install
//   ROUTER_URL=http://localhost:8082 node chat.mjs
//
// Only baseURL changes; apiKey is one of the router's ROUTER_API_KEYS (any text when it has none).
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: (process.env.ROUTER_URL ?? "http://localhost:8082") + "/v1",
  apiKey: process.env.ROUTER_API_KEY ?? "unused-unless-ROUTER_API_KEYS-is-set",
});

// A whole answer; the vendor and model that answered are in the router's response headers.
const { data: answer, response } = await client.chat.completions
  .create({ model: "any-model", messages: [{ role: "user", content: "Hello, how are you?" }] })
  .withResponse();
console.log("chat:", answer.choices[0].message.content);
console.log(`  answered by ${response.headers.get("x-vendor-source")} / ${response.headers.get("x-model-source")}`);

// A stream: chunks arrive as the vendor writes them.
const stream = await client.chat.completions.create({
  model: "any-model",
  messages: [{ role: "user", content: "Write a short poem" }],
  stream: true,
});
let poem = "";
for await (const chunk of stream) {
  poem += chunk.choices[0]?.delta?.content ?? "";
}
console.log("stream:", poem);

// Tools: every tool call has an id, whichever vendor answered.
const withTools = await client.chat.completions.create({
  model: "any-model",
  messages: [{ role: "user", content: "What is the weather in Boston?" }],
  tools: [
    {
      type: "function",
      function: {
        name: "get_weather",
        description: "Get weather information for a location",
        parameters: {
          type: "object",
          properties: { location: { type: "string", description: "City name" } },
          required: ["location"],
        },
      },
    },
  ],
});
for (const call of withTools.choices[0].message.tool_calls ?? []) {
  console.log(`tool call: ${call.id} ${call.function.name}(${call.function.arguments})`);
}
console.log("  finish_reason:", withTools.choices[0].finish_reason);

// One vendor only: ?vendor= as a query parameter.
const { data: pinned, response: pinnedResponse } = await client.chat.completions
  .create({ model: "any-model", messages: [{ role: "user", content: "Hello" }] }, { query: { vendor: "gemini" } })
  .withResponse();
console.log("pinned:", pinnedResponse.headers.get("x-vendor-source"), "-", pinned.choices[0].message.content);

const models = [];
for await (const model of client.models.list()) {
  models.push(model.id);
}
console.log("models:", models.join(", "));

// The Responses API, on whichever vendor is chosen (Gemini included): the router translates it.
const reply = await client.responses.create({
  model: "any-model",
  instructions: "Be brief.",
  input: "Hello from Responses",
});
console.log("responses:", reply.output_text);

// Embeddings go only to models configured with "type": "embedding".
const embeddings = await client.embeddings.create({ model: "any-model", input: ["first text", "second text"] });
console.log(`embeddings: ${embeddings.data.length} vectors of ${embeddings.data[0].embedding.length} values`);
