/**
 * TLS: with TLS_CERT_FILE and TLS_KEY_FILE the same service is served over
 * https:// and wss://. The server and the client run as child processes; the
 * client trusts the test certificate (tests/fixtures/tls, for tests only).
 */
import assert from "node:assert/strict";

const root = new URL("..", import.meta.url).pathname;
const certFile = "tests/fixtures/tls/cert.pem";
const caFile = "tests/fixtures/tls/ca.pem";

const CLIENT = `
const port = Deno.args[0];
const page = await fetch("https://127.0.0.1:" + port + "/room1");
const html = await page.text();
const ws = new WebSocket("wss://127.0.0.1:" + port + "/room1");
ws.onopen = () => ws.send("ann: over tls");
const echo = await new Promise((resolve) => ws.onmessage = (e) => resolve(e.data));
ws.close();
console.log(JSON.stringify({ status: page.status, html: html.slice(0, 15), echo }));
`;

Deno.test("TLS: the page over https and the relay over wss", async () => {
  const server = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-read=.", "--allow-env", "main.ts"],
    cwd: root,
    env: {
      PORT: "0",
      HOSTNAME: "127.0.0.1",
      LOG_LEVEL: "silent",
      TLS_CERT_FILE: certFile,
      TLS_KEY_FILE: "tests/fixtures/tls/key.pem",
    },
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const lines = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let out = "";
    while (!/listening on (\S+)\n/.test(out)) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`server ended: ${out}`);
      out += value;
    }
    const url = /listening on (\S+)\n/.exec(out)![1];
    assert.match(url, /^https:\/\/127\.0\.0\.1:\d+\/$/);
    const port = new URL(url).port;
    const client = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--cert", caFile, CLIENT, port],
      cwd: root,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(client.stderr);
    assert.equal(client.code, 0, stderr);
    const result = JSON.parse(new TextDecoder().decode(client.stdout));
    assert.deepEqual(result, { status: 200, html: "<!doctype html>", echo: "ann: over tls" });
  } finally {
    server.kill("SIGTERM");
    await lines.cancel();
    await server.status;
  }
});
