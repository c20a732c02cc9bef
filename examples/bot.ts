/**
 * A bot: joins a room with the client SDK and answers `!help` and `!who`.
 * With an API key it answers through the server API instead (`POST
 * /api/rooms/:room/messages`), so its posts carry the `bot` mark and it
 * needs no rate allowance of a member. Run it beside a Parley with
 *
 * ```sh
 * PARLEY_URL=ws://127.0.0.1:8000/team deno run --allow-net --allow-env examples/bot.ts
 * ```
 *
 * and `API_KEY=...` to post through the API.
 *
 * @module
 */

import { type ChatMessage, ParleyClient } from "../client/mod.ts";

/** Options of {@linkcode startBot}. */
export interface BotOptions {
  /** The room's WebSocket URL, `ws://host:port/room`. */
  url: string;
  /** The bot's nickname. */
  nick?: string;
  /** The server's API key: answers go through `POST /api/rooms/:room/messages`. */
  apiKey?: string;
}

/** A running bot. */
export interface Bot {
  client: ParleyClient;
  /** Answers sent so far. */
  readonly answered: number;
  /** Leaves the room. */
  close(): Promise<void>;
}

/** What the bot says to a command, or undefined when it is not one. */
export function answer(text: string, client: ParleyClient): string | undefined {
  const command = text.trim().split(/\s+/, 1)[0].toLowerCase();
  switch (command) {
    case "!help":
      return "commands: !help (this list), !who (who is here)";
    case "!who": {
      const nicks = [...client.members.values()].map((m) => m.nick).sort();
      const more = client.memberCount - nicks.length;
      return `here: ${nicks.join(", ")}${more > 0 ? ` and ${more} more` : ""}`;
    }
    default:
      return undefined;
  }
}

/** Joins the room and answers commands until closed. */
export async function startBot(options: BotOptions): Promise<Bot> {
  const nick = options.nick ?? "helpbot";
  const client = new ParleyClient(options.url, { nick });
  const url = new URL(options.url);
  const room = decodeURIComponent(url.pathname.slice(url.pathname.lastIndexOf("/") + 1)) ||
    "lobby";
  const api = new URL(
    url.pathname.slice(0, url.pathname.lastIndexOf("/")) + `/api/rooms/${room}/messages`,
    url.href.replace(/^ws/, "http"),
  );
  let answered = 0;
  client.on("message", (message: ChatMessage) => {
    if (message.text === undefined || message.from?.id === client.me?.id) return;
    const reply = answer(message.text, client);
    if (reply === undefined) return;
    answered++;
    if (options.apiKey === undefined) {
      client.send(reply, { replyTo: message.id });
      return;
    }
    fetch(api, {
      method: "POST",
      headers: { authorization: `Bearer ${options.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ text: reply, name: nick }),
    }).then(async (res) => {
      if (!res.ok) console.error(`bot: the API answered ${res.status}: ${await res.text()}`);
      else await res.body?.cancel();
    }, (error) => console.error(`bot: the API cannot be reached: ${error}`));
  });
  client.on("failed", ({ error }) => console.error(`bot: ${error.message}`));
  await client.connect();
  return {
    client,
    get answered() {
      return answered;
    },
    close: () => client.close(),
  };
}

if (import.meta.main) {
  const url = Deno.env.get("PARLEY_URL") ?? "ws://127.0.0.1:8000/lobby";
  const bot = await startBot({ url, apiKey: Deno.env.get("API_KEY") });
  console.log(`bot: in ${url} as ${bot.client.me?.nick}`);
  Deno.addSignalListener("SIGINT", async () => {
    await bot.close();
    Deno.exit(0);
  });
}
