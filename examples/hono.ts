/**
 * A Hono app with Parley mounted at `/chat`. Hono hands the raw request to
 * Parley, which upgrades WebSockets itself; `c.env` is what `Deno.serve`
 * passes as its second argument (the client's address). Run it with
 * `deno run --allow-net --allow-read=. --allow-env=PORT,HOSTNAME examples/hono.ts`
 * and open http://localhost:8000/chat/.
 *
 * @module
 */

// deno-lint-ignore no-import-prefix -- not in the import map, so `deno task start` never installs it
import { Hono } from "npm:hono@4.13.19";
import { createParley, type Parley } from "../mod.ts";

/** The Hono app and the chat inside it. */
export interface HonoApp {
  /** The app; pass `app.fetch` to `Deno.serve`. */
  app: Hono<{ Bindings: Deno.ServeHandlerInfo }>;
  /** The chat, to close on shutdown. */
  parley: Parley;
}

/** Builds the app. */
export async function createHonoApp(): Promise<HonoApp> {
  const parley = await createParley({ basePath: "/chat", logLevel: "warn" });
  const app = new Hono<{ Bindings: Deno.ServeHandlerInfo }>();
  app.get("/", (c) => c.text("my app"));
  app.get("/health", (c) => c.json({ ok: true, chatConnections: parley.hub.connectionCount }));
  app.all("/chat", (c) => parley.fetch(c.req.raw, c.env));
  app.all("/chat/*", (c) => parley.fetch(c.req.raw, c.env));
  return { app, parley };
}

if (import.meta.main) {
  const { app, parley } = await createHonoApp();
  const server = Deno.serve({
    port: Number(Deno.env.get("PORT") ?? 8000),
    hostname: Deno.env.get("HOSTNAME") ?? "0.0.0.0",
    onListen: ({ hostname, port }) => console.log(`Listening on http://${hostname}:${port}/`),
  }, app.fetch);
  const stop = async () => {
    await parley.close(); // sockets close with 1001: clients resume elsewhere
    await server.shutdown();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
