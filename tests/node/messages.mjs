// The Anthropic TypeScript SDK (plain ESM JavaScript, same package) through `cachewatch proxy`.
//
//   ANTHROPIC_BASE_URL=http://127.0.0.1:8787 ANTHROPIC_API_KEY=... node tests/node/messages.mjs
//
// Sends a long system prompt marked with cache_control twice with messages.create (JSON)
// and twice with messages.stream (SSE), and prints one JSON line per call:
//   {"call": "create", "n": 1, "usage": {...}, "text": "...", "events": 0}
// The second call of each pair should read the cache the first one wrote.
// Driven by tests/test_node_client.py; exits non-zero on any error.

import Anthropic from "@anthropic-ai/sdk";

const baseURL = process.env.ANTHROPIC_BASE_URL;
const apiKey = process.env.ANTHROPIC_API_KEY;
if (!baseURL || !apiKey) {
  console.error("set ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY");
  process.exit(2);
}
const model = process.env.CACHEWATCH_MODEL ?? "claude-sonnet-4-6";
const words = Number(process.env.CACHEWATCH_SYSTEM_WORDS ?? "3000");

const client = new Anthropic({ apiKey, baseURL, maxRetries: 0, timeout: 30_000 });

// A word of up to 4 characters is 1 token for the emulator: `words` tokens per prompt.
// The JSON and the streaming pairs use different prompts, so each pair starts cold.
const system = (tag) => [
  {
    type: "text",
    text: `${tag} ` + Array(words - 1).fill("word").join(" "),
    cache_control: { type: "ephemeral" },
  },
];
const messages = [{ role: "user", content: "Summarise the policy in one line." }];

function report(call, n, message, events) {
  const text = message.content
    .filter((block) => block.type === "text")
    .map((block) => block.text)
    .join("");
  console.log(JSON.stringify({ call, n, id: message.id, usage: message.usage, text, events }));
}

for (const n of [1, 2]) {
  const message = await client.messages.create({
    model,
    max_tokens: 64,
    system: system("json"),
    messages,
  });
  report("create", n, message, 0);
}

for (const n of [1, 2]) {
  const stream = client.messages.stream({
    model,
    max_tokens: 64,
    system: system("sse"),
    messages,
  });
  let events = 0;
  stream.on("streamEvent", () => {
    events += 1;
  });
  const message = await stream.finalMessage();
  report("stream", n, message, events);
}
