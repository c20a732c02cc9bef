/**
 * Operations: what a supervisor sees. The server runs as a child process.
 */
import assert from "node:assert/strict";

const root = new URL("..", import.meta.url).pathname;

/** Starts `main.ts` through bash (for ulimit); resolves once it listens. */
async function spawnServer(shell: string, env: Record<string, string> = {}) {
  const child = new Deno.Command("bash", {
    args: ["-c", `${shell}; exec "$0" run -A main.ts`, Deno.execPath()],
    cwd: root,
    env: { PORT: "0", HOSTNAME: "127.0.0.1", LOG_LEVEL: "error", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!/listening on (\S+)\n/.test(out)) {
    const { value, done } = await reader.read();
    if (done) break;
    out += value;
  }
  const port = Number(new URL(/listening on (\S+)\n/.exec(out)?.[1] ?? "http://x:0").port);
  return { child, port, reader };
}

Deno.test("when descriptors run out, the process exits non-zero instead of living on deaf", async () => {
  // Deno's accept loop stops for good on EMFILE; Parley must exit so a
  // supervisor restarts it. This pins that behaviour.
  const { child, port, reader } = await spawnServer("ulimit -n 64");
  const conns: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < 100; i++) {
      try {
        conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
      } catch {
        break; // the listener is gone
      }
    }
    const status = await child.status;
    assert.equal(status.success, false);
    assert.equal(status.code, 70);
    const stderr = await new Response(child.stderr).text();
    assert.match(stderr, /"event":"listener_stopped"/);
    assert.match(stderr, /Too many open files/);
  } finally {
    for (const conn of conns) conn.close();
    await reader.cancel();
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await child.status;
  }
});
