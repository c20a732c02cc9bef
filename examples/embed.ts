/**
 * An app with routes of its own and Parley mounted at `/chat`, in one
 * `Deno.serve` handler. Run it with
 * `deno run --allow-net --allow-read=. --allow-env=PORT,HOSTNAME examples/embed.ts`
 * and open http://localhost:8000/chat/.
 *
 * @module
 */

import { createParley, type Parley } from "../mod.ts";

/** The app: its own routes, and the chat under `/chat`. */
export interface EmbedApp {
  /** The handler for `Deno.serve`. */
  fetch(request: Request, info?: Deno.ServeHandlerInfo): Response | Promise<Response>;
  /** The chat, to close on shutdown. */
  parley: Parley;
}

/** Builds the app. */
export async function createEmbedApp(): Promise<EmbedApp> {
  const parley = await createParley({ basePath: "/chat", logLevel: "warn" });
  return {
    parley,
    fetch(request, info) {
      const { pathname } = new URL(request.url);
      if (pathname === "/chat" || pathname.startsWith("/chat/")) {
        return parley.fetch(request, info);
      }
      switch (pathname) {
        case "/":
          return new Response("my app\n", { headers: { "content-type": "text/plain" } });
        case "/health":
          return Response.json({ ok: true, chatConnections: parley.hub.connectionCount });
        default:
          return new Response("not found\n", { status: 404 });
      }
    },
  };
}

if (import.meta.main) {
  const app = await createEmbedApp();
  const server = Deno.serve({
    port: Number(Deno.env.get("PORT") ?? 8000),
    hostname: Deno.env.get("HOSTNAME") ?? "0.0.0.0",
    onListen: ({ hostname, port }) => console.log(`Listening on http://${hostname}:${port}/`),
  }, app.fetch);
  const stop = async () => {
    await app.parley.close(); // sockets close with 1001: clients resume elsewhere
    await server.shutdown();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
