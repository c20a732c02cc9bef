// deno-lint-ignore-file
// client/backoff.ts
var Backoff = class {
  #attempt = 0;
  #baseMs;
  #capMs;
  #random;
  /** Starts at attempt 0; throws a RangeError for delays that make no sense. */
  constructor(options = {}) {
    this.#baseMs = options.baseMs ?? 500;
    this.#capMs = options.capMs ?? 15e3;
    this.#random = options.random ?? (() => Math.random());
    if (!(this.#baseMs > 0) || !(this.#capMs >= this.#baseMs)) {
      throw new RangeError(
        `Cannot back off: baseMs is ${this.#baseMs} and capMs ${this.#capMs}, expected 0 < baseMs <= capMs`,
      );
    }
  }
  /** Attempts since the last {@linkcode Backoff.reset}. */
  get attempt() {
    return this.#attempt;
  }
  /** The delay before the next attempt, in ms; counts the attempt. */
  next() {
    const ceiling = Math.min(this.#capMs, this.#baseMs * 2 ** this.#attempt);
    this.#attempt = Math.min(this.#attempt + 1, 30);
    return Math.floor(this.#random() * ceiling);
  }
  /** Starts over: the connection stayed up long enough. */
  reset() {
    this.#attempt = 0;
  }
};

// client/wire.ts
var SUBPROTOCOL = "parley.v1";
var TRANSIENT_ERRORS = /* @__PURE__ */ new Set([
  "rate_limited",
  "unavailable",
]);
function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
function isId(value) {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 1;
}
function isCount(value) {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}
function codePoints(text) {
  let count = 0;
  for (const _ of text) count++;
  return count;
}
function readMember(value) {
  if (!isObject(value) || typeof value.id !== "string" || typeof value.nick !== "string") {
    return null;
  }
  const member = {
    id: value.id,
    nick: value.nick,
  };
  if (typeof value.verified === "boolean") member.verified = value.verified;
  if (value.bot === true) member.bot = true;
  return member;
}
function readMembers(value) {
  const members = [];
  if (!Array.isArray(value)) return members;
  for (const item of value) {
    const member = readMember(item);
    if (member) members.push(member);
  }
  return members;
}
function readMessage(value) {
  if (!isObject(value) || value.type !== "message" && value.type !== "file") return null;
  const { id, epoch } = value;
  if (!isId(id) || typeof epoch !== "string") return null;
  const message = {
    id,
    epoch,
    ts: typeof value.ts === "number" ? value.ts : 0,
    from: readMember(value.from),
  };
  if (typeof value.cid === "string") message.cid = value.cid;
  if (isId(value.reply_to)) message.replyTo = value.reply_to;
  if (value.deleted === true) {
    message.deleted = true;
    return message;
  }
  if (value.type === "file") {
    if (typeof value.name !== "string" || !isCount(value.size)) return null;
    message.file = {
      name: value.name,
      mime: typeof value.mime === "string" ? value.mime : "application/octet-stream",
      size: value.size,
    };
    if (value.omitted === true) message.file.omitted = true;
    return message;
  }
  if (typeof value.text !== "string") return null;
  message.text = value.text;
  if (typeof value.edited === "number") message.edited = value.edited;
  return message;
}
function readChange(value) {
  if (!isObject(value) || value.type !== "edit" && value.type !== "delete") return null;
  const { id, epoch, target } = value;
  if (!isId(id) || !isId(target) || typeof epoch !== "string") return null;
  const change = {
    kind: value.type,
    id,
    epoch,
    ts: typeof value.ts === "number" ? value.ts : 0,
    from: readMember(value.from),
    target,
  };
  if (typeof value.cid === "string") change.cid = value.cid;
  if (typeof value.text === "string") change.text = value.text;
  if (value.deleted === true) change.deleted = true;
  return change;
}
function readPresence(value) {
  if (!isObject(value)) return null;
  const presence = {
    joins: [],
    leaves: [],
    renames: [],
    count: null,
    listed: true,
  };
  if (value.type === "join" || value.type === "leave" || value.type === "rename") {
    const member = readMember(value.member);
    if (!member) return null;
    if (value.type === "join") presence.joins.push(member);
    else if (value.type === "leave") presence.leaves.push(member);
    else {presence.renames.push({
        member,
        old: typeof value.old === "string" ? value.old : "",
      });}
    return presence;
  }
  if (value.type !== "presence") return null;
  presence.joins = readMembers(value.joins);
  presence.leaves = readMembers(value.leaves);
  if (Array.isArray(value.renames)) {
    for (const item of value.renames) {
      const member = isObject(item) ? readMember(item.member) : null;
      if (member && isObject(item)) {
        presence.renames.push({
          member,
          old: typeof item.old === "string" ? item.old : "",
        });
      }
    }
  }
  presence.count = isCount(value.count) ? value.count : null;
  presence.listed = "joins" in value || "leaves" in value || "renames" in value;
  return presence;
}
function readMembersPage(value) {
  if (!isObject(value) || value.type !== "members" || !Array.isArray(value.members)) return null;
  return {
    members: readMembers(value.members),
    more: value.more === true,
    count: isCount(value.count) ? value.count : null,
  };
}
function readHistoryPage(value) {
  if (!isObject(value) || value.type !== "history" || typeof value.epoch !== "string") return null;
  if (!Array.isArray(value.messages)) return null;
  const messages = [];
  for (const item of value.messages) {
    const message = readMessage(item);
    if (message) messages.push(message);
  }
  return {
    epoch: value.epoch,
    before: isCount(value.before) ? value.before : 0,
    messages,
    more: value.more === true,
  };
}
function readKick(value) {
  if (!isObject(value) || value.type !== "kick") return null;
  const member = readMember(value.member);
  if (!member) return null;
  const kick = {
    member,
    by: readMember(value.by),
    reason: typeof value.reason === "string" ? value.reason : "",
  };
  if (typeof value.until === "number" && Number.isFinite(value.until)) kick.until = value.until;
  return kick;
}
function readLimits(value) {
  const limits = isObject(value) ? value : {};
  const orNull = (v) => isId(v) ? v : null;
  return {
    text: isId(limits.text) ? limits.text : 4e3,
    bytes: isId(limits.bytes) ? limits.bytes : 2 * 1024 * 1024,
    rate: typeof limits.rate === "number" && limits.rate > 0 ? limits.rate : null,
    burst: orNull(limits.burst),
    queue: orNull(limits.queue),
    page: isId(limits.page) ? limits.page : 200,
    typing: isId(limits.typing) ? limits.typing : 6e3,
  };
}
function readWelcome(value) {
  if (!isObject(value) || value.type !== "welcome" || typeof value.epoch !== "string") return null;
  const you = readMember(value.you);
  if (!you) return null;
  const members = readMembers(value.members);
  return {
    room: typeof value.room === "string" ? value.room : "",
    epoch: value.epoch,
    head: isCount(value.head) ? value.head : 0,
    you,
    members,
    count: isCount(value.count) ? value.count : members.length,
    recovered: typeof value.recovered === "boolean" ? value.recovered : null,
    replay: isCount(value.replay) ? value.replay : 0,
    access: value.access === "read" ? "read" : "write",
    moderator: value.moderator === true,
    limits: readLimits(value.limits),
  };
}
function readError(value) {
  if (!isObject(value) || value.type !== "error") return null;
  const code = typeof value.code === "string" ? value.code : "error";
  const error = {
    code,
    message: typeof value.message === "string" ? value.message : "",
    retry: value.retry === true || TRANSIENT_ERRORS.has(code),
  };
  if (typeof value.cid === "string") error.cid = value.cid;
  return error;
}
var ABOUT_ONE_ENVELOPE = /^[a-z_]+:/;
function refusalCode(error) {
  if (error.cid !== void 0) return null;
  if (error.code === "unauthorized") return 4401;
  if (error.code === "forbidden" && !ABOUT_ONE_ENVELOPE.test(error.message)) return 4403;
  return null;
}

// client/connection.ts
var FINAL_CLOSES = /* @__PURE__ */ new Set([
  1e3,
  1002,
  1003,
  1007,
  1008,
  1009,
  1010,
  4403,
]);
var Connection = class {
  #url;
  #options;
  #host;
  #Socket;
  #backoff;
  #ws = null;
  #joined = false;
  #closing = false;
  #opening = false;
  #final = false;
  #token;
  #freshToken = true;
  #refusals = 0;
  #lastFrameAt = 0;
  #pingSentAt = 0;
  #reconnectTimer;
  #stableTimer;
  #pingTimer;
  #onOnline;
  /**
   * @param url The room's WebSocket URL.
   * @param options The client's options (token, WebSocket, backoff, timings).
   * @param host The client.
   */
  constructor(url, options, host) {
    this.#url = url;
    this.#options = options;
    this.#host = host;
    const Socket = options.WebSocket ?? globalThis.WebSocket;
    if (!Socket) throw new TypeError("Cannot create a ParleyClient: no WebSocket here");
    this.#Socket = Socket;
    this.#backoff = new Backoff(options.backoff);
  }
  /** The socket, when the server has welcomed it and it is open; else null. */
  get joined() {
    return this.#joined && this.#ws?.readyState === 1 ? this.#ws : null;
  }
  /** The current socket, open or not. */
  get socket() {
    return this.#ws;
  }
  /** True once closed for good. */
  get final() {
    return this.#final;
  }
  /** True while a socket is open or opening, or a reconnect is scheduled. */
  get busy() {
    return this.#ws !== null || this.#opening || this.#reconnectTimer !== void 0;
  }
  /** Opens a socket, unless one is open or opening, or the client is closed. */
  async open() {
    if (this.#final || this.#ws || this.#opening) return;
    this.#opening = true;
    try {
      await this.#open();
    } finally {
      this.#opening = false;
    }
  }
  async #open() {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = void 0;
    this.#host.status({
      state: "connecting",
      attempt: this.#backoff.attempt,
    });
    await this.#host.prepare();
    const source = this.#options.token;
    if (typeof source === "function" && (this.#freshToken || this.#token === void 0)) {
      try {
        this.#token = await source();
        this.#freshToken = false;
      } catch (error) {
        this.#retry(1006, `cannot get a token: ${String(error)}`);
        return;
      }
    } else if (typeof source === "string") {
      this.#token = source;
    }
    if (this.#final || this.#ws) return;
    let ws;
    try {
      ws = new this.#Socket(this.#url, SUBPROTOCOL);
    } catch (error) {
      this.#retry(1006, `cannot open a WebSocket: ${String(error)}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    this.#joined = false;
    ws.onopen = () => {
      if (ws !== this.#ws) return;
      this.#lastFrameAt = Date.now();
      this.#pingSentAt = 0;
      this.#host.opened(ws, this.#token);
      const every = this.#options.pingMs ?? 2e4;
      this.#pingTimer = setInterval(() => this.#heartbeat(ws), Math.min(every, 5e3));
    };
    ws.onmessage = (event) => {
      if (ws !== this.#ws) return;
      this.#lastFrameAt = Date.now();
      this.#host.frame(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this.#ws) this.lost(event.code || 1006, event.reason);
    };
    ws.onerror = () => {
    };
  }
  /** The server welcomed the socket: the backoff starts over once it stays up a while. */
  welcomed() {
    this.#joined = true;
    this.#refusals = 0;
    clearTimeout(this.#stableTimer);
    this.#stableTimer = setTimeout(() => {
      this.#stableTimer = void 0;
      this.#backoff.reset();
    }, this.#options.stableMs ?? 5e3);
    this.#host.status({
      state: "open",
    });
  }
  /** Pings an idle connection; gives up on one whose ping went unanswered. */
  #heartbeat(ws) {
    if (ws !== this.#ws || ws.readyState !== 1) return;
    const now = Date.now();
    const every = this.#options.pingMs ?? 2e4;
    const timeout = this.#options.pongTimeoutMs ?? 15e3;
    if (this.#pingSentAt > this.#lastFrameAt && now - this.#pingSentAt > timeout) {
      this.lost(1006, "no answer to ping");
      return;
    }
    if (now - this.#lastFrameAt >= every && this.#pingSentAt <= this.#lastFrameAt) {
      this.#pingSentAt = now;
      try {
        ws.send(JSON.stringify({
          type: "ping",
        }));
      } catch {
      }
    }
  }
  /** Forgets the current socket (closing it if still open) and stops its timers. */
  #drop() {
    const ws = this.#ws;
    this.#ws = null;
    this.#joined = false;
    clearTimeout(this.#stableTimer);
    clearInterval(this.#pingTimer);
    this.#stableTimer = this.#pingTimer = void 0;
    if (ws && ws.readyState < 2) {
      try {
        ws.close(1e3, "leaving");
      } catch {
      }
    }
  }
  /** Drops the socket and opens another at once (to join afresh). */
  restart() {
    this.#drop();
    void this.open();
  }
  /**
   * The connection is gone (closed, dropped, refused in band, or given up
   * on): the close code decides whether there is a next one.
   */
  lost(code, reason) {
    this.#drop();
    this.#host.lost();
    if (this.#closing) return this.#finish(code, reason);
    if (code === 4401) return this.#unauthorized(reason);
    if (FINAL_CLOSES.has(code)) return this.#finish(code, reason);
    this.#retry(code, reason);
  }
  /** A token was refused: with a token function, try once more with a fresh token. */
  #unauthorized(reason) {
    this.#refusals++;
    if (typeof this.#options.token === "function" && this.#refusals <= 1) {
      this.#freshToken = true;
      this.#retry(4401, reason);
      return;
    }
    this.#finish(4401, reason);
  }
  #retry(code, reason) {
    if (this.#final || this.#reconnectTimer !== void 0) return;
    const delayMs = this.#backoff.next();
    const navigator = globalThis.navigator;
    const target = globalThis;
    if (navigator?.onLine === false && typeof target.addEventListener === "function") {
      this.#host.status({
        state: "offline",
      });
      this.#onOnline ??= () => {
        if (this.#reconnectTimer !== void 0) void this.open();
      };
      target.addEventListener("online", this.#onOnline, {
        once: true,
      });
    } else {
      const attempt = this.#backoff.attempt;
      this.#host.status({
        state: "reconnecting",
        delayMs,
        attempt,
        code,
        reason,
      });
    }
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = void 0;
      void this.open();
    }, delayMs);
  }
  /** Closed for good: a refusal, a final close code, or `close()`. */
  #finish(code, reason) {
    if (this.#final) return;
    this.#final = true;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = void 0;
    if (this.#onOnline) {
      globalThis.removeEventListener?.("online", this.#onOnline);
    }
    this.#host.status({
      state: "closed",
      final: true,
      code,
      reason,
    });
  }
  /** Closes for good, and resolves once the socket is closed. */
  async close() {
    this.#closing = true;
    const ws = this.#ws;
    const ended = ws && ws.readyState < 3
      ? new Promise((resolve) => {
        const timer = setTimeout(resolve, 3e3);
        const previous = ws.onclose;
        ws.onclose = (event) => {
          clearTimeout(timer);
          previous?.(event);
          resolve();
        };
      })
      : Promise.resolve();
    this.lost(1e3, "closed by the client");
    await ended;
  }
};

// client/events.ts
var Emitter = class {
  #listeners = /* @__PURE__ */ new Map();
  /**
   * Calls `listener` for every event of `type`.
   *
   * @returns A function that removes the listener.
   */
  on(type, listener) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, set = /* @__PURE__ */ new Set());
    set.add(listener);
    return () => this.off(type, listener);
  }
  /** Calls `listener` for the next event of `type` only. */
  once(type, listener) {
    const off = this.on(type, (payload) => {
      off();
      listener(payload);
    });
    return off;
  }
  /** Removes a listener added with {@linkcode Emitter.on}. */
  off(type, listener) {
    this.#listeners.get(type)?.delete(listener);
  }
  /** Calls every listener of `type` with `payload`, in the order they were added. */
  emit(type, payload) {
    const set = this.#listeners.get(type);
    if (!set) return;
    for (
      const listener of [
        ...set,
      ]
    ) {
      try {
        listener(payload);
      } catch (error) {
        console.error(`A listener of "${String(type)}" threw:`, error);
      }
    }
  }
};

// client/requests.ts
var Requests = class {
  #timeoutMs;
  #history = /* @__PURE__ */ new Map();
  #members = [];
  /** @param timeoutMs How long an answer may take. */
  constructor(timeoutMs) {
    this.#timeoutMs = timeoutMs;
  }
  /**
   * Sends a `history` request with `cid` (`send` returns false when it could
   * not) and resolves with its page.
   */
  history(cid, send) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#history.delete(cid);
        reject(new Error("Cannot load older messages: no answer"));
      }, this.#timeoutMs);
      this.#history.set(cid, {
        resolve,
        reject,
        timer,
      });
      if (!send()) this.#settleHistory(cid, new Error("Cannot load older messages: not connected"));
    });
  }
  /** Whether a history request with this cid waits. */
  hasHistory(cid) {
    return this.#history.has(cid);
  }
  /** Answers (or, with an error, rejects) the history request `cid`. */
  #settleHistory(cid, answer) {
    const request = this.#history.get(cid);
    if (!request) return;
    this.#history.delete(cid);
    clearTimeout(request.timer);
    if (answer instanceof Error) request.reject(answer);
    else request.resolve(answer);
  }
  /** A page came for `cid`. */
  answerHistory(cid, page) {
    if (cid !== void 0) this.#settleHistory(cid, page);
  }
  /** The server refused the history request `cid`. */
  refuseHistory(cid, message) {
    this.#settleHistory(cid, new Error(`Cannot load older messages: ${message}`));
  }
  /**
   * Sends a `members` request (`first`: without `after`) and resolves with
   * its page.
   */
  members(first, send) {
    return new Promise((resolve, reject) => {
      const request = {
        resolve,
        reject,
        first,
        timer: setTimeout(() => {
          this.#members = this.#members.filter((r) => r !== request);
          reject(new Error("Cannot load members: no answer"));
        }, this.#timeoutMs),
      };
      this.#members.push(request);
      if (!send()) {
        clearTimeout(request.timer);
        this.#members = this.#members.filter((r) => r !== request);
        reject(new Error("Cannot load members: not connected"));
      }
    });
  }
  /** Whether a members request waits. */
  get membersWaiting() {
    return this.#members.length > 0;
  }
  /**
   * A members page came: it answers the oldest request. Returns whether that
   * request asked for the first page, and a function that resolves it (call
   * it once the page is applied).
   */
  answerMembers(page) {
    const request = this.#members.shift();
    if (request) clearTimeout(request.timer);
    return {
      first: request?.first ?? false,
      resolve: () => request?.resolve(page),
    };
  }
  /** The server refused the oldest members request. */
  refuseMembers(message) {
    const request = this.#members.shift();
    if (!request) return;
    clearTimeout(request.timer);
    request.reject(new Error(`Cannot load members: ${message}`));
  }
  /** The connection ended: no answer will come. */
  abort(why) {
    for (
      const cid of [
        ...this.#history.keys(),
      ]
    ) {
      this.#settleHistory(cid, new Error(`Cannot load older messages: ${why}`));
    }
    for (const request of this.#members.splice(0)) {
      clearTimeout(request.timer);
      request.reject(new Error(`Cannot load members: ${why}`));
    }
  }
};

// client/inbox.ts
var REMEMBERED = 1e4;
var Inbox = class {
  #last = null;
  #sent = /* @__PURE__ */ new Set();
  #held = [];
  /** The last entry seen, or null before any. */
  get last() {
    return this.#last;
  }
  /** Sets the position to resume from (loaded from storage, or after a gap). */
  set last(position) {
    this.#last = position;
  }
  /**
   * Whether an entry should be reported: not one seen already (same epoch,
   * id at or before the last), nor one whose sender and cid were seen (a
   * resend the server stored again after losing its history).
   */
  isNew(epoch, id, fromId, cid) {
    const last = this.#last;
    if (last !== null && last.epoch === epoch && id <= last.id) return false;
    if (fromId === void 0 || cid === void 0) return true;
    return !this.#sent.has(`${fromId}
${cid}`);
  }
  /** Marks an entry seen. */
  seen(epoch, id, fromId, cid) {
    const last = this.#last;
    if (last === null || last.epoch !== epoch || id > last.id) {
      this.#last = {
        epoch,
        id,
      };
    }
    if (fromId === void 0 || cid === void 0) return;
    const key = `${fromId}
${cid}`;
    this.#sent.add(key);
    if (this.#sent.size > REMEMBERED) {
      const oldest = this.#sent.values().next();
      if (!oldest.done) this.#sent.delete(oldest.value);
    }
  }
  /**
   * Runs `run` now, or after the files before it have their bytes. With
   * `file`, what follows waits until {@linkcode Inbox.bytes} brings them.
   */
  push(run, file) {
    this.#held.push({
      run,
      file,
    });
    this.#drain();
  }
  /** A binary frame came: the first file waiting takes it. Returns false when none waits. */
  bytes(data) {
    const waiting = this.#held.find((held) => held.file !== void 0);
    if (!waiting?.file) return false;
    waiting.file.data = data;
    waiting.file = void 0;
    this.#drain();
    return true;
  }
  /** The connection ended: files still waiting come out without their bytes. */
  flush() {
    for (const held of this.#held) held.file = void 0;
    this.#drain();
  }
  #drain() {
    while (this.#held.length > 0) {
      const head = this.#held[0];
      if (head.file !== void 0) {
        return;
      }
      this.#held.shift();
      try {
        head.run();
      } catch (error) {
        console.error("Cannot report an event:", error);
      }
    }
  }
};

// client/presence.ts
var Roster = class {
  #members = /* @__PURE__ */ new Map();
  #count = 0;
  #after;
  #more = false;
  #stale = false;
  /** The members listed, by id. */
  get members() {
    return this.#members;
  }
  /**
   * Members in the room: the server's count (at least those listed, unless
   * count-only updates came: those listed may have left since).
   */
  get count() {
    return this.#stale ? this.#count : Math.max(this.#count, this.#members.size);
  }
  /**
   * Whether members exist that are not listed (a large room, or a list that
   * count-only updates may have left out of date).
   */
  get incomplete() {
    return this.#stale || this.#more || this.#members.size < this.#count;
  }
  /** Where the next page starts (undefined: the first page). */
  get after() {
    return this.#after;
  }
  /** Starts over from a `welcome`: its first members and count. */
  welcome(members, count, me) {
    this.#members.clear();
    for (const member of members) this.#members.set(member.id, member);
    this.#members.set(me.id, me);
    this.#count = count;
    this.#after = members.at(-1)?.id;
    this.#more = members.length < count;
    this.#stale = false;
  }
  /** Applies a presence update as sets; returns what changed. */
  apply(presence) {
    const changes = {
      joined: [],
      left: [],
      renamed: [],
    };
    for (const member of presence.joins) {
      if (!this.#members.has(member.id)) changes.joined.push(member);
      this.#members.set(member.id, member);
    }
    for (const member of presence.leaves) {
      if (this.#members.delete(member.id)) changes.left.push(member);
    }
    for (const rename of presence.renames) {
      if (this.#members.has(rename.member.id)) changes.renamed.push(rename);
      this.#members.set(rename.member.id, rename.member);
    }
    if (presence.count !== null) {
      this.#count = presence.count;
      if (!presence.listed) this.#stale = true;
    } else {
      this.#count += changes.joined.length - changes.left.length;
    }
    return changes;
  }
  /** Removes a member (a kick). */
  remove(id) {
    const member = this.#members.get(id);
    this.#members.delete(id);
    if (member) this.#count = Math.max(0, this.#count - 1);
    return member;
  }
  /** Adds a page of members; `first` when it was asked without `after` (the list starts over). */
  page(page, first, me) {
    if (first && this.#stale) {
      this.#members.clear();
      if (me) this.#members.set(me.id, me);
      this.#stale = false;
    }
    for (const member of page.members) this.#members.set(member.id, member);
    if (page.count !== null) this.#count = page.count;
    this.#after = page.members.at(-1)?.id ?? this.#after;
    this.#more = page.more;
  }
};

// client/room.ts
var RoomView = class {
  /** The position and the order of reported events. */
  inbox = new Inbox();
  /** The members. */
  roster = new Roster();
  #host;
  #epoch;
  #oldest;
  #typists = /* @__PURE__ */ new Map();
  /** @param host The client. */
  constructor(host) {
    this.#host = host;
  }
  /** The oldest message id seen in this epoch. */
  get oldest() {
    return this.#oldest;
  }
  /** Members whose typing indicator has not run out. */
  get typists() {
    const now = Date.now();
    const typing = [];
    for (const [id, { member, until }] of this.#typists) {
      if (until > now) typing.push(member);
      else this.#typists.delete(id);
    }
    return typing;
  }
  /** A connection was welcomed: new members, maybe a new epoch. */
  welcome(welcome) {
    const previous = this.inbox.last;
    this.#epoch = welcome.epoch;
    this.roster.welcome(welcome.members, welcome.count, welcome.you);
    this.#typists.clear();
    if (previous !== null && previous.epoch !== welcome.epoch) {
      this.inbox.last = {
        epoch: welcome.epoch,
        id: 0,
      };
      this.#oldest = void 0;
    }
    if (welcome.recovered !== true && welcome.replay === 0) {
      this.inbox.last = {
        epoch: welcome.epoch,
        id: welcome.head,
      };
    }
    this.#host.changed();
  }
  /** A `message` or `file` envelope, live or replayed. */
  message(envelope) {
    const message = readMessage(envelope);
    if (!message) return this.#host.entry();
    const { epoch, id, from, cid } = message;
    if (cid !== void 0 && from !== null && from.id === this.#host.me()?.id) {
      this.#host.stored({
        cid,
        id,
        epoch,
        duplicate: false,
      });
    }
    this.#host.entry();
    const file = message.file && !message.file.omitted ? message.file : void 0;
    if (!this.inbox.isNew(epoch, id, from?.id, cid)) {
      if (file) {
        this.inbox.push(() => {
        }, file);
      }
      return;
    }
    this.inbox.seen(epoch, id, from?.id, cid);
    if (epoch === this.#epoch && (this.#oldest === void 0 || id < this.#oldest)) {
      this.#oldest = id;
    }
    this.#host.changed();
    this.inbox.push(() => {
      if (from) this.#typists.delete(from.id);
      this.#host.emit("message", message);
    }, file);
  }
  /** An `edit` or `delete` entry. */
  change(envelope) {
    const change = readChange(envelope);
    if (!change) return this.#host.entry();
    const { epoch, id, from, cid } = change;
    if (cid !== void 0 && from !== null && from.id === this.#host.me()?.id) {
      this.#host.stored({
        cid,
        id,
        epoch,
        duplicate: false,
      });
    }
    this.#host.entry();
    if (!this.inbox.isNew(epoch, id, from?.id, cid)) return;
    this.inbox.seen(epoch, id, from?.id, cid);
    this.#host.changed();
    this.inbox.push(() => this.#host.emit(change.kind, change));
  }
  /** A `typing` envelope; our own (in a batch) is ignored. */
  typing(envelope, defaultTtl) {
    const member = readMember(envelope.member);
    if (!member || member.id === this.#host.me()?.id) return;
    const ttl = isId(envelope.ttl) ? envelope.ttl : defaultTtl;
    this.inbox.push(() => {
      this.#typists.set(member.id, {
        member,
        until: Date.now() + ttl,
      });
      this.#host.emit("typing", {
        member,
        ttl,
      });
    });
  }
  /**
   * A `presence` envelope or a `join`, `leave` or `rename`; `renamed` is
   * called with our own member when it took another name.
   */
  presence(envelope, renamed) {
    const presence = readPresence(envelope);
    if (!presence) return;
    this.inbox.push(() => {
      const changes = this.roster.apply(presence);
      for (const member of presence.leaves) this.#typists.delete(member.id);
      for (const { member } of presence.renames) {
        if (member.id === this.#host.me()?.id) renamed(member);
      }
      this.#host.emit("presence", {
        ...presence,
        changes,
      });
    });
  }
  /** A `kick` of another member. */
  kick(envelope) {
    const kick = readKick(envelope);
    if (!kick) return;
    this.inbox.push(() => {
      this.roster.remove(kick.member.id);
      this.#typists.delete(kick.member.id);
      this.#host.emit("kick", kick);
    });
  }
  /** A scroll-back page: moves the oldest id seen. */
  history(page) {
    if (page.epoch !== this.#epoch || page.messages.length === 0) return;
    const first = page.messages[0].id;
    if (this.#oldest === void 0 || first < this.#oldest) this.#oldest = first;
  }
};

// client/saved.ts
var CLIENT_PATTERN = /^[A-Za-z0-9_-]{8,64}$/;
var CLIENT_KEY = "parley:client";
var ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
function randomId(length) {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return Array.from(bytes, (b) => ID_ALPHABET[b & 63]).join("");
}
var SavedState = class {
  #storage;
  #key;
  #inbox;
  #outbox;
  #clientId;
  #loaded;
  #saving;
  #dirty = false;
  /**
   * @param storage Where it is kept.
   * @param key The room's key.
   * @param inbox Whose position is saved and restored.
   * @param outbox Whose items are saved and restored.
   * @param clientId A client id given by the caller (then not read from storage).
   */
  constructor(storage, key, inbox, outbox, clientId) {
    this.#storage = storage;
    this.#key = key;
    this.#inbox = inbox;
    this.#outbox = outbox;
    this.#clientId = clientId;
  }
  /** The client id, once loaded (or given). */
  get clientId() {
    return this.#clientId;
  }
  /** Reads the client id, the position and the outbox, once; later calls wait for the same read. */
  load() {
    this.#loaded ??= (async () => {
      try {
        if (this.#clientId === void 0) {
          const saved2 = await this.#storage.get(CLIENT_KEY);
          if (saved2 !== null && CLIENT_PATTERN.test(saved2)) this.#clientId = saved2;
          else {
            this.#clientId = randomId(22);
            await this.#storage.set(CLIENT_KEY, this.#clientId);
          }
        }
        const text = await this.#storage.get(this.#key);
        const saved = text === null ? null : JSON.parse(text);
        if (isObject(saved)) {
          const last = saved.last;
          if (isObject(last) && typeof last.epoch === "string" && typeof last.id === "number") {
            this.#inbox.last ??= {
              epoch: last.epoch,
              id: last.id,
            };
          }
          this.#outbox.restore(saved.outbox);
        }
      } catch (error) {
        console.warn("Cannot read the client's saved state:", error);
        this.#clientId ??= randomId(22);
      }
    })();
    return this.#loaded;
  }
  /** Something changed: write the state soon, once however many changes come this turn. */
  persist() {
    this.#dirty = true;
    this.#saving ??= Promise.resolve().then(() => this.flush());
  }
  /** Writes what changed, and resolves once it is written. */
  async flush() {
    await this.load();
    while (this.#dirty) {
      this.#dirty = false;
      const state = JSON.stringify({
        last: this.#inbox.last,
        outbox: this.#outbox.toJSON(),
      });
      try {
        await this.#storage.set(this.#key, state);
      } catch (error) {
        console.warn("Cannot save the client's state:", error);
      }
    }
    this.#saving = void 0;
  }
};

// client/outbox.ts
var SendError = class extends Error {
  /** The item's cid. */
  cid;
  /** The server's error code, or `epoch_changed`, `connection_lost` or `closed`. */
  code;
  /** Names the item, the error code and what was wrong. */
  constructor(cid, code, message) {
    super(`Cannot send ${cid}: ${message || code}`);
    this.name = "SendError";
    this.cid = cid;
    this.code = code;
  }
};
function handle() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {
  });
  return {
    promise,
    resolve,
    reject,
  };
}
function readPosition(value) {
  if (!isObject(value) || typeof value.epoch !== "string" || !isId(value.id)) return void 0;
  return {
    epoch: value.epoch,
    id: value.id,
  };
}
function readItem(value) {
  if (!isObject(value) || typeof value.cid !== "string") return null;
  const kind = value.kind;
  if (kind !== "message" && kind !== "edit" && kind !== "delete") return null;
  const item = {
    cid: value.cid,
    kind,
    createdAt: typeof value.createdAt === "number" ? value.createdAt : 0,
    attempts: isId(value.attempts) ? value.attempts : 0,
    state: "queued",
  };
  if (typeof value.text === "string") item.text = value.text;
  const replyTo = readPosition(value.replyTo);
  if (replyTo) item.replyTo = replyTo;
  const target = readPosition(value.target);
  if (target) item.target = target;
  if (kind !== "delete" && item.text === void 0) return null;
  if (kind !== "message" && item.target === void 0) return null;
  return item;
}
var Outbox = class {
  #items = [];
  #handles = /* @__PURE__ */ new Map();
  /** The items, oldest first. */
  get items() {
    return this.#items;
  }
  /** Items not acked yet. */
  get size() {
    return this.#items.length;
  }
  /** Adds an item at the end. */
  add(item) {
    if (this.#handles.has(item.cid)) {
      throw new RangeError(`Cannot queue ${item.cid}: that cid is already in the outbox`);
    }
    const h = handle();
    this.#items.push(item);
    this.#handles.set(item.cid, h);
    return {
      cid: item.cid,
      delivered: h.promise,
    };
  }
  /** The item with this cid. */
  get(cid) {
    return this.#items.find((item) => item.cid === cid);
  }
  /** The promise of an item's ack. */
  delivered(cid) {
    return this.#handles.get(cid)?.promise;
  }
  #take(cid) {
    const index = this.#items.findIndex((item2) => item2.cid === cid);
    const h = this.#handles.get(cid);
    if (index < 0 || !h) return void 0;
    const [item] = this.#items.splice(index, 1);
    this.#handles.delete(cid);
    return [
      item,
      h,
    ];
  }
  /** The server acked an item: it leaves, its promise resolves. */
  settle(delivery) {
    const taken = this.#take(delivery.cid);
    if (!taken) return void 0;
    taken[1].resolve(delivery);
    return taken[0];
  }
  /** An item failed for good: it leaves, its promise rejects. */
  fail(cid, code, message) {
    const taken = this.#take(cid);
    if (!taken) return void 0;
    const error = new SendError(cid, code, message);
    taken[1].reject(error);
    return [
      taken[0],
      error,
    ];
  }
  /** The first item waiting to be sent, unless an earlier one is held back. */
  next() {
    return this.#items.find((item) => item.state === "queued");
  }
  /** Items in flight. */
  inFlight() {
    let count = 0;
    for (const item of this.#items) if (item.state === "sent") count++;
    return count;
  }
  /**
   * The connection ended: items in flight wait for the next one. Returns
   * those that have now been in flight on `maxAttempts` lost connections.
   */
  requeue(maxAttempts) {
    const worn = [];
    for (const item of this.#items) {
      if (item.state !== "sent") continue;
      item.state = "queued";
      item.attempts++;
      if (item.attempts >= maxAttempts) worn.push(item);
    }
    return worn;
  }
  /** The items to store: files are left out (their bytes live in memory only). */
  toJSON() {
    return this.#items.filter((item) => item.kind !== "file").map((item) => ({
      cid: item.cid,
      kind: item.kind,
      text: item.text,
      replyTo: item.replyTo,
      target: item.target,
      createdAt: item.createdAt,
      attempts: item.attempts,
    }));
  }
  /** Puts stored items back before the ones queued since; returns how many came back. */
  restore(values) {
    if (!Array.isArray(values)) return 0;
    const restored = [];
    for (const value of values) {
      const item = readItem(value);
      if (!item || this.#handles.has(item.cid)) continue;
      restored.push(item);
      this.#handles.set(item.cid, handle());
    }
    this.#items = [
      ...restored,
      ...this.#items,
    ];
    return restored.length;
  }
};

// client/pacer.ts
var TokenBucket = class {
  #rate;
  #burst;
  #tokens;
  #at;
  #now;
  /**
   * @param rate Tokens a second; null for no limit.
   * @param burst Most tokens held, and the tokens at the start.
   * @param now The clock, in ms.
   */
  constructor(rate, burst, now = Date.now) {
    this.#rate = rate;
    this.#burst = Math.max(1, burst ?? 1);
    this.#tokens = this.#burst;
    this.#now = now;
    this.#at = now();
  }
  #refill() {
    if (this.#rate === null) return;
    const now = this.#now();
    this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#at) * this.#rate / 1e3);
    this.#at = now;
  }
  /** Takes a token if one is there. */
  take() {
    if (this.#rate === null) return true;
    this.#refill();
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
  /** Milliseconds until a token is there (0 when one is). */
  wait() {
    if (this.#rate === null) return 0;
    this.#refill();
    return this.#tokens >= 1 ? 0 : Math.ceil((1 - this.#tokens) * 1e3 / this.#rate);
  }
};

// client/sender.ts
var REPLAY_WAIT_MS = 3e3;
var Sender = class {
  /** The unacked items. */
  outbox = new Outbox();
  #host;
  #retryMs;
  #welcome = null;
  #bucket = new TokenBucket(null, null);
  #holdUntil = 0;
  #replayLeft = 0;
  #timer;
  #replayTimer;
  /**
   * @param host The client.
   * @param retryMs Wait before a resend after a transient error (plus up to as much jitter).
   */
  constructor(host, retryMs) {
    this.#host = host;
    this.#retryMs = retryMs;
  }
  /**
   * A connection was welcomed: pace with its limits, fail edits and deletes
   * of another epoch, and send once its replay is in.
   */
  start(welcome) {
    this.#welcome = welcome;
    this.#bucket = new TokenBucket(welcome.limits.rate, welcome.limits.burst);
    this.#holdUntil = 0;
    this.#replayLeft = welcome.replay;
    clearTimeout(this.#replayTimer);
    if (welcome.replay > 0) {
      this.#replayTimer = setTimeout(() => {
        this.#replayTimer = void 0;
        this.#replayLeft = 0;
        this.pump();
      }, REPLAY_WAIT_MS);
    }
    for (
      const item of [
        ...this.outbox.items,
      ]
    ) {
      if (item.target && item.target.epoch !== welcome.epoch) {
        this.fail(item.cid, "epoch_changed", "the message it changes is gone (new epoch)");
      }
    }
    this.pump();
  }
  /** A stored entry of the replay came; after the last one the outbox goes. */
  replayed() {
    if (this.#replayLeft === 0) return;
    this.#replayLeft--;
    if (this.#replayLeft > 0) return;
    clearTimeout(this.#replayTimer);
    this.#replayTimer = void 0;
    this.pump();
  }
  /** Adds an item and sends it when it may. */
  queue(item) {
    const pending = this.outbox.add(item);
    this.#host.changed();
    this.pump();
    return pending;
  }
  /** The server stored an item (an ack, or the broadcast of our own message). */
  settle(delivery) {
    const item = this.outbox.settle(delivery);
    if (!item) return;
    this.#host.changed();
    this.#host.sent(item, delivery);
    this.pump();
  }
  /** An item failed for good. */
  fail(cid, code, message) {
    const failed = this.outbox.fail(cid, code, message);
    if (!failed) return;
    this.#host.changed();
    this.#host.failed(failed[0], failed[1]);
  }
  /** A transient error: resend the item, with the same cid, a little later. */
  retryLater(item) {
    item.state = "queued";
    this.#holdUntil = Date.now() + this.#retryMs + Math.random() * this.#retryMs;
    this.pump();
  }
  /** The connection ended: items in flight wait for the next one, or fail once worn out. */
  lost(maxAttempts) {
    this.stop();
    clearTimeout(this.#replayTimer);
    this.#replayTimer = void 0;
    this.#welcome = null;
    for (const item of this.outbox.requeue(maxAttempts)) {
      this.fail(item.cid, "connection_lost", "the connection kept dropping while it was sent");
    }
    this.#host.changed();
  }
  /** Stops the pacing timer. */
  stop() {
    clearTimeout(this.#timer);
    this.#timer = void 0;
  }
  #later(ms) {
    this.#timer = setTimeout(() => {
      this.#timer = void 0;
      this.pump();
    }, ms);
  }
  /** Sends what it may now, and comes back when it may send more. */
  pump() {
    this.stop();
    const ws = this.#host.socket();
    const welcome = this.#welcome;
    if (!ws || !welcome || this.#replayLeft > 0) return;
    const wait = this.#holdUntil - Date.now();
    if (wait > 0) return this.#later(wait);
    const { burst, queue } = welcome.limits;
    const window = burst !== null && queue !== null ? burst + queue : Infinity;
    for (let item = this.outbox.next(); item; item = this.outbox.next()) {
      if (this.outbox.inFlight() >= window) return;
      if (!this.#bucket.take()) return this.#later(this.#bucket.wait());
      if (!this.#transmit(ws, item, welcome.epoch)) return;
    }
  }
  #transmit(ws, item, epoch) {
    if (item.target && item.target.epoch !== epoch) {
      this.fail(item.cid, "epoch_changed", "the message it changes is gone (new epoch)");
      return true;
    }
    const replyTo = item.replyTo?.epoch === epoch ? item.replyTo.id : void 0;
    const { cid, kind, text } = item;
    try {
      if (kind === "file" && item.file) {
        const { name, mime, size, data } = item.file;
        ws.send(JSON.stringify({
          type: "file",
          cid,
          name,
          mime,
          size,
          reply_to: replyTo,
        }));
        ws.send(data);
      } else if (kind === "message") {
        ws.send(JSON.stringify({
          type: "message",
          cid,
          text,
          reply_to: replyTo,
        }));
      } else {
        ws.send(JSON.stringify({
          type: kind,
          cid,
          id: item.target?.id,
          text,
        }));
      }
    } catch {
      return false;
    }
    item.state = "sent";
    return true;
  }
};

// client/storage.ts
var MemoryStorage = class {
  #values = /* @__PURE__ */ new Map();
  /** Reads a value. */
  get(key) {
    return Promise.resolve(this.#values.get(key) ?? null);
  }
  /** Writes a value. */
  set(key, value) {
    this.#values.set(key, value);
    return Promise.resolve();
  }
  /** Removes a value. */
  delete(key) {
    this.#values.delete(key);
    return Promise.resolve();
  }
};
var WebStorage = class {
  #storage;
  #prefix;
  /**
   * Wraps a Web Storage object.
   *
   * @param storage Defaults to `globalThis.localStorage`.
   * @param prefix Put before every key.
   */
  constructor(storage, prefix = "") {
    const found = storage ?? globalThis.localStorage;
    if (!found) throw new TypeError("Cannot use WebStorage: no localStorage here");
    this.#storage = found;
    this.#prefix = prefix;
  }
  /** Reads a value. */
  get(key) {
    try {
      return Promise.resolve(this.#storage.getItem(this.#prefix + key));
    } catch {
      return Promise.resolve(null);
    }
  }
  /** Writes a value; a full store keeps the old one. */
  set(key, value) {
    try {
      this.#storage.setItem(this.#prefix + key, value);
    } catch (error) {
      console.warn(`Cannot keep ${key} in localStorage:`, error);
    }
    return Promise.resolve();
  }
  /** Removes a value. */
  delete(key) {
    try {
      this.#storage.removeItem(this.#prefix + key);
    } catch {
    }
    return Promise.resolve();
  }
};
var IndexedDBStorage = class {
  #db;
  #name;
  #store;
  /**
   * Names the database and store; nothing opens until the first read or write.
   *
   * @param name Database name.
   * @param store Object store name.
   */
  constructor(name = "parley", store = "kv") {
    this.#name = name;
    this.#store = store;
  }
  #open() {
    this.#db ??= new Promise((resolve, reject) => {
      const factory = globalThis.indexedDB;
      if (!factory) {
        reject(new TypeError("Cannot use IndexedDBStorage: no indexedDB here"));
        return;
      }
      const request = factory.open(this.#name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(this.#store);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return this.#db;
  }
  async #run(mode, action) {
    const db = await this.#open();
    return await new Promise((resolve, reject) => {
      const transaction = db.transaction(this.#store, mode);
      const request = action(transaction.objectStore(this.#store));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  }
  /** Reads a value. */
  async get(key) {
    const value = await this.#run("readonly", (store) => store.get(key));
    return typeof value === "string" ? value : null;
  }
  /** Writes a value. */
  async set(key, value) {
    await this.#run("readwrite", (store) => store.put(value, key));
  }
  /** Removes a value. */
  async delete(key) {
    await this.#run("readwrite", (store) => store.delete(key));
  }
  /** Closes the database connection, if one was opened. */
  async close() {
    const db = this.#db;
    this.#db = void 0;
    if (db) (await db.catch(() => null))?.close();
  }
};

// client/client.ts
var TYPING_EVERY_MS = 2e3;
function socketUrl(url) {
  const parsed = new URL(url);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  else if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new TypeError(
      `Cannot connect to ${parsed.href}: expected a ws:, wss:, http: or https: URL`,
    );
  }
  parsed.hash = "";
  return parsed.href;
}
function storageKey(url) {
  const { origin, pathname } = new URL(url);
  return `parley:${origin}${pathname}`;
}
var ParleyClient = class extends Emitter {
  #options;
  #connection;
  #room;
  #sender;
  #saved;
  #requests;
  #cidPrefix = randomId(8);
  #cidCount = 0;
  #nick;
  #token;
  #status = {
    state: "connecting",
    attempt: 0,
  };
  #welcome = null;
  #typingSentAt = -Infinity;
  #waiters = [];
  #closed;
  /**
   * Creates a client; nothing connects until {@linkcode ParleyClient.connect}.
   *
   * @param url The room's WebSocket URL, such as `ws://host:8000/dev` (`http(s):` is taken as `ws(s):`).
   * @param options Nick or token, client id, storage, WebSocket constructor, timings.
   */
  constructor(url, options = {}) {
    super();
    this.#options = options;
    if (options.clientId !== void 0 && !CLIENT_PATTERN.test(options.clientId)) {
      throw new RangeError(
        `Cannot create a ParleyClient: clientId is ${
          JSON.stringify(options.clientId)
        }, expected 8 to 64 characters from A-Z a-z 0-9 _ -`,
      );
    }
    this.#nick = options.nick;
    const changed = () => this.#saved.persist();
    this.#connection = new Connection(socketUrl(url), options, {
      prepare: () => this.#saved.load(),
      opened: (ws, token) => {
        this.#token = token;
        this.#hello(ws);
      },
      frame: (data) => this.#onFrame(data),
      lost: () => this.#lost(),
      status: (status) => this.#onStatus(status),
    });
    this.#sender = new Sender({
      socket: () => this.#connection.joined,
      sent: (item, delivery) =>
        this.emit("sent", {
          item,
          delivery,
        }),
      failed: (item, error) =>
        this.emit("failed", {
          item,
          error,
        }),
      changed,
    }, options.retryMs ?? 1e3);
    this.#room = new RoomView({
      me: () => this.me,
      emit: (type, payload) => this.emit(type, payload),
      stored: (delivery) => this.#sender.settle(delivery),
      entry: () => this.#sender.replayed(),
      changed,
    });
    this.#saved = new SavedState(
      options.storage ?? new MemoryStorage(),
      options.storageKey ?? storageKey(socketUrl(url)),
      this.#room.inbox,
      this.#sender.outbox,
      options.clientId,
    );
    this.#requests = new Requests(options.requestTimeoutMs ?? 15e3);
  }
  // ------------------------------------------------------------ state
  /** The connection's state, as the last `status` event said it. */
  get status() {
    return this.#status;
  }
  /** The latest `welcome`, or null before the first. */
  get welcome() {
    return this.#welcome;
  }
  /** This member, once welcomed. */
  get me() {
    return this.#welcome?.you ?? null;
  }
  /** The server's limits, once welcomed. */
  get limits() {
    return this.#welcome?.limits ?? null;
  }
  /** The client identity in use (known once `connect()` has loaded it). */
  get clientId() {
    return this.#saved.clientId;
  }
  /** The last entry seen: where a reconnect resumes from. */
  get position() {
    return this.#room.inbox.last;
  }
  /** The members listed, by id. */
  get members() {
    return this.#room.roster.members;
  }
  /** Members in the room (the server's count). */
  get memberCount() {
    return this.#room.roster.count;
  }
  /** Whether members exist that are not listed: ask with {@linkcode ParleyClient.loadMembers}. */
  get membersIncomplete() {
    return this.#room.roster.incomplete;
  }
  /** Items sent and not acked yet, oldest first. */
  get outbox() {
    return this.#sender.outbox.items;
  }
  /** Members whose typing indicator has not run out. */
  get typists() {
    return this.#room.typists;
  }
  // ------------------------------------------------------------ lifecycle
  /**
   * Connects (or waits for the connection under way) and resolves with the
   * next `welcome`. Rejects when the client is closed for good first.
   */
  connect() {
    if (this.#connection.final) {
      return Promise.reject(new Error("Cannot connect: the client is closed"));
    }
    if (this.#connection.joined && this.#welcome) return Promise.resolve(this.#welcome);
    const welcomed = new Promise((resolve, reject) => {
      this.#waiters.push({
        resolve,
        reject,
      });
    });
    if (!this.#connection.busy) void this.#connection.open();
    return welcomed;
  }
  /**
   * Closes for good: no reconnect. Unacked items stay in storage for the next
   * client with the same storage. Resolves once the socket is closed and
   * storage written.
   */
  close() {
    this.#closed ??= (async () => {
      await this.#connection.close();
      await this.#saved.flush();
    })();
    return this.#closed;
  }
  #hello(ws) {
    const hello = {
      type: "hello",
      client: this.#saved.clientId,
      batch: true,
    };
    if (this.#token !== void 0) hello.token = this.#token;
    if (this.#nick !== void 0 && this.#welcome?.you.verified !== true) hello.nick = this.#nick;
    const last = this.#room.inbox.last;
    if (last !== null) hello.last = last;
    this.#send(ws, hello);
  }
  /** The socket is gone: what was in flight waits for the next one. */
  #lost() {
    this.#room.inbox.flush();
    this.#sender.lost(this.#options.maxAttempts ?? 10);
    this.#requests.abort("the connection ended before the answer came");
  }
  #onStatus(status) {
    this.#status = status;
    if (status.state === "closed") {
      const { code, reason } = status;
      const error = new Error(`Cannot connect: closed with ${code}${reason ? ` (${reason})` : ""}`);
      for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    }
    this.emit("status", status);
  }
  // ------------------------------------------------------------ receiving
  #onFrame(data) {
    try {
      if (typeof data === "string") {
        const envelope = JSON.parse(data);
        if (isObject(envelope)) this.#dispatch(envelope);
      } else if (data instanceof ArrayBuffer) {
        const bytes = new Uint8Array(data);
        if (!this.#room.inbox.bytes(bytes)) this.emit("binary", bytes);
      }
    } catch (error) {
      console.error("Cannot handle a frame from the server:", error);
    }
  }
  #dispatch(envelope) {
    switch (envelope.type) {
      case "welcome":
        return this.#onWelcome(envelope);
      case "batch":
        if (!Array.isArray(envelope.events)) return;
        for (const event of envelope.events) {
          if (!isObject(event) || event.type === "batch") continue;
          try {
            this.#dispatch(event);
          } catch (error) {
            console.error("Cannot handle an event of a batch:", error);
          }
        }
        return;
      case "message":
      case "file":
        return this.#room.message(envelope);
      case "edit":
      case "delete":
        return this.#room.change(envelope);
      case "typing":
        return this.#room.typing(envelope, this.limits?.typing ?? 6e3);
      case "presence":
      case "join":
      case "leave":
      case "rename":
        return this.#room.presence(envelope, (member) => {
          if (this.#welcome) this.#welcome.you = member;
          this.#nick = member.nick;
        });
      case "kick":
        return this.#room.kick(envelope);
      case "ack": {
        const { cid, id, epoch } = envelope;
        if (typeof cid !== "string" || !isId(id) || typeof epoch !== "string") return;
        return this.#sender.settle({
          cid,
          id,
          epoch,
          duplicate: envelope.duplicate === true,
        });
      }
      case "error":
        return this.#onError(envelope);
      case "history": {
        const page = readHistoryPage(envelope);
        if (!page) return;
        this.#room.history(page);
        this.emit("history", page);
        const cid = typeof envelope.cid === "string" ? envelope.cid : void 0;
        return this.#requests.answerHistory(cid, page);
      }
      case "members": {
        const page = readMembersPage(envelope);
        if (!page) return;
        const { first, resolve } = this.#requests.answerMembers(page);
        this.#room.roster.page(page, first, this.me);
        this.emit("members", page);
        return resolve();
      }
      default:
        return;
    }
  }
  #onWelcome(envelope) {
    const welcome = readWelcome(envelope);
    if (!welcome) return;
    const previous = this.#room.inbox.last;
    this.#welcome = welcome;
    this.#nick = welcome.you.nick;
    this.#room.welcome(welcome);
    this.#connection.welcomed();
    this.emit("welcome", welcome);
    if (welcome.recovered === false) {
      const changed = previous !== null && previous.epoch !== welcome.epoch;
      const reason = changed ? "epoch_changed" : "history_lost";
      this.emit("gap", {
        reason,
        previous,
        epoch: welcome.epoch,
      });
    }
    for (const waiter of this.#waiters.splice(0)) waiter.resolve(welcome);
    this.#sender.start(welcome);
  }
  #onError(envelope) {
    const error = readError(envelope);
    if (!error) return;
    const refusal = refusalCode(error);
    if (refusal !== null) {
      this.emit("error", error);
      this.#connection.lost(refusal, error.message);
      return;
    }
    const { cid } = error;
    if (cid !== void 0 && this.#requests.hasHistory(cid)) {
      return this.#requests.refuseHistory(cid, error.message || error.code);
    }
    const item = cid === void 0 ? void 0 : this.#sender.outbox.get(cid);
    if (item) {
      if (error.retry) this.#sender.retryLater(item);
      else this.#sender.fail(item.cid, error.code, error.message);
      return;
    }
    if (!this.#connection.joined && error.code === "bad_last") {
      const previous = this.#room.inbox.last;
      this.#room.inbox.last = null;
      this.#saved.persist();
      this.emit("gap", {
        reason: "bad_last",
        previous,
        epoch: previous?.epoch ?? "",
      });
      this.#connection.restart();
      return;
    }
    if (cid === void 0 && this.#requests.membersWaiting && /^members\b/.test(error.message)) {
      this.#requests.refuseMembers(error.message);
    }
    this.emit("error", error);
  }
  // ------------------------------------------------------------ sending
  #send(ws, envelope) {
    if (ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(envelope));
      return true;
    } catch {
      return false;
    }
  }
  #queue(item) {
    if (this.#connection.final) throw new Error("Cannot send: the client is closed");
    this.#cidCount++;
    return this.#sender.queue({
      ...item,
      cid: `${this.#cidPrefix}-${this.#cidCount}`,
      createdAt: Date.now(),
      attempts: 0,
      state: "queued",
    });
  }
  #checkText(text, what) {
    if (typeof text !== "string" || text.length === 0) {
      throw new TypeError(`Cannot ${what}: text must be a non-empty string`);
    }
    const max = this.limits?.text;
    const length = codePoints(text);
    if (max !== void 0 && length > max) {
      throw new RangeError(`Cannot ${what}: text is ${length} characters, the limit is ${max}`);
    }
  }
  #position(id, what) {
    if (id === void 0) return void 0;
    const epoch = this.#welcome?.epoch ?? this.#room.inbox.last?.epoch;
    if (!isId(id) || epoch === void 0) {
      throw new RangeError(`Cannot ${what}: ${id} is not a message id of a known epoch`);
    }
    return {
      epoch,
      id,
    };
  }
  /**
   * Sends a text message, now or once connected; resent with the same cid
   * after a reconnect until the server acks it.
   *
   * @param options `replyTo`: the id of the message this one answers.
   * @throws {RangeError} When the text is longer than the server allows.
   */
  send(text, options = {}) {
    this.#checkText(text, "send");
    return this.#queue({
      kind: "message",
      text,
      replyTo: this.#position(options.replyTo, "reply"),
    });
  }
  /**
   * Sends a file: a `file` envelope and its bytes. Kept in memory until acked
   * (never in storage).
   */
  sendFile(file, options = {}) {
    const max = this.limits?.bytes;
    const size = file.data.byteLength;
    if (max !== void 0 && size > max) {
      throw new RangeError(`Cannot send ${file.name}: it is ${size} bytes, the limit is ${max}`);
    }
    const mime = file.mime ?? "application/octet-stream";
    return this.#queue({
      kind: "file",
      file: {
        name: file.name,
        mime,
        size,
        data: file.data,
      },
      replyTo: this.#position(options.replyTo, "reply"),
    });
  }
  /** Edits one of this member's text messages. */
  edit(id, text) {
    this.#checkText(text, "edit");
    return this.#queue({
      kind: "edit",
      text,
      target: this.#position(id, "edit"),
    });
  }
  /** Deletes one of this member's messages (a moderator: anyone's). */
  delete(id) {
    return this.#queue({
      kind: "delete",
      target: this.#position(id, "delete"),
    });
  }
  /**
   * Tells the room this member is typing. Call it on every keystroke: it
   * sends at most one signal every 2 seconds. Returns whether it sent one.
   */
  typing() {
    const ws = this.#connection.joined;
    const now = Date.now();
    if (!ws || now - this.#typingSentAt < TYPING_EVERY_MS) return false;
    if (this.#welcome?.access !== "write") return false;
    if (
      !this.#send(ws, {
        type: "typing",
      })
    ) return false;
    this.#typingSentAt = now;
    return true;
  }
  /**
   * Asks for older messages: `before` defaults to the oldest message seen in
   * this epoch (the head + 1 when none was).
   */
  loadOlder(options = {}) {
    const ws = this.#connection.joined;
    if (!ws || !this.#welcome) {
      return Promise.reject(new Error("Cannot load older messages: not connected"));
    }
    const before = options.before ?? this.#room.oldest ?? this.#welcome.head + 1;
    const limit = Math.min(options.limit ?? 50, this.#welcome.limits.page);
    this.#cidCount++;
    const cid = `${this.#cidPrefix}-h${this.#cidCount}`;
    return this.#requests.history(cid, () =>
      this.#send(ws, {
        type: "history",
        before,
        limit,
        cid,
      }));
  }
  /**
   * Asks for the next page of members (`restart`: the first page). The page
   * is added to {@linkcode ParleyClient.members}.
   */
  loadMembers(options = {}) {
    const ws = this.#connection.joined;
    if (!ws) return Promise.reject(new Error("Cannot load members: not connected"));
    const first = options.restart === true;
    const envelope = {
      type: "members",
      limit: options.limit ?? 100,
    };
    const after = this.#room.roster.after;
    if (!first && after !== void 0) envelope.after = after;
    return this.#requests.members(first, () => this.#send(ws, envelope));
  }
  /**
   * Takes another nickname (open mode). Before a welcome (the last one was
   * refused with `nick_taken` or `bad_nick`), says `hello` again with it.
   */
  rename(nick) {
    this.#nick = nick;
    const joined = this.#connection.joined;
    const ws = this.#connection.socket;
    if (joined) {
      this.#send(joined, {
        type: "nick",
        nick,
      });
    } else if (ws && ws.readyState === 1) this.#hello(ws);
  }
  /**
   * Removes a member (moderators): closes its sockets with 4403 and, with
   * `minutes`, bans it that long. Errors come as `error` events with the cid.
   *
   * @returns The request's cid.
   */
  kick(memberId, options = {}) {
    const ws = this.#connection.joined;
    if (!ws) throw new Error("Cannot remove a member: not connected");
    this.#cidCount++;
    const cid = `${this.#cidPrefix}-k${this.#cidCount}`;
    this.#send(ws, {
      type: "kick",
      cid,
      member: memberId,
      ...options,
    });
    return cid;
  }
  /** The promise of an outbox item's ack (for items restored from storage, too). */
  delivered(cid) {
    return this.#sender.outbox.delivered(cid);
  }
};
export {
  Backoff,
  Emitter,
  IndexedDBStorage,
  MemoryStorage,
  ParleyClient,
  SendError,
  SUBPROTOCOL,
  TRANSIENT_ERRORS,
  WebStorage,
};
