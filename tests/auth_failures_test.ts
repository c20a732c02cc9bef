import assert from "node:assert/strict";
import { addressKey, AuthFailures } from "../lib/auth/failures.ts";

function setup(options: ConstructorParameters<typeof AuthFailures>[0] = {}) {
  const clock = { now: 1_000_000 };
  const failures = new AuthFailures({ now: () => clock.now, ...options });
  return { clock, failures };
}

Deno.test("AuthFailures allows an address until it fails limit times", () => {
  const { failures } = setup();
  assert.equal(failures.retryAfter("10.0.0.1"), 0);
  for (let i = 0; i < 9; i++) failures.fail("10.0.0.1");
  assert.equal(failures.retryAfter("10.0.0.1"), 0, "9 failures are allowed");
  failures.fail("10.0.0.1");
  assert.equal(failures.retryAfter("10.0.0.1"), 300, "the 10th blocks for 300 s");
  assert.equal(failures.retryAfter("10.0.0.2"), 0, "other addresses are not blocked");
});

Deno.test("AuthFailures.retryAfter() counts down in whole seconds, rounded up", () => {
  const { clock, failures } = setup({ limit: 1, blockMs: 10_000 });
  failures.fail("10.0.0.1");
  assert.equal(failures.retryAfter("10.0.0.1"), 10);
  clock.now += 1;
  assert.equal(failures.retryAfter("10.0.0.1"), 10);
  clock.now += 8_998;
  assert.equal(failures.retryAfter("10.0.0.1"), 2);
  clock.now += 1_000;
  assert.equal(failures.retryAfter("10.0.0.1"), 1);
  clock.now += 1;
  assert.equal(failures.retryAfter("10.0.0.1"), 0);
});

Deno.test("AuthFailures starts a fresh count once the block is over", () => {
  const { clock, failures } = setup({ limit: 3, blockMs: 60_000 });
  for (let i = 0; i < 3; i++) failures.fail("10.0.0.1");
  assert.equal(failures.retryAfter("10.0.0.1"), 60);
  // Failures during the block neither extend it nor count later.
  failures.fail("10.0.0.1");
  assert.equal(failures.retryAfter("10.0.0.1"), 60);
  clock.now += 60_000;
  assert.equal(failures.retryAfter("10.0.0.1"), 0);
  failures.fail("10.0.0.1");
  failures.fail("10.0.0.1");
  assert.equal(failures.retryAfter("10.0.0.1"), 0);
  failures.fail("10.0.0.1");
  assert.equal(failures.retryAfter("10.0.0.1"), 60);
});

Deno.test("AuthFailures forgets failures older than the window", () => {
  const { clock, failures } = setup({ limit: 3, windowMs: 60_000 });
  failures.fail("10.0.0.1");
  failures.fail("10.0.0.1");
  clock.now += 60_000;
  failures.fail("10.0.0.1");
  failures.fail("10.0.0.1");
  assert.equal(failures.retryAfter("10.0.0.1"), 0, "two and two in different windows");
  failures.fail("10.0.0.1");
  assert.ok(failures.retryAfter("10.0.0.1") > 0, "three in one window");
});

Deno.test("AuthFailures counts an IPv6 /64 as one address, and IPv4-mapped as IPv4", () => {
  const { failures } = setup({ limit: 3 });
  failures.fail("2001:db8:1:2::1");
  failures.fail("2001:db8:1:2:ffff::9");
  failures.fail("[2001:DB8:1:2::abcd]");
  assert.ok(failures.retryAfter("2001:db8:1:2::77") > 0);
  assert.equal(failures.retryAfter("2001:db8:1:3::1"), 0);
  failures.fail("192.0.2.1");
  failures.fail("::ffff:192.0.2.1");
  failures.fail("::ffff:c000:201");
  assert.ok(failures.retryAfter("192.0.2.1") > 0);
});

Deno.test("AuthFailures forgets addresses whose window has passed", () => {
  const { clock, failures } = setup({ windowMs: 1000, limit: 2, blockMs: 5000 });
  for (let i = 0; i < 100; i++) failures.fail(`10.0.0.${i}`);
  failures.fail("10.0.1.1");
  failures.fail("10.0.1.1"); // blocked for 5 s
  assert.equal(failures.size, 101);
  clock.now += 1000;
  failures.fail("10.0.2.1");
  assert.equal(failures.size, 2, "the blocked address and the new one stay");
  assert.ok(failures.retryAfter("10.0.1.1") > 0);
  clock.now += 5000;
  failures.fail("10.0.2.2");
  assert.equal(failures.size, 1);
});

Deno.test("AuthFailures keeps at most maxEntries addresses, dropping the least recent", () => {
  const { failures } = setup({ maxEntries: 3, limit: 2 });
  failures.fail("10.0.0.1");
  failures.fail("10.0.0.2");
  failures.fail("10.0.0.3");
  failures.fail("10.0.0.1"); // now the most recent, and blocked
  failures.fail("10.0.0.4"); // drops 10.0.0.2
  assert.equal(failures.size, 3);
  assert.ok(failures.retryAfter("10.0.0.1") > 0);
  failures.fail("10.0.0.2");
  assert.equal(failures.retryAfter("10.0.0.2"), 0, "10.0.0.2 starts again from one failure");
  for (let i = 0; i < 10_000; i++) failures.fail(`10.1.${i >> 8}.${i & 255}`);
  assert.equal(failures.size, 3);
});

Deno.test("AuthFailures has documented defaults and refuses nonsense options", () => {
  const failures = new AuthFailures();
  assert.deepEqual(
    [failures.limit, failures.windowMs, failures.blockMs, failures.maxEntries],
    [10, 60_000, 300_000, 100_000],
  );
  for (const option of ["limit", "windowMs", "blockMs", "maxEntries"]) {
    for (const value of [0, -1, NaN, Infinity]) {
      assert.throws(() => new AuthFailures({ [option]: value }), RangeError, `${option}=${value}`);
    }
  }
});

Deno.test("addressKey() normalises addresses", () => {
  const cases: [string, string][] = [
    ["192.0.2.1", "192.0.2.1"],
    ["::ffff:192.0.2.1", "192.0.2.1"],
    ["::FFFF:C000:0201", "192.0.2.1"],
    ["2001:db8::1", "2001:db8:0:0::/64"],
    ["2001:0db8:0000:0000:1::", "2001:db8:0:0::/64"],
    ["[2001:DB8:0:1::5]", "2001:db8:0:1::/64"],
    ["fe80::1%eth0", "fe80:0:0:0::/64"],
    ["1:2:3:4:5:6:7:8", "1:2:3:4::/64"],
    ["1:2:3:4:5:6:7::", "1:2:3:4::/64"],
    ["::", "0:0:0:0::/64"],
    // Not addresses: kept as they are.
    ["1::2::3", "1::2::3"],
    ["1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:8:9"],
    ["::ffff:300.1.1.1", "::ffff:300.1.1.1"],
    ["unknown", "unknown"],
  ];
  for (const [ip, key] of cases) assert.equal(addressKey(ip), key, ip);
});
