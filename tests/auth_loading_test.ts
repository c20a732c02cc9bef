/**
 * jose is loaded only in token mode: nothing on the open-mode path imports
 * `lib/auth/token.ts` (or jose) statically, so `deno task start` in open mode
 * never downloads it. Checked on the module graph `deno info` reports.
 */
import assert from "node:assert/strict";

interface Dependency {
  code?: { specifier: string };
  isDynamic?: boolean;
}
interface Module {
  specifier: string;
  dependencies?: Dependency[];
}

/** The modules `root` loads before it runs: static imports, not `import()` nor types. */
async function staticGraph(root: string): Promise<Set<string>> {
  const url = new URL(`../${root}`, import.meta.url);
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", url.href],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  const info = JSON.parse(new TextDecoder().decode(stdout));
  const modules = new Map<string, Module>(
    info.modules.map((module: Module) => [module.specifier, module]),
  );
  const redirects: Record<string, string> = info.redirects ?? {};
  const seen = new Set<string>();
  const visit = (specifier: string) => {
    const resolved = redirects[specifier] ?? specifier;
    if (seen.has(resolved)) return;
    seen.add(resolved);
    for (const dependency of modules.get(resolved)?.dependencies ?? []) {
      if (dependency.code && !dependency.isDynamic) visit(dependency.code.specifier);
    }
  };
  visit(url.href);
  return seen;
}

const loadsJose = (graph: Set<string>) => [...graph].some((s) => /^npm:\/?jose@/.test(s));
const loadsToken = (graph: Set<string>) => [...graph].some((s) => s.endsWith("/lib/auth/token.ts"));

Deno.test("lib/auth/token.ts loads jose (so the checks below can see it)", async () => {
  const graph = await staticGraph("lib/auth/token.ts");
  assert.ok(loadsJose(graph), [...graph].join("\n"));
  assert.ok(loadsJose(await staticGraph("lib/auth/token_cli.ts")));
});

Deno.test("the open-mode auth modules do not load jose or token.ts", async () => {
  for (const file of ["identity.ts", "nick.ts", "failures.ts", "secret.ts", "claims.ts"]) {
    const graph = await staticGraph(`lib/auth/${file}`);
    assert.ok(!loadsJose(graph), `${file} loads jose`);
    assert.ok(!loadsToken(graph), `${file} loads token.ts`);
  }
});

Deno.test("the server's entry points load token.ts only by import()", async () => {
  const roots = ["main.ts", "serve.ts", "mod.ts", "lib/handler.ts", "lib/hub.ts", "lib/config.ts"];
  for (const root of roots) {
    try {
      await Deno.stat(new URL(`../${root}`, import.meta.url));
    } catch {
      continue; // not written yet
    }
    const graph = await staticGraph(root);
    assert.ok(!loadsJose(graph), `${root} loads jose statically`);
    assert.ok(!loadsToken(graph), `${root} loads lib/auth/token.ts statically`);
  }
});
