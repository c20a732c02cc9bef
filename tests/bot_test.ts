/**
 * `examples/bot.ts` against a real Parley (the library, served on a free
 * port): it answers `!help` and `!who` in its room, through the SDK without
 * an API key and through the server API with one, and ignores other text.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type ChatMessage, ParleyClient } from "../client/mod.ts";
import { startBot } from "../examples/bot.ts";
import { createParley } from "../mod.ts";
import { waitFor } from "./helpers.ts";

const API_KEY = "bot-test-api-key-0123456789";

async function withChat(apiKey: string | undefined, body: (url: string) => Promise<void>) {
  const parley = await createParley({ logLevel: "silent", apiKey });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, parley.fetch);
  try {
    await body(`ws://127.0.0.1:${server.addr.port}`);
  } finally {
    await parley.close();
    await server.shutdown();
  }
}

for (const apiKey of [undefined, API_KEY]) {
  const how = apiKey === undefined ? "through the SDK" : "through the server API";
  Deno.test(`the example bot answers !help and !who ${how}, and nothing else`, async () => {
    await withChat(apiKey, async (origin) => {
      const bot = await startBot({ url: `${origin}/team`, apiKey });
      const ann = new ParleyClient(`${origin}/team`, { nick: "ann" });
      const heard: ChatMessage[] = [];
      ann.on("message", (m: ChatMessage) => {
        if (m.from?.nick === "helpbot") heard.push(m);
      });
      try {
        await ann.connect();
        await ann.send("hello there").delivered;
        await ann.send("!help").delivered;
        await waitFor(() => heard.length === 1, 5000, "the answer to !help");
        assert.match(heard[0].text!, /^commands: !help/);
        // Presence comes by ticks of 100 ms: the bot knows ann once it came.
        await waitFor(
          () => [...bot.client.members.values()].some((m) => m.nick === "ann"),
          5000,
          "the bot sees ann",
        );
        await ann.send("!who").delivered;
        await waitFor(() => heard.length === 2, 5000, "the answer to !who");
        assert.equal(heard[1].text, "here: ann, helpbot");
        assert.equal(bot.answered, 2, "plain text got no answer");
        if (apiKey !== undefined) assert.equal(heard[0].from?.bot, true, "posted as a bot");
      } finally {
        await ann.close();
        await bot.close();
      }
    });
  });
}
