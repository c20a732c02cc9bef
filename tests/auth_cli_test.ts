import assert from "node:assert/strict";
import { createVerifier } from "../lib/auth/token.ts";

const SECRET = "parley-test-secret-of-32-bytes!!";
const deno = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));

/**
 * Runs `deno task token ARGS` as the task in deno.json spells it (same
 * permissions), with `env` on top of this process's environment.
 */
async function token(args: string[], env: Record<string, string> = {}) {
  const [program, ...taskArgs] = (deno.tasks.token as string).split(" ");
  assert.equal(program, "deno");
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [...taskArgs, ...args],
    cwd: new URL("..", import.meta.url),
    env: { AUTH_SECRET: SECRET, PARLEY_URL: "", NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const lines = (bytes: Uint8Array) => new TextDecoder().decode(bytes).split("\n").filter(Boolean);
  return { code, out: lines(stdout), err: lines(stderr) };
}

Deno.test("deno task token needs only AUTH_SECRET and PARLEY_URL", () => {
  assert.match(
    deno.tasks.token,
    /^deno run --allow-env=AUTH_SECRET,PARLEY_URL lib\/auth\/token_cli\.ts$/,
  );
});

Deno.test("deno task token prints a token, then an invite link to the first room", async () => {
  const { code, out, err } = await token([
    "--sub",
    "ann",
    "--name",
    "Ann",
    "--rooms",
    "team-*,team,ops",
    "--read",
    "news,blog-*",
    "--mod",
    "team",
    "--ttl",
    "7d",
  ]);
  assert.deepEqual(err, []);
  assert.equal(code, 0);
  assert.equal(out.length, 2);
  const [jwt, link] = out;
  assert.match(jwt, /^[\w-]+\.[\w-]+\.[\w-]+$/);
  assert.equal(link, `http://localhost:8000/team#token=${jwt}`);
  const identity = await (await createVerifier({ secret: SECRET })).verify(jwt);
  assert.deepEqual({ ...identity, exp: 0 }, {
    sub: "ann",
    name: "Ann",
    rooms: ["team-*", "team", "ops"],
    read: ["news", "blog-*"],
    mod: ["team"],
    exp: 0,
  });
  const lifetime = identity.exp - Date.now();
  assert.ok(lifetime > 7 * 86400_000 - 60_000 && lifetime <= 7 * 86400_000, String(lifetime));
});

Deno.test("deno task token links to the lobby without a plain room, at --url or PARLEY_URL", async () => {
  const wild = await token(["--sub", "bot", "--rooms", "*", "--ttl", "15m"]);
  assert.equal(wild.code, 0, wild.err.join("\n"));
  assert.equal(wild.out[1], `http://localhost:8000/lobby#token=${wild.out[0]}`);
  const none = await token(["--sub=bot", "--ttl=90"], { PARLEY_URL: "https://chat.example.com" });
  assert.equal(none.out[1], `https://chat.example.com/lobby#token=${none.out[0]}`);
  const url = await token(
    ["--sub", "bot", "--rooms", "ops", "--ttl", "1h", "--url", "https://example.com/chat/"],
    { PARLEY_URL: "https://ignored.example.com" },
  );
  assert.equal(url.out[1], `https://example.com/chat/ops#token=${url.out[0]}`);
});

Deno.test("deno task token reports a mistake in one line, with exit code 2", async () => {
  const cases: [string[], Record<string, string>, RegExp][] = [
    [["--ttl", "1h"], {}, /^token: --sub is required$/],
    [["--sub", "ann"], {}, /^token: --ttl is required/],
    [["--sub", "ann", "--ttl", "7x"], {}, /^token: Cannot parse duration "7x"/],
    [["--sub", "ann", "--ttl", "400d"], {}, /^token: --ttl must be from 1s to 366d, not 400d$/],
    [["--sub", "ann", "--ttl", "0"], {}, /^token: --ttl must be from 1s to 366d, not 0$/],
    [["--sub", "ann", "--ttl", "1h", "--rooms", "a b"], {}, /rooms\[0\] is not a room pattern/],
    [["--sub", "ann", "--ttl", "1h", "--name", "A\u202Eb"], {}, /name must not contain bidi/],
    [["--sub", "ann", "--ttl", "1h", "--admin"], {}, /^token: unknown argument "--admin"/],
    [["--sub", "ann", "--ttl", "1h", "extra"], {}, /^token: unknown argument "extra"/],
    [["--sub", "ann", "--sub", "bob", "--ttl", "1h"], {}, /^token: --sub is given twice$/],
    [["--sub", "ann", "--ttl"], {}, /^token: --ttl needs a value$/],
    [["--sub", "ann", "--ttl", "1h", "--url", "ftp://x"], {}, /http:\/\/ or https:\/\//],
    [["--sub", "ann", "--ttl", "1h", "--url", "nowhere"], {}, /cannot use "nowhere"/],
    [["--sub", "ann", "--ttl", "1h"], { AUTH_SECRET: "" }, /^token: AUTH_SECRET is not set$/],
    [
      ["--sub", "ann", "--ttl", "1h"],
      { AUTH_SECRET: "too-short" },
      /^token: AUTH_SECRET is 9 bytes, at least 32 are needed$/,
    ],
  ];
  await Promise.all(cases.map(async ([args, env, message]) => {
    const { code, out, err } = await token(args, env);
    assert.equal(code, 2, args.join(" "));
    assert.deepEqual(out, [], args.join(" "));
    assert.equal(err.length, 1, err.join("\n"));
    assert.match(err[0], message);
    assert.ok(!err[0].includes("too-short"), "the secret is never printed");
  }));
});

Deno.test("deno task token --help prints the usage", async () => {
  const { code, out } = await token(["--help"], { AUTH_SECRET: "" });
  assert.equal(code, 0);
  assert.match(out[0], /^Usage: deno task token --sub ID --ttl DURATION/);
  assert.ok(out.some((line) => line.includes("--rooms")));
});
