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

Deno.test("when descriptors run out, the process never lives on deaf", async () => {
  // Deno's accept loop stops for good on EMFILE (seen on 2.9 and 2.5); Parley
  // then exits with 70 so a supervisor restarts it. Should a Deno version
  // keep its listener alive instead, the process must still answer once
  // descriptors are free again: this test accepts that outcome too.
  const { child, port, reader } = await spawnServer("ulimit -n 64");
  const conns: Deno.TcpConn[] = [];
  let exited: Deno.CommandStatus | undefined;
  child.status.then((status) => exited = status);
  try {
    for (let i = 0; i < 100 && !exited; i++) {
      try {
        conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
      } catch {
        break; // the listener is gone
      }
    }
    const end = Date.now() + 5000;
    while (!exited && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    for (const conn of conns.splice(0)) conn.close();
    if (!exited) {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), 3000);
      const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: abort.signal })
        .catch((error) => error as Error)
        .finally(() => clearTimeout(timer));
      if (res instanceof Response) {
        console.log("the listener survived descriptor exhaustion and answers again");
        assert.equal(res.status, 200, "alive and answering");
        await res.body?.cancel();
        return;
      }
      const wait = Date.now() + 3000;
      while (!exited && Date.now() < wait) await new Promise((r) => setTimeout(r, 50));
      assert.ok(exited, `neither exited nor answering: deaf (${res})`);
    }
    assert.equal(exited.success, false);
    assert.equal(exited.code, 70);
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
    await child.stderr.cancel().catch(() => {});
  }
});
