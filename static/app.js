// @ts-check
/**
 * The Parley chat page: one rich-mode (`parley.v1`) WebSocket per open room,
 * resumable history, exactly-once resends and files.
 *
 * User content reaches the DOM only through `textContent` and safe attributes.
 * What the page does with edits, deletes, replies, typing and scroll-back
 * without the DOM lives in `lifecycle.js`, `typing.js` and `scrollback.js`;
 * invite tokens, refusals and moderation wording in `access.js`; the member
 * list, presence and member pages in `roster.js`.
 *
 * The page asks for `batch` frames: each holds envelopes that would otherwise
 * have come one by one, and is handled exactly as those would have been.
 *
 * @module
 */

import {
  BAN_MINUTES,
  describeKick,
  describeRefusal,
  hasControl,
  MAX_REASON_LENGTH,
  nickProblem,
  nickRefusal,
  readKick,
  refusalCloseCode,
  tokenFromHash,
} from "./access.js";
import { applyChange, ChangeMemory, quoteOf, readChange, refusal } from "./lifecycle.js";
import {
  describePresence,
  MEMBERS_TIMEOUT_MS,
  readMembersPage,
  readPresence,
  Roster,
} from "./roster.js";
import { ANSWER_TIMEOUT_MS, readHistoryPage, ScrollBack } from "./scrollback.js";
import { describeTyping, Throttle, TypingList } from "./typing.js";
import { codePoints, isId, isObject, readMember } from "./wire.js";

/** @typedef {import("./wire.js").Member} Member */
/** @typedef {ReturnType<typeof setTimeout>} Timer */
/**
 * A file as shown in the list. `url` is a blob: URL owned by the entry.
 * `unloaded` marks a file from a scroll-back page, which brings no bytes.
 * @typedef {{ name: string, mime: string, size: number, omitted?: boolean, url?: string,
 *   gone?: boolean, missing?: boolean, unloaded?: boolean }} FileInfo
 */
/**
 * A message of the room, text or file, in server order. `edited` is the time
 * of its latest edit; a deleted one keeps neither text nor file, and is
 * `moderated` when someone other than its author deleted it. A `note` is no
 * message but something that happened (a member was removed), shown after
 * the message it followed and never stored.
 * @typedef {{ key: string, id: number, epoch: string, ts: number, from: Member | null,
 *   cid: string, text?: string, file?: FileInfo, stray?: boolean, replyTo?: number,
 *   edited?: number, deleted?: boolean, moderated?: boolean, note?: string }} Entry
 */
/**
 * A message of ours that the server has not acked yet. `reply` is the message
 * it answers, in the epoch it was chosen in.
 * @typedef {{ cid: string, ts: number, text?: string,
 *   file?: { name: string, mime: string, size: number, data: ArrayBuffer, url: string },
 *   reply?: { id: number, epoch: string },
 *   sentOn: WebSocket | null, attempts: number, failed?: string }} Outgoing
 */
/**
 * An edit or delete of ours in flight. Once acked (`acked` holds the id of
 * its entry) it stays until that entry arrives, so the old text never flashes.
 * @typedef {{ cid: string, kind: "edit" | "delete", target: number, epoch: string,
 *   text?: string, sentOn: WebSocket | null, acked?: number }} PendingChange
 */
/**
 * Everything the page knows about one room. `head` is the newest id the
 * welcome named; `late` holds changes to messages not loaded.
 * @typedef {{ name: string, epoch: string | null, lastId: number, head: number,
 *   entries: Entry[], keys: Map<string, Entry>, outbox: Outgoing[],
 *   changes: PendingChange[], older: ScrollBack, late: ChangeMemory,
 *   saveTimer: Timer | undefined }} RoomState
 */
/**
 * What the message box is for besides a new message.
 * @typedef {{ kind: "reply", key: string } | { kind: "edit", key: string, draft: string }} ComposeMode
 */
/**
 * A `file` envelope whose binary frame has not arrived yet. `entry` is null when
 * the bytes are already known (our own file, or a duplicate) and are dropped.
 * Alone, a `file` is followed by its bytes at once; a batch frame is followed by
 * the bytes of each of its files that is not `omitted`, in order.
 * @typedef {{ epoch: string, id: number, entry: Entry | null }} ExpectedFile
 */

const SUBPROTOCOL = "parley.v1";
const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const CLIENT_PATTERN = /^[A-Za-z0-9_-]{8,64}$/;
const MIME_PATTERN = /^[\w.+-]+\/[\w.+-]+$/;
const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const MAX_FILE_NAME_LENGTH = 255;
/** The server's default MAX_MESSAGE_BYTES; a larger file would be refused anyway. */
const MAX_FILE_BYTES = 2 * 1024 * 1024;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15_000;
/** A connection must stay up this long after `welcome` before backoff starts over. */
const STABLE_MS = 5_000;
const PING_EVERY_MS = 20_000;
const PONG_TIMEOUT_MS = 15_000;
/** Wait before resending a message the server could not take right now. */
const RETRY_MS = 1_000;
/** Connections that may die under an unacked message before it is given up. */
const MAX_SEND_ATTEMPTS = 5;
const MEMORY_ENTRIES = 1000;
const STORED_ENTRIES = 200;
const STATE_WORDS = ["connecting", "open", "closing", "closed"];
const READ_ONLY_WORDS = "This room is read-only for you.";
const RECOVERY_NOTICE = "Could not resume: some messages may be missing.";
/** Typing signals sent at most this often while someone types on. */
const TYPING_EVERY_MS = 3_000;
/** The server drops a connection's typing signals closer together than this. */
const SERVER_TYPING_INTERVAL_MS = 2_000;
/** How long an indicator lasts when the server does not say. */
const DEFAULT_TYPING_TTL_MS = 6_000;
/** Error codes after which the same envelope may succeed later (older servers omit `retry`). */
const TRANSIENT_ERRORS = new Set(["rate_limited", "unavailable"]);

// ---------------------------------------------------------------- DOM

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @param {{ new (): T, prototype: T }} type
 * @returns {T}
 */
function byId(id, type) {
  const element = document.getElementById(id);
  if (!(element instanceof type)) throw new TypeError(`Cannot start: #${id} is missing`);
  return element;
}

const ui = {
  roomName: byId("room-name", HTMLElement),
  roomForm: byId("room-form", HTMLFormElement),
  roomInput: byId("room-input", HTMLInputElement),
  nickButton: byId("nick-button", HTMLButtonElement),
  nickLabel: byId("nick-label", HTMLElement),
  status: byId("status", HTMLElement),
  reconnect: byId("reconnect", HTMLButtonElement),
  notice: byId("notice", HTMLElement),
  noticeText: byId("notice-text", HTMLElement),
  noticeClose: byId("notice-close", HTMLButtonElement),
  messages: byId("messages", HTMLOListElement),
  historyEdge: byId("history-edge", HTMLLIElement),
  loadOlder: byId("load-older", HTMLButtonElement),
  historyStart: byId("history-start", HTMLElement),
  typing: byId("typing", HTMLElement),
  composeContext: byId("compose-context", HTMLElement),
  composeContextText: byId("compose-context-text", HTMLElement),
  composeCancel: byId("compose-cancel", HTMLButtonElement),
  compose: byId("compose", HTMLFormElement),
  text: byId("text", HTMLTextAreaElement),
  send: byId("send", HTMLButtonElement),
  file: byId("file", HTMLInputElement),
  membersPanel: byId("members-panel", HTMLElement),
  membersToggle: byId("members-toggle", HTMLButtonElement),
  memberCount: byId("member-count", HTMLElement),
  memberTotal: byId("member-total", HTMLElement),
  members: byId("members", HTMLUListElement),
  membersMore: byId("members-more", HTMLButtonElement),
  nickDialog: byId("nick-dialog", HTMLDialogElement),
  nickForm: byId("nick-form", HTMLFormElement),
  nickInput: byId("nick-input", HTMLInputElement),
  nickError: byId("nick-error", HTMLElement),
  nickCancel: byId("nick-cancel", HTMLButtonElement),
  template: byId("message-template", HTMLTemplateElement),
  refusal: byId("refusal", HTMLElement),
  refusalText: byId("refusal-text", HTMLElement),
  tryAgain: byId("try-again", HTMLButtonElement),
  readOnly: byId("read-only", HTMLElement),
  fileButton: byId("file-button", HTMLLabelElement),
  removeForm: byId("remove-form", HTMLFormElement),
  removeWho: byId("remove-who", HTMLElement),
  removeMinutes: byId("remove-minutes", HTMLSelectElement),
  removeReason: byId("remove-reason", HTMLInputElement),
  removeCancel: byId("remove-cancel", HTMLButtonElement),
};

// ---------------------------------------------------------------- storage

/**
 * @param {Storage} storage
 * @param {string} key
 * @returns {string | null}
 */
function load(storage, key) {
  try {
    return storage.getItem(key);
  } catch {
    return null; // storage disabled: the page still works, it just forgets
  }
}

/**
 * @param {Storage} storage
 * @param {string} key
 * @param {string} value
 */
function store(storage, key, value) {
  try {
    storage.setItem(key, value);
  } catch {
    // quota or disabled storage: forgetting is better than failing
  }
}

/**
 * @param {number} length
 * @returns {string}
 */
function randomId(length) {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return Array.from(bytes, (b) => ID_ALPHABET[b & 63]).join("");
}

/** @returns {string} */
function loadClientId() {
  const saved = load(localStorage, "parley.client");
  if (saved && CLIENT_PATTERN.test(saved)) return saved;
  const fresh = randomId(16);
  store(localStorage, "parley.client", fresh);
  return fresh;
}

/**
 * The invite token: one from the address (`#token=...`) replaces the one
 * kept, and leaves the address so it is neither bookmarked nor shared.
 *
 * @returns {string | null}
 */
function takeToken() {
  const { token, hash } = tokenFromHash(location.hash);
  if (token !== null) store(localStorage, "parley.token", token);
  if (hash !== location.hash) {
    history.replaceState(history.state, "", location.pathname + location.search + hash);
  }
  const kept = token ?? load(localStorage, "parley.token");
  // A damaged record is as good as none.
  return kept ? tokenFromHash(`token=${encodeURIComponent(kept)}`).token : null;
}

/** @returns {string | null} */
function loadNick() {
  const saved = load(localStorage, "parley.nick");
  return saved !== null && nickProblem(saved) === null ? saved.trim() : null;
}

// ---------------------------------------------------------------- state

/**
 * The folder the page is served from, with its trailing slash: `/`, or the
 * prefix an app mounted Parley under (`/chat/`). This module sits in it.
 */
const BASE = new URL(".", import.meta.url).pathname;

/** @param {string} pathname */
function roomFromPath(pathname) {
  const first = pathname.startsWith(BASE) ? pathname.slice(BASE.length).split("/")[0] : "";
  return ROOM_PATTERN.test(first) ? first : "lobby";
}

/** @param {string} room */
function pathOfRoom(room) {
  return room === "lobby" && location.pathname === BASE ? BASE : BASE + room;
}

/** @type {Map<string, RoomState>} */
const rooms = new Map();
/** The members of the current room. */
const members = new Roster();
/** @type {Set<string>} Members removed by a moderator whose leave, still to come, goes unsaid. */
const kicked = new Set();
/** @type {Map<string, HTMLLIElement>} entry key to its element, for the current room */
const elements = new Map();
/** @type {Map<string, HTMLLIElement>} cid to the element of a pending message */
const pendingElements = new Map();

const state = {
  room: roomFromPath(location.pathname),
  client: loadClientId(),
  /** The invite token, sent in every hello; null in open mode. */
  token: takeToken(),
  /** True once a welcome accepted the token: a later 4401 means it expired. */
  tokenAccepted: false,
  nick: loadNick(),
  /** A hello was refused for its nickname: the socket waits for another one. */
  needNick: false,
  /** @type {string | null} A `nick` sent while joined and not answered yet. */
  renaming: null,
  /** A per-load prefix so cids never repeat for this client, even across reloads. */
  cidPrefix: randomId(8),
  cidCount: 0,
  /** @type {WebSocket | null} */
  ws: null,
  joined: false,
  /** @type {Member | null} */
  me: null,
  /** @type {ExpectedFile[]} Binary frames to come, in order: a batch announces several. */
  expectedFiles: [],
  attempt: 0,
  /** @type {Timer | undefined} */
  reconnectTimer: undefined,
  /** @type {Timer | undefined} */
  stableTimer: undefined,
  /** @type {ReturnType<typeof setInterval> | undefined} */
  pingTimer: undefined,
  pingSentAt: 0,
  lastFrameAt: 0,
  /** True while the page is being left: no reconnect. */
  leaving: false,
  /** True when the server closed normally (1000): wait for the user. */
  stopped: false,
  /** @type {string | null} Why the server refused us (4401, 4403): no reconnecting. */
  refused: null,
  /** @type {"write" | "read"} What we may do in the room, from `welcome`. */
  access: "write",
  /** True when we moderate the room: Delete on every message, Remove on members. */
  moderator: false,
  /** @type {string | null} The member whose Remove form is open. */
  removing: null,
  /** @type {Map<string, string>} cid of a kick sent to the nickname it removes */
  kicks: new Map(),
  noteCount: 0,
  reconnectWhenVisible: false,
  strayCount: 0,
  /** @type {ComposeMode | null} */
  compose: null,
  /** @type {number | null} The longest text the server takes, from `welcome`. */
  maxText: null,
  typingTtl: DEFAULT_TYPING_TTL_MS,
};

const typists = new TypingList(() => {
  ui.typing.textContent = describeTyping(typists.members);
});
const typingSignal = new Throttle(TYPING_EVERY_MS);

/**
 * @param {string} name
 * @returns {RoomState}
 */
function roomState(name) {
  let room = rooms.get(name);
  if (!room) {
    room = restoreRoom(name);
    rooms.set(name, room);
  }
  return room;
}

/** @returns {RoomState} */
function currentRoom() {
  return roomState(state.room);
}

/**
 * Reads a room's last position and recent messages from sessionStorage, so a
 * reload resumes where it was.
 *
 * @param {string} name
 * @returns {RoomState}
 */
function restoreRoom(name) {
  /** @type {RoomState} */
  const room = {
    name,
    epoch: null,
    lastId: 0,
    head: 0,
    entries: [],
    keys: new Map(),
    outbox: [],
    changes: [],
    older: new ScrollBack(),
    late: new ChangeMemory(),
    saveTimer: undefined,
  };
  try {
    const saved = JSON.parse(load(sessionStorage, `parley.room.${name}`) ?? "null");
    if (!saved || typeof saved.epoch !== "string" || !Number.isSafeInteger(saved.last)) {
      return room;
    }
    room.epoch = saved.epoch;
    room.lastId = saved.last;
    for (const raw of Array.isArray(saved.entries) ? saved.entries : []) {
      const entry = readEntry(raw, saved.epoch);
      if (!entry || room.keys.has(entry.key)) continue;
      // Its bytes came over the socket before the reload; the server keeps them too.
      if (entry.file && !entry.file.omitted) {
        if (state.token === null) entry.file.url = storedFileUrl(name, saved.epoch, entry.id);
        else {
          entry.file.gone = true; // until fetched
          fetchStored(room, entry);
        }
      }
      room.entries.push(entry);
      room.keys.set(entry.key, entry);
    }
    room.entries.sort((a, b) => a.id - b.id);
  } catch {
    // a damaged record is as good as none
  }
  return room;
}

/**
 * Where the server serves a stored file (`GET /<room>/files/<epoch>/<id>`),
 * relative to the page so it follows the page's base path.
 *
 * @param {string} room
 * @param {string} epoch
 * @param {number} id
 */
function storedFileUrl(room, epoch, id) {
  return new URL(
    `${encodeURIComponent(room)}/files/${encodeURIComponent(epoch)}/${id}`,
    location.href,
  ).href;
}

/**
 * Token mode: fetches a stored file with the invite token in a header (a
 * token in a picture's URL would land in proxy logs) and shows it once here.
 * On failure it stays "not kept".
 *
 * @param {RoomState} room
 * @param {Entry} entry
 */
function fetchStored(room, entry) {
  if (!entry.file) return;
  const { mime } = entry.file;
  const headers = { authorization: `Bearer ${state.token}` };
  fetch(storedFileUrl(room.name, entry.epoch, entry.id), { headers })
    .then((response) => response.ok ? response.arrayBuffer() : null)
    .then((data) => {
      // Still the entry shown, and still without bytes of its own.
      if (data && room.keys.get(entry.key) === entry && entry.file && !entry.file.url) {
        attachFile(room, entry, blobUrl(data, mime));
      }
    })
    .catch(() => {});
}

/** @param {RoomState} room */
function scheduleSave(room) {
  if (room.saveTimer) return;
  room.saveTimer = setTimeout(() => saveRoom(room), 250);
}

/** @param {RoomState} room */
function saveRoom(room) {
  clearTimeout(room.saveTimer);
  room.saveTimer = undefined;
  if (room.epoch === null) return;
  const kept = room.entries.filter((e) => !e.stray && e.note === undefined);
  const entries = kept.slice(-STORED_ENTRIES).map((e) => ({
    id: e.id,
    ts: e.ts,
    from: e.from,
    cid: e.cid,
    text: e.text,
    reply_to: e.replyTo,
    edited: e.edited,
    deleted: e.deleted,
    moderated: e.moderated,
    file: e.file && {
      name: e.file.name,
      mime: e.file.mime,
      size: e.file.size,
      omitted: e.file.omitted,
    },
  }));
  const record = { epoch: room.epoch, last: room.lastId, entries };
  store(sessionStorage, `parley.room.${room.name}`, JSON.stringify(record));
}

function saveAll() {
  for (const room of rooms.values()) saveRoom(room);
}

// ---------------------------------------------------------------- envelopes

/**
 * Reads a `message` or `file` envelope (or a stored entry) into an entry.
 *
 * @param {unknown} value
 * @param {string} [epoch] Used when the value has none (stored entries).
 * @returns {Entry | null}
 */
function readEntry(value, epoch) {
  if (!isObject(value)) return null;
  const id = value.id;
  const theEpoch = typeof value.epoch === "string" ? value.epoch : epoch;
  if (typeof id !== "number" || !Number.isSafeInteger(id) || typeof theEpoch !== "string") {
    return null;
  }
  /** @type {Entry} */
  const entry = {
    key: entryKey(theEpoch, id),
    id,
    epoch: theEpoch,
    ts: typeof value.ts === "number" ? value.ts : Date.now(),
    from: readMember(value.from),
    cid: typeof value.cid === "string" ? value.cid : "",
  };
  if (isId(value.reply_to)) entry.replyTo = value.reply_to;
  if (value.deleted === true) {
    entry.deleted = true;
    if (value.moderated === true) entry.moderated = true; // a stored entry
    return entry;
  }
  if (typeof value.text === "string") {
    entry.text = value.text;
    if (typeof value.edited === "number") entry.edited = value.edited;
    return entry;
  }
  const file = isObject(value.file) ? value.file : value;
  if (typeof file.name === "string") {
    entry.file = {
      name: file.name,
      mime: typeof file.mime === "string" ? file.mime : "application/octet-stream",
      size: typeof file.size === "number" ? file.size : 0,
      omitted: file.omitted === true,
    };
    return entry;
  }
  return null;
}

/**
 * @param {string} epoch
 * @param {number} id
 */
function entryKey(epoch, id) {
  return `${epoch}:${id}`;
}

// ---------------------------------------------------------------- rendering

/** @param {number} ts */
function formatTime(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** @param {number} bytes */
function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/** @returns {HTMLLIElement} */
function cloneMessage() {
  const fragment = /** @type {DocumentFragment} */ (ui.template.content.cloneNode(true));
  const li = fragment.querySelector("li");
  if (!(li instanceof HTMLLIElement)) throw new TypeError("Cannot render: template has no <li>");
  return li;
}

/**
 * @param {HTMLElement} li
 * @param {string} selector
 * @returns {HTMLElement}
 */
function part(li, selector) {
  const element = li.querySelector(selector);
  if (!(element instanceof HTMLElement)) throw new TypeError(`Cannot render: no ${selector}`);
  return element;
}

/**
 * Fills the body of a message with its text or its file.
 *
 * @param {HTMLElement} body
 * @param {{ text?: string, file?: FileInfo, deleted?: boolean, moderated?: boolean }} content
 */
function fillBody(body, content) {
  if (content.deleted) {
    const note = document.createElement("span");
    note.className = "tombstone";
    note.textContent = content.moderated ? "message removed by a moderator" : "message deleted";
    body.append(note);
    return;
  }
  if (content.text !== undefined) {
    body.textContent = content.text;
    return;
  }
  const file = content.file;
  if (!file) return;
  if (file.url && file.mime.startsWith("image/")) {
    const img = document.createElement("img");
    img.setAttribute("alt", file.name);
    img.setAttribute("title", `${file.name} (${formatSize(file.size)})`);
    img.addEventListener("load", () => keepBottom());
    // A file from the server that left history (or was deleted) meanwhile.
    img.addEventListener("error", () => {
      if (file.url?.startsWith("blob:")) return;
      const note = document.createElement("span");
      note.className = "file-note";
      note.textContent = `${file.name}: file no longer on the server`;
      body.replaceChildren(note);
    });
    img.src = file.url;
    body.append(img);
  }
  if (file.url) {
    const link = document.createElement("a");
    link.href = file.url;
    link.download = file.name;
    link.textContent = `${file.name} (${formatSize(file.size)})`;
    body.append(link);
    return;
  }
  const note = document.createElement("span");
  note.className = "file-note";
  const size = formatSize(file.size);
  if (file.unloaded) note.textContent = `${file.name} (${size}): file (not loaded)`;
  else if (file.omitted) note.textContent = `${file.name}: file too large for history`;
  else if (file.gone) note.textContent = `${file.name}: file not kept after reload`;
  else if (file.missing) note.textContent = `${file.name}: file contents did not arrive`;
  else note.textContent = `${file.name}: receiving…`;
  body.append(note);
}

/**
 * Something that happened in the room, said quietly between the messages.
 *
 * @param {Entry} entry
 * @param {string} note
 * @returns {HTMLLIElement}
 */
function renderNote(entry, note) {
  const li = document.createElement("li");
  li.className = "note";
  li.dataset.key = entry.key;
  const text = document.createElement("span");
  text.className = "note-text";
  text.textContent = note;
  const time = document.createElement("time");
  time.className = "time";
  time.textContent = formatTime(entry.ts);
  time.setAttribute("datetime", new Date(entry.ts).toISOString());
  li.append(text, " ", time);
  return li;
}

/**
 * @param {Entry} entry
 * @returns {HTMLLIElement}
 */
function renderEntry(entry) {
  if (entry.note !== undefined) return renderNote(entry, entry.note);
  const li = cloneMessage();
  if (!entry.stray) li.dataset.id = String(entry.id);
  li.dataset.cid = entry.cid;
  li.dataset.key = entry.key;
  if (entry.file) li.classList.add("file");
  if (entry.from && state.me && entry.from.id === state.me.id) li.classList.add("own");
  const from = part(li, ".from");
  if (entry.from) {
    from.textContent = entry.from.nick;
    if (entry.from.bot) part(li, ".bot-tag").hidden = false;
  } else {
    from.textContent = entry.stray ? "unannounced file" : "raw client";
    from.classList.add("raw");
  }
  const time = part(li, ".time");
  time.textContent = formatTime(entry.ts);
  time.setAttribute("datetime", new Date(entry.ts).toISOString());
  time.setAttribute("title", new Date(entry.ts).toLocaleString());
  if (entry.deleted) li.classList.add("deleted");
  const room = currentRoom();
  const change = pendingChangeOf(room, entry);
  if (entry.edited !== undefined) {
    const mark = part(li, ".edited");
    mark.hidden = false;
    mark.setAttribute("title", `edited ${new Date(entry.edited).toLocaleString()}`);
  }
  if (entry.replyTo !== undefined) {
    fillQuote(part(li, ".quote"), room.keys.get(entryKey(entry.epoch, entry.replyTo)));
  }
  const shownText = change?.kind === "edit" && !entry.deleted ? { text: change.text } : entry;
  fillBody(part(li, ".body"), shownText);
  if (change) part(li, ".state").textContent = change.kind === "edit" ? "saving…" : "deleting…";
  else if (!entry.stray && !entry.deleted) fillTools(part(li, ".tools"), entry);
  return li;
}

/**
 * Our newest edit or delete of an entry that is still in flight.
 *
 * @param {RoomState} room
 * @param {Entry} entry
 * @returns {PendingChange | undefined}
 */
function pendingChangeOf(room, entry) {
  return room.changes.findLast((c) => c.target === entry.id && c.epoch === entry.epoch);
}

/** @param {Entry} entry */
function isOwn(entry) {
  return entry.from !== null && state.me !== null && entry.from.id === state.me.id;
}

/**
 * Shows what a reply answers.
 *
 * @param {HTMLElement} element
 * @param {Entry | undefined} original Undefined when the page does not have it.
 */
function fillQuote(element, original) {
  const quote = quoteOf(original);
  const lead = document.createElement("span");
  lead.className = "quote-lead";
  lead.textContent = "In reply to ";
  element.append(lead);
  if (quote.from !== null) {
    const from = document.createElement("span");
    from.className = "quote-from";
    from.textContent = quote.from;
    element.append(from, ": ");
  }
  const text = document.createElement("span");
  text.className = "quote-text";
  text.textContent = quote.text;
  element.append(text);
  element.hidden = false;
}

/**
 * Adds the Reply control, Edit on our own messages, and Delete on our own or,
 * for a moderator, on every message. The server refuses anything else anyway;
 * the page does not offer it, nor anything at all to a reader.
 *
 * @param {HTMLElement} tools
 * @param {Entry} entry
 */
function fillTools(tools, entry) {
  if (state.access === "read") return;
  /** @param {string} action @param {string} label @param {string} title */
  const tool = (action, label, title) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tool";
    button.dataset.action = action;
    button.textContent = label;
    button.title = title;
    tools.append(button);
  };
  tool("reply", "Reply", "Reply to this message");
  if (isOwn(entry)) {
    if (entry.text !== undefined) tool("edit", "Edit", "Edit your message");
    tool("delete", "Delete", "Delete your message");
  } else if (state.moderator) {
    tool("delete", "Delete", "Delete this message for everyone (as a moderator)");
  }
}

/**
 * @param {Outgoing} item
 * @returns {HTMLLIElement}
 */
function renderPending(item) {
  const li = cloneMessage();
  li.classList.add("pending", "own");
  li.dataset.cid = item.cid;
  part(li, ".from").textContent = state.nick ?? "";
  const time = part(li, ".time");
  time.textContent = formatTime(item.ts);
  time.setAttribute("datetime", new Date(item.ts).toISOString());
  part(li, ".state").textContent = item.failed ? `not sent: ${item.failed}` : "sending…";
  if (item.failed) {
    li.classList.add("failed");
    li.classList.remove("pending");
  }
  if (item.reply) {
    const key = entryKey(item.reply.epoch, item.reply.id);
    fillQuote(part(li, ".quote"), currentRoom().keys.get(key));
  }
  fillBody(
    part(li, ".body"),
    item.file
      ? {
        file: {
          name: item.file.name,
          mime: item.file.mime,
          size: item.file.size,
          url: item.file.url,
        },
      }
      : { text: item.text },
  );
  return li;
}

/** True when the list shows its newest message, so new ones should stay in view. */
function atBottom() {
  const list = ui.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

let stickToBottom = true;
/** True while the events of a `batch` frame are handled. */
let inBatch = false;

function keepBottom() {
  if (stickToBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
}

// The list shrinks when something shows around it (a notice, a reply bar, a
// taller message box, a phone's keyboard): if its end was in view, it stays.
let listHeight = 0;
new ResizeObserver(() => {
  const list = ui.messages;
  // A scroll event of the same frame may already have measured the smaller
  // list and found its end out of view: judge by the size it had before.
  if (list.scrollHeight - list.scrollTop - listHeight < 80) stickToBottom = true;
  listHeight = list.clientHeight;
  keepBottom();
}).observe(ui.messages);

/** Redraws the whole list of the current room. */
function renderAll() {
  const room = currentRoom();
  elements.clear();
  pendingElements.clear();
  const items = [];
  for (const entry of room.entries) {
    const li = renderEntry(entry);
    elements.set(entry.key, li);
    items.push(li);
  }
  for (const item of room.outbox) {
    const li = renderPending(item);
    pendingElements.set(item.cid, li);
    items.push(li);
  }
  ui.messages.replaceChildren(ui.historyEdge, ...items);
  renderEdge();
  stickToBottom = true;
  keepBottom();
}

/**
 * The smallest message id the list shows in the room's epoch.
 *
 * @param {RoomState} room
 * @returns {number | null}
 */
function oldestShown(room) {
  for (const entry of room.entries) {
    if (!entry.stray && entry.note === undefined && entry.epoch === room.epoch) return entry.id;
  }
  return null;
}

/** Shows the top of the list: a button for older messages, or the start of history. */
function renderEdge() {
  const room = currentRoom();
  const start = room.epoch !== null && room.older.atStart(oldestShown(room), room.head);
  const loading = room.older.loading;
  const label = loading ? "Loading older messages…" : "Load older messages";
  // Called on every frame: touch the DOM only when something changes.
  if (ui.loadOlder.hidden !== start) ui.loadOlder.hidden = start;
  if (ui.historyStart.hidden === start) ui.historyStart.hidden = !start;
  if (ui.loadOlder.disabled !== (loading || !state.joined)) {
    ui.loadOlder.disabled = loading || !state.joined;
  }
  if (ui.loadOlder.textContent !== label) ui.loadOlder.textContent = label;
}

function renderComposer() {
  const entry = state.compose ? currentRoom().keys.get(state.compose.key) : undefined;
  if (!entry) state.compose = null; // its message is gone; what was typed stays
  const mode = state.compose;
  ui.composeContext.hidden = !entry;
  ui.send.textContent = mode?.kind === "edit" ? "Save" : "Send";
  ui.composeContextText.replaceChildren();
  if (!mode || !entry) return;
  if (mode.kind === "edit") {
    ui.composeContextText.textContent = "Editing your message";
    return;
  }
  const quote = quoteOf(entry);
  const from = document.createElement("strong");
  from.textContent = quote.from ?? "";
  ui.composeContextText.append("Replying to ", from, `: ${quote.text}`);
}

function renderMembers() {
  const sorted = [...members.values()].sort((a, b) =>
    a.nick.localeCompare(b.nick, undefined, { sensitivity: "base" }) || a.id.localeCompare(b.id)
  );
  if (state.removing !== null && (!state.moderator || !members.has(state.removing))) {
    closeRemoveForm(false);
  }
  // The form moves with the list: what was typed in it, and where, stays.
  const focused = document.activeElement;
  const items = sorted.map((member) => {
    const li = document.createElement("li");
    li.dataset.member = member.id;
    const name = document.createElement("span");
    name.className = "member-name";
    name.textContent = member.nick;
    li.append(name);
    // "(you)" comes from CSS, so the item's text is exactly the nickname.
    const self = state.me !== null && member.id === state.me.id;
    if (self) li.classList.add("me");
    if (state.moderator && !self) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "member-remove";
      remove.dataset.member = member.id;
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${member.nick} from the room`);
      remove.setAttribute("aria-expanded", String(state.removing === member.id));
      li.append(remove);
    }
    if (state.removing === member.id) {
      li.classList.add("removing");
      li.append(ui.removeForm);
    }
    return li;
  });
  ui.members.replaceChildren(...items);
  renderMemberCount();
  if (focused instanceof HTMLElement && ui.removeForm.contains(focused)) focused.focus();
}

/** Shows how many members the room has, and whether more can be listed. */
function renderMemberCount() {
  const count = members.count.toLocaleString("en");
  // Called on every presence update: touch the DOM only when something changes.
  if (ui.memberCount.textContent !== count) ui.memberCount.textContent = count;
  if (ui.memberTotal.textContent !== count) ui.memberTotal.textContent = count;
  const complete = !members.incomplete;
  if (ui.membersMore.hidden !== complete) ui.membersMore.hidden = complete;
  const busy = members.loading;
  if (ui.membersMore.disabled !== (busy || !state.joined)) {
    ui.membersMore.disabled = busy || !state.joined;
  }
  if (ui.membersMore.ariaBusy !== String(busy)) ui.membersMore.ariaBusy = String(busy);
}

/**
 * Opens the Remove form under a member (moderators only).
 *
 * @param {string} id
 */
function openRemoveForm(id) {
  const member = members.get(id);
  if (!member || !state.moderator) return;
  state.removing = id;
  ui.removeWho.textContent = member.nick;
  ui.removeMinutes.value = "0";
  ui.removeReason.value = "";
  ui.removeForm.hidden = false;
  renderMembers();
  ui.removeMinutes.focus();
}

/**
 * Closes the Remove form and puts it back, hidden, at the end of the panel.
 *
 * @param {boolean} refocus Move focus back to the member's Remove button.
 */
function closeRemoveForm(refocus) {
  const id = state.removing;
  state.removing = null;
  ui.removeForm.hidden = true;
  ui.membersPanel.append(ui.removeForm);
  if (!refocus || id === null) return;
  for (const button of ui.members.querySelectorAll("button.member-remove")) {
    if (button instanceof HTMLButtonElement && button.dataset.member === id) {
      button.setAttribute("aria-expanded", "false");
      button.closest("li")?.classList.remove("removing");
      button.focus();
    }
  }
}

/** Sends the removal the form describes. */
function submitRemoval() {
  const id = state.removing;
  const member = id === null ? undefined : members.get(id);
  if (!member) {
    closeRemoveForm(false);
    return;
  }
  const reason = ui.removeReason.value.trim();
  if ([...reason].length > MAX_REASON_LENGTH || hasControl(reason)) {
    ui.removeReason.setCustomValidity(
      `A reason has at most ${MAX_REASON_LENGTH} characters, on one line.`,
    );
    ui.removeReason.reportValidity();
    return;
  }
  const minutes = Number(ui.removeMinutes.value);
  const ws = state.ws;
  if (!ws || !state.joined) {
    showNotice(`Cannot remove ${member.nick} while offline; try again once connected.`);
    return;
  }
  const cid = nextCid();
  state.kicks.set(cid, member.nick);
  sendEnvelope(ws, {
    type: "kick",
    cid,
    member: member.id,
    minutes: BAN_MINUTES.includes(minutes) ? minutes : 0,
    reason,
  });
  closeRemoveForm(false);
}

function renderNick() {
  const verified = state.me?.verified === true;
  // With a token the name is the token's: there is nothing to choose.
  const waiting = state.nick === null && state.token !== null && !state.joined;
  ui.nickLabel.textContent = state.nick ?? (waiting ? "joining…" : "choose a nickname");
  ui.nickButton.disabled = verified || waiting;
  ui.nickButton.title = verified
    ? "Your name comes from your invite link"
    : waiting
    ? "Joining with your invite link"
    : "Change nickname";
}

/** Shows what we may do in the room: a reader gets no message box. */
function renderAccess() {
  const readOnly = state.access === "read";
  ui.readOnly.hidden = !readOnly;
  ui.text.disabled = readOnly;
  ui.text.placeholder = readOnly ? "Read only" : "Write a message…";
  ui.send.disabled = readOnly;
  ui.file.disabled = readOnly;
  ui.fileButton.classList.toggle("disabled", readOnly);
  ui.fileButton.setAttribute("aria-disabled", String(readOnly));
  if (readOnly) endCompose(false);
}

/**
 * Stops for good after a refusal (4401, 4403): says why, offers to try again,
 * and reconnects only when asked.
 *
 * @param {string} why
 */
function showRefusal(why) {
  state.refused = why;
  state.stopped = true;
  state.needNick = false;
  if (ui.nickDialog.open) ui.nickDialog.close();
  ui.refusalText.textContent = why;
  ui.refusal.hidden = false;
  hideNotice();
  closeRemoveForm(false);
  typists.clear();
  members.clear();
  renderMembers();
  showStatus();
}

function hideRefusal() {
  state.refused = null;
  ui.refusal.hidden = true;
  ui.refusalText.textContent = "";
}

/** Whether the page can say hello: it needs a nickname or a token. */
function canJoin() {
  return state.nick !== null || state.token !== null;
}

function renderRoom() {
  ui.roomName.textContent = state.room;
  ui.roomInput.value = "";
  ui.roomInput.placeholder = state.room;
  document.title = `${state.room} · Parley`;
}

/** Shows the socket's readyState in words; called on every socket event. */
function showStatus() {
  const ws = state.ws;
  const word = ws ? STATE_WORDS[ws.readyState] ?? "closed" : "closed";
  if (ui.status.textContent !== word) ui.status.textContent = word;
  ui.status.dataset.state = word;
  const idle = !ws || ws.readyState === WebSocket.CLOSED;
  // After a refusal, its own "Try again" button is the way back.
  ui.reconnect.hidden = !(idle && canJoin() && !state.leaving && state.refused === null);
  renderEdge(); // older messages can be asked for only while joined
}

/** @param {string} text */
function showNotice(text) {
  ui.noticeText.textContent = text;
  ui.notice.hidden = false;
}

function hideNotice() {
  ui.notice.hidden = true;
  ui.noticeText.textContent = "";
}

// ---------------------------------------------------------------- history model

/**
 * Adds a message to a room in id order, unless it is already there.
 *
 * @param {RoomState} room
 * @param {Entry} entry
 * @returns {boolean} Whether it was new.
 */
function addEntry(room, entry) {
  if (room.keys.has(entry.key)) return false;
  const current = room.name === state.room;
  // A batch measures the list once before its first entry, and scrolls once after its last.
  if (current && !inBatch) stickToBottom = atBottom();
  insertEntry(room, entry);
  if (current && !inBatch) keepBottom();
  // Someone reading older messages keeps them; they go once back at the newest.
  const cap = !current || stickToBottom ? MEMORY_ENTRIES : 4 * MEMORY_ENTRIES;
  while (room.entries.length > cap) {
    const old = room.entries.shift();
    if (!old) break;
    room.keys.delete(old.key);
    if (old.file?.url) URL.revokeObjectURL(old.file.url);
    elements.get(old.key)?.remove();
    elements.delete(old.key);
  }
  if (current) renderEdge();
  scheduleSave(room);
  return true;
}

/**
 * Puts an entry into the room's list, and into the page when it is the room
 * shown.
 *
 * @param {RoomState} room
 * @param {Entry} entry
 */
function insertEntry(room, entry) {
  let index = room.entries.length;
  while (index > 0 && room.entries[index - 1].id > entry.id) index--;
  room.entries.splice(index, 0, entry);
  room.keys.set(entry.key, entry);
  if (room.name !== state.room) return;
  const li = renderEntry(entry);
  elements.set(entry.key, li);
  const next = room.entries[index + 1];
  const before = (next && elements.get(next.key)) ??
    ui.messages.querySelector(".msg.pending, .msg.failed");
  ui.messages.insertBefore(li, before);
}

/**
 * Redraws the replies that quote a message, after it changed or arrived.
 *
 * @param {RoomState} room
 * @param {Set<string>} keys Keys of the messages quoted.
 */
function redrawReplies(room, keys) {
  for (const entry of room.entries) {
    if (entry.replyTo !== undefined && keys.has(entryKey(entry.epoch, entry.replyTo))) {
      redrawEntry(room, entry);
    }
  }
  if (room.name !== state.room) return;
  for (const item of room.outbox) {
    if (!item.reply || !keys.has(entryKey(item.reply.epoch, item.reply.id))) continue;
    const old = pendingElements.get(item.cid);
    const li = renderPending(item);
    old?.replaceWith(li);
    pendingElements.set(item.cid, li);
  }
  if (state.compose && keys.has(state.compose.key)) renderComposer();
}

/**
 * Redraws one entry in place (its file arrived, its time was corrected).
 *
 * @param {RoomState} room
 * @param {Entry} entry
 */
function redrawEntry(room, entry) {
  if (room.name !== state.room) return;
  const old = elements.get(entry.key);
  if (!old) return;
  const li = renderEntry(entry);
  old.replaceWith(li);
  elements.set(entry.key, li);
}

/**
 * Forgets a room's messages (not its unacked ones): the replay that follows
 * the welcome is the new list.
 *
 * @param {RoomState} room
 */
function resetEntries(room) {
  for (const entry of room.entries) {
    if (entry.file?.url) URL.revokeObjectURL(entry.file.url);
  }
  room.entries = [];
  room.keys.clear();
  room.lastId = 0;
  room.older.reset();
  room.late.clear();
  if (room.name === state.room) {
    for (const li of elements.values()) li.remove();
    elements.clear();
    endCompose(false);
    renderEdge();
  }
  scheduleSave(room);
}

/**
 * Records the newest message seen, which the next hello resumes from.
 *
 * @param {RoomState} room
 * @param {string} epoch
 * @param {number} id
 */
function markSeen(room, epoch, id) {
  if (room.epoch !== epoch) return;
  if (id > room.lastId) room.lastId = id;
  if (id > room.head) room.head = id;
  scheduleSave(room);
}

/**
 * Takes our own unacked message with this cid out of the outbox, when the
 * message came from us.
 *
 * @param {RoomState} room
 * @param {Member | null} from
 * @param {string} cid
 * @returns {Outgoing | null}
 */
function takeOwn(room, from, cid) {
  if (!from || !state.me || from.id !== state.me.id) return null;
  return takeOutgoing(room, cid);
}

/**
 * @param {RoomState} room
 * @param {string} cid
 * @returns {Outgoing | null}
 */
function takeOutgoing(room, cid) {
  const index = room.outbox.findIndex((item) => item.cid === cid);
  if (index < 0) return null;
  const [item] = room.outbox.splice(index, 1);
  pendingElements.get(cid)?.remove();
  pendingElements.delete(cid);
  return item;
}

// ---------------------------------------------------------------- connection

/** @param {string} room */
function socketUrl(room) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  return scheme + location.host + pathOfRoom(room);
}

/**
 * @param {WebSocket} ws
 * @param {unknown} envelope
 */
function sendEnvelope(ws, envelope) {
  ws.send(JSON.stringify(envelope));
}

function connect() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = undefined;
  state.reconnectWhenVisible = false;
  // After a refusal only the person reconnects, with "Try again".
  if (!canJoin() || state.leaving || state.refused !== null) return;
  if (state.ws && state.ws.readyState <= WebSocket.OPEN) return;
  state.stopped = false;
  let ws;
  try {
    ws = new WebSocket(socketUrl(state.room), SUBPROTOCOL);
  } catch (error) {
    showNotice(`Cannot connect: ${error instanceof Error ? error.message : String(error)}`);
    scheduleReconnect();
    return;
  }
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  state.joined = false;
  state.expectedFiles = [];
  const socket = ws;
  socket.addEventListener("open", () => onOpen(socket));
  socket.addEventListener("message", (event) => onFrame(socket, event));
  socket.addEventListener("close", (event) => onClose(socket, event));
  socket.addEventListener("error", () => showStatus());
  showStatus();
}

/** Closes the current socket on purpose: nothing reconnects it. */
function disconnect() {
  const ws = state.ws;
  state.ws = null;
  state.joined = false;
  state.expectedFiles = [];
  stopTimers();
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "leaving");
  showStatus();
}

function stopTimers() {
  clearTimeout(state.reconnectTimer);
  clearTimeout(state.stableTimer);
  clearInterval(state.pingTimer);
  state.reconnectTimer = undefined;
  state.stableTimer = undefined;
  state.pingTimer = undefined;
}

function scheduleReconnect() {
  if (state.leaving || state.reconnectTimer) return;
  // Full jitter: a uniform delay up to an exponentially growing, capped ceiling.
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  state.attempt = Math.min(state.attempt + 1, 30);
  state.reconnectTimer = setTimeout(() => {
    state.reconnectTimer = undefined;
    if (document.hidden) {
      state.reconnectWhenVisible = true;
      return;
    }
    connect();
  }, Math.random() * ceiling);
}

/** @param {WebSocket} ws */
function sendHello(ws) {
  const room = currentRoom();
  /** @type {Record<string, unknown>} */
  const hello = { type: "hello", client: state.client, batch: true };
  // With a token the server takes the name from it; a nickname is then ignored.
  if (state.token !== null) hello.token = state.token;
  if (state.nick !== null && state.me?.verified !== true) hello.nick = state.nick;
  if (room.epoch !== null && room.lastId > 0) hello.last = { epoch: room.epoch, id: room.lastId };
  sendEnvelope(ws, hello);
}

/** @param {WebSocket} ws */
function onOpen(ws) {
  if (ws !== state.ws) return;
  state.lastFrameAt = Date.now();
  state.pingSentAt = 0;
  sendHello(ws);
  clearInterval(state.pingTimer);
  state.pingTimer = setInterval(() => heartbeat(ws), PING_EVERY_MS);
  showStatus();
}

/**
 * Pings an idle connection, and gives up on one whose ping went unanswered:
 * a dead network does not always close a socket by itself.
 *
 * @param {WebSocket} ws
 */
function heartbeat(ws) {
  if (ws !== state.ws || ws.readyState !== WebSocket.OPEN) return;
  const now = Date.now();
  if (state.pingSentAt > state.lastFrameAt && now - state.pingSentAt > PONG_TIMEOUT_MS) {
    state.ws = null;
    state.joined = false;
    stopTimers();
    ws.close(4000, "no answer to ping");
    countFailedSends(ws);
    showStatus();
    scheduleReconnect();
    return;
  }
  if (now - state.lastFrameAt >= PING_EVERY_MS && state.pingSentAt <= state.lastFrameAt) {
    state.pingSentAt = now;
    sendEnvelope(ws, { type: "ping" });
  }
}

/**
 * @param {WebSocket} ws
 * @param {CloseEvent} event
 */
function onClose(ws, event) {
  if (ws !== state.ws) return;
  state.joined = false;
  state.expectedFiles = [];
  stopTimers();
  countFailedSends(ws);
  showStatus();
  if (state.leaving) return;
  // The server says a refusal in band first (see onRefused); this is for one
  // that only its close code tells.
  const refused = describeRefusal({
    code: event.code,
    reason: event.reason,
    hadToken: state.token !== null,
    accepted: state.tokenAccepted,
  });
  if (refused !== null) {
    showRefusal(refused);
    return;
  }
  if (event.code === 1000) {
    // A normal close is the server's deliberate choice: wait for the user.
    state.stopped = true;
    showNotice("The server closed the connection.");
    showStatus();
    return;
  }
  scheduleReconnect();
}

/**
 * Counts a lost connection against every message that was sent on it and not
 * acked, so a message the server keeps refusing cannot loop forever.
 *
 * @param {WebSocket} ws
 */
function countFailedSends(ws) {
  for (const room of rooms.values()) {
    for (const item of [...room.outbox]) {
      if (item.sentOn !== ws) continue;
      item.sentOn = null;
      item.attempts++;
      if (item.attempts >= MAX_SEND_ATTEMPTS) {
        failOutgoing(room, item, "the connection kept dropping");
      }
    }
  }
}

/**
 * @param {WebSocket} ws
 * @param {MessageEvent} event
 */
function onFrame(ws, event) {
  if (ws !== state.ws) return;
  state.lastFrameAt = Date.now();
  try {
    if (typeof event.data === "string") {
      const envelope = JSON.parse(event.data);
      if (isObject(envelope)) onEnvelope(ws, envelope);
    } else if (event.data instanceof ArrayBuffer) {
      onBinary(event.data);
    }
  } catch (error) {
    console.error("Cannot handle a frame from the server:", error);
  }
  showStatus();
}

/**
 * @param {WebSocket} ws
 * @param {Record<string, unknown>} envelope
 */
function onEnvelope(ws, envelope) {
  switch (envelope.type) {
    case "welcome":
      return onWelcome(ws, envelope);
    case "batch":
      return onBatch(ws, envelope);
    case "message":
      return onMessage(envelope);
    case "file":
      return onFileEnvelope(envelope);
    case "ack":
      return onAck(envelope);
    case "edit":
    case "delete":
      return onChange(envelope);
    case "history":
      return onHistory(envelope);
    case "typing": {
      const member = readMember(envelope.member);
      if (!member || (state.me && member.id === state.me.id)) return;
      const ttl = isId(envelope.ttl) ? envelope.ttl : state.typingTtl;
      return typists.add(member, ttl);
    }
    case "presence":
    case "join":
    case "leave":
    case "rename":
      return onPresence(envelope);
    case "members":
      return onMembersPage(envelope);
    case "kick":
      return onKick(envelope);
    case "error":
      return onError(ws, envelope);
    default:
      return; // pong, and anything newer than this page
  }
}

/**
 * @param {WebSocket} ws
 * @param {Record<string, unknown>} envelope
 */
function onWelcome(ws, envelope) {
  const room = currentRoom();
  const epoch = typeof envelope.epoch === "string" ? envelope.epoch : "";
  state.me = readMember(envelope.you);
  state.joined = true;
  state.needNick = false;
  state.renaming = null;
  if (state.me?.verified === true) {
    // The token names us; the name is not stored as a nickname of our own.
    state.nick = state.me.nick;
    if (state.token !== null) state.tokenAccepted = true;
    if (ui.nickDialog.open) ui.nickDialog.close();
  }
  renderNick();
  state.access = envelope.access === "read" ? "read" : "write";
  state.moderator = envelope.moderator === true;
  renderAccess();
  /** @type {Member[]} */
  const listed = [];
  for (const value of Array.isArray(envelope.members) ? envelope.members : []) {
    const member = readMember(value);
    if (member) listed.push(member);
  }
  // The welcome lists the first members only; `count` says how many there are.
  // A page of members asked for on the old connection will not come.
  members.welcome(listed, isId(envelope.count) ? envelope.count : null, state.me);
  kicked.clear();
  renderMembers();
  if (ui.membersPanel.classList.contains("open")) loadMembers(true);
  if (envelope.recovered !== true || epoch !== room.epoch) {
    resetEntries(room);
  }
  room.epoch = epoch;
  room.head = isId(envelope.head) ? envelope.head : 0;
  room.older.cancel(); // a page asked on the old connection will not come
  readLimits(envelope.limits);
  typists.clear();
  if (envelope.recovered === false) showNotice(RECOVERY_NOTICE);
  // Changes for another epoch name messages that are gone; acked ones are stored.
  room.changes = room.changes.filter((c) => c.epoch === epoch && c.acked === undefined);
  // Own messages look different: redraw with the (maybe new) member id.
  renderAll();
  renderComposer();
  clearTimeout(state.stableTimer);
  state.stableTimer = setTimeout(() => {
    state.attempt = 0;
  }, STABLE_MS);
  for (const item of room.outbox) {
    if (!item.failed) transmit(ws, item);
  }
  for (const change of room.changes) transmitChange(ws, change);
}

/**
 * Someone was removed from the room: they leave the list, and the
 * conversation says so quietly. Our own removal closes the socket instead.
 *
 * @param {Record<string, unknown>} envelope
 */
function onKick(envelope) {
  const kick = readKick(envelope);
  if (!kick) return;
  members.remove(kick.member.id);
  kicked.add(kick.member.id);
  typists.remove(kick.member.id);
  renderMembers();
  addNote(describeKick(kick));
}

/**
 * Says something that happened in the room, after the newest message.
 *
 * @param {string} text
 */
function addNote(text) {
  const room = currentRoom();
  state.noteCount++;
  addEntry(room, {
    key: `note:${state.noteCount}`,
    id: room.lastId,
    epoch: room.epoch ?? "",
    ts: Date.now(),
    from: null,
    cid: "",
    note: text,
  });
}

/**
 * Members came, went or took another name: a `presence` envelope (joins,
 * leaves and renames gathered over a short while, or in a large room only
 * the count), or one `join`, `leave` or `rename` from a server that sends
 * them one by one.
 *
 * @param {Record<string, unknown>} envelope
 */
function onPresence(envelope) {
  const presence = readPresence(envelope);
  if (!presence) return;
  const changes = members.apply(presence);
  for (const member of presence.leaves) typists.remove(member.id);
  for (const { member } of presence.renames) {
    typists.rename(member);
    if (state.me && member.id === state.me.id) {
      // Every tab with our client id is the same member, so shares the nickname.
      state.me = member;
      state.nick = member.nick;
      state.renaming = null;
      renderNick();
    }
  }
  // A removal was said already, by whom and why.
  changes.left = changes.left.filter((member) => !kicked.delete(member.id));
  for (const line of describePresence(changes)) addNote(line);
  if (presence.listed) renderMembers();
  else renderMemberCount();
}

/**
 * A page of members, asked for when the list was opened or with "Show more
 * members".
 *
 * @param {Record<string, unknown>} envelope
 */
function onMembersPage(envelope) {
  const page = readMembersPage(envelope);
  if (!page) return;
  members.settle(page);
  renderMembers();
}

/**
 * Asks for the next page of members, unless one is on its way or the list is
 * complete.
 *
 * @param {boolean} opened The list was just opened (a stale one starts over).
 */
function loadMembers(opened) {
  const ws = state.ws;
  if (!ws || !state.joined) return;
  const request = members.request(opened);
  if (!request) return;
  sendEnvelope(ws, request);
  renderMemberCount();
  // Should the answer never come, the button comes back once the wait is over.
  setTimeout(renderMemberCount, MEMBERS_TIMEOUT_MS + 100);
}

/**
 * Handles the events of a `batch` frame one by one, exactly as if each had
 * come alone. The bytes of its files follow it, in order.
 *
 * @param {WebSocket} ws
 * @param {Record<string, unknown>} envelope
 */
function onBatch(ws, envelope) {
  if (!Array.isArray(envelope.events)) return;
  dropExpectedFiles();
  stickToBottom = atBottom();
  inBatch = true;
  try {
    for (const event of envelope.events) {
      if (!isObject(event) || event.type === "batch") continue;
      try {
        onEnvelope(ws, event);
      } catch (error) {
        // One bad event must not cost the others.
        console.error("Cannot handle an event of a batch:", error);
      }
    }
  } finally {
    inBatch = false;
    keepBottom();
  }
}

/** @param {unknown} limits The `limits` of `welcome`. */
function readLimits(limits) {
  if (!isObject(limits)) return;
  state.maxText = isId(limits.text) ? limits.text : null;
  state.typingTtl = isId(limits.typing) ? limits.typing : DEFAULT_TYPING_TTL_MS;
}

/** @param {Record<string, unknown>} envelope */
function onMessage(envelope) {
  const room = currentRoom();
  const entry = readEntry(envelope);
  if (!entry) return;
  if (entry.from) typists.remove(entry.from.id);
  takeOwn(room, entry.from, entry.cid);
  if (!addEntry(room, entry)) {
    const known = room.keys.get(entry.key);
    if (known && (known.ts !== entry.ts || catchUp(known, entry))) {
      known.ts = entry.ts;
      redrawEntry(room, known);
      redrawReplies(room, new Set([known.key]));
    }
  }
  markSeen(room, entry.epoch, entry.id);
}

/**
 * Brings a message the page has up to date with a newer copy of it (sent
 * again with its edits and deletes applied).
 *
 * @param {Entry} known
 * @param {Entry} fresh
 * @returns {boolean} Whether anything changed.
 */
function catchUp(known, fresh) {
  if (known.deleted) return false;
  if (fresh.deleted) {
    if (known.file?.url) URL.revokeObjectURL(known.file.url);
    delete known.text;
    delete known.file;
    delete known.edited;
    known.deleted = true;
    return true;
  }
  if (fresh.edited === undefined || fresh.text === undefined) return false;
  if (known.edited !== undefined && known.edited >= fresh.edited) return false;
  known.text = fresh.text;
  known.edited = fresh.edited;
  return true;
}

/** Marks the files whose bytes should have come by now, and did not. */
function dropExpectedFiles() {
  const room = currentRoom();
  for (const { entry } of state.expectedFiles) {
    if (!entry?.file) continue;
    entry.file.missing = true;
    redrawEntry(room, entry);
  }
  state.expectedFiles = [];
}

/** @param {Record<string, unknown>} envelope */
function onFileEnvelope(envelope) {
  const room = currentRoom();
  const entry = readEntry(envelope);
  if (!entry || !entry.file) return;
  // Alone, a file is followed by its bytes at once; in a batch, the bytes of
  // all its files follow the batch frame.
  if (!inBatch) dropExpectedFiles();
  if (entry.from) typists.remove(entry.from.id);
  const own = takeOwn(room, entry.from, entry.cid);
  if (entry.file.omitted) {
    if (own?.file) URL.revokeObjectURL(own.file.url);
    addEntry(room, entry);
    markSeen(room, entry.epoch, entry.id);
    return;
  }
  const shown = addEntry(room, entry) ? entry : room.keys.get(entry.key);
  // A file shown without its bytes (restored after a reload, or cut off) takes them now.
  const target = shown?.file && !shown.file.url ? shown : null;
  if (own?.file) {
    // We have the bytes already; the frame that follows is dropped.
    if (target?.file) attachFile(room, target, own.file.url);
    else URL.revokeObjectURL(own.file.url);
    state.expectedFiles.push({ epoch: entry.epoch, id: entry.id, entry: null });
    return;
  }
  state.expectedFiles.push({ epoch: entry.epoch, id: entry.id, entry: target });
}

/**
 * @param {RoomState} room
 * @param {Entry} entry
 * @param {string} url A blob: URL that the entry owns from now on.
 */
function attachFile(room, entry, url) {
  if (!entry.file) return;
  entry.file = { ...entry.file, url, gone: false, missing: false };
  redrawEntry(room, entry);
}

/**
 * Guesses a picture type from its first bytes.
 *
 * @param {Uint8Array} bytes
 * @returns {string | null}
 */
function sniffImage(bytes) {
  /** @param {number[]} magic @param {number} [at] */
  const starts = (magic, at = 0) => magic.every((b, i) => bytes[at + i] === b);
  if (starts([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return "image/png";
  if (starts([0xff, 0xd8, 0xff])) return "image/jpeg";
  if (starts([0x47, 0x49, 0x46, 0x38]) && (bytes[4] === 0x37 || bytes[4] === 0x39)) {
    return "image/gif";
  }
  if (starts([0x52, 0x49, 0x46, 0x46]) && starts([0x57, 0x45, 0x42, 0x50], 8)) return "image/webp";
  return null;
}

/**
 * @param {ArrayBuffer} data
 * @param {string} mime
 */
function blobUrl(data, mime) {
  // Only pictures keep their type; anything else is an opaque download.
  const type = mime.startsWith("image/") ? mime : "application/octet-stream";
  return URL.createObjectURL(new Blob([data], { type }));
}

/** @param {ArrayBuffer} data */
function onBinary(data) {
  const room = currentRoom();
  const expected = state.expectedFiles.shift();
  if (expected) {
    if (expected.entry?.file) {
      attachFile(room, expected.entry, blobUrl(data, expected.entry.file.mime));
    }
    markSeen(room, expected.epoch, expected.id);
    return;
  }
  // A frame no envelope announced: show it anyway, as a picture when it is one.
  const mime = sniffImage(new Uint8Array(data, 0, Math.min(16, data.byteLength)));
  const epoch = room.epoch ?? "";
  state.strayCount++;
  addEntry(room, {
    key: `stray:${state.strayCount}`,
    id: room.lastId,
    epoch,
    ts: Date.now(),
    from: null,
    cid: "",
    stray: true,
    file: {
      name: mime ? `picture.${mime.slice(6)}` : "file",
      mime: mime ?? "application/octet-stream",
      size: data.byteLength,
      url: blobUrl(data, mime ?? "application/octet-stream"),
    },
  });
}

/** @param {Record<string, unknown>} envelope */
function onAck(envelope) {
  const room = currentRoom();
  const { cid, id, epoch } = envelope;
  if (typeof cid !== "string" || typeof id !== "number" || typeof epoch !== "string") return;
  const item = takeOutgoing(room, cid);
  if (!item) {
    onChangeAck(room, cid, id, envelope.duplicate === true);
    return;
  }
  const key = entryKey(epoch, id);
  if (room.keys.has(key)) {
    if (item.file) URL.revokeObjectURL(item.file.url);
    return;
  }
  // The ack beat the broadcast: show the message now; the broadcast dedupes.
  /** @type {Entry} */
  const entry = { key, id, epoch, ts: item.ts, from: state.me, cid };
  if (item.reply?.epoch === epoch) entry.replyTo = item.reply.id;
  if (item.file) {
    const { name, mime, size, url } = item.file;
    entry.file = { name, mime, size, url };
  } else {
    entry.text = item.text;
  }
  addEntry(room, entry);
}

/**
 * @param {WebSocket} ws
 * @param {Record<string, unknown>} envelope
 */
function onError(ws, envelope) {
  const code = typeof envelope.code === "string" ? envelope.code : "error";
  const message = typeof envelope.message === "string" ? envelope.message : "";
  const cid = typeof envelope.cid === "string" ? envelope.cid : null;
  const retry = envelope.retry === true || TRANSIENT_ERRORS.has(code);
  const room = currentRoom();
  const item = cid === null ? undefined : room.outbox.find((o) => o.cid === cid);
  const change = cid === null ? undefined : room.changes.find((c) => c.cid === cid);
  if (cid === null && room.older.loading) {
    // Scroll-back requests carry no cid: an error without one may be its answer.
    room.older.cancel();
    renderEdge();
  }
  if (cid === null && members.loading) {
    // Nor do requests for members.
    members.cancel();
    renderMemberCount();
  }
  if (change) {
    onChangeError(ws, room, change, code, message, retry);
    return;
  }
  const ending = cid === null ? refusalCloseCode(code, message) : null;
  if (ending !== null) {
    onRefused(ws, ending, message);
    return;
  }
  if (code === "nick_taken" || code === "bad_nick") {
    onNickRefused(code, message);
    return;
  }
  const kicked = cid === null ? undefined : state.kicks.get(cid);
  if (cid !== null && kicked !== undefined) {
    state.kicks.delete(cid);
    const why = code === "forbidden"
      ? "only a moderator of this room can remove members."
      : message || code;
    showNotice(`Could not remove ${kicked}: ${why}`);
    return;
  }
  if (code === "forbidden" && (state.renaming !== null || message.startsWith("nick:"))) {
    state.renaming = null;
    state.nick = state.me?.nick ?? state.nick;
    renderNick();
    showNotice("Your name comes from your invite link; it cannot be changed here.");
    return;
  }
  if (code === "forbidden" && (item || state.access === "read")) {
    // A message is refused outright only when the room is read-only for us.
    if (item) failOutgoing(room, item, "this room is read-only for you");
    showNotice(READ_ONLY_WORDS);
    return;
  }
  if (code === "bad_last" && !state.joined) {
    // The saved position is no good here: forget it and join afresh on a new
    // connection (whether a welcome would still follow is not specified).
    resetEntries(room);
    room.epoch = null;
    state.ws = null;
    stopTimers();
    ws.close(1000, "resuming afresh");
    connect();
    return;
  } else if (item && retry) {
    // Not stored, not refused: try again a little later on the same connection.
    item.sentOn = null;
    setTimeout(() => {
      if (state.ws === ws && state.joined && room.outbox.includes(item)) transmit(ws, item);
    }, RETRY_MS + Math.random() * RETRY_MS);
  } else if (item) {
    // Any other error is final: sending it again cannot help.
    failOutgoing(room, item, message || code);
  }
  const plain = refusal(code);
  if (plain) showNotice(plain);
  else showNotice(message ? `Server error (${code}): ${message}` : `Server error: ${code}`);
}

/**
 * The server refused the connection itself, in band: a hello without the
 * right to be here, a kick, a token that expired while connected. Its close
 * follows, but some runtimes (Deno 2.5) lose it on the way and the page sees
 * 1006 instead of 4401 or 4403; so the page stops here, and whatever close
 * comes after cannot start a reconnect.
 *
 * @param {WebSocket} ws
 * @param {number} code The close code the refusal stands for.
 * @param {string} message The error's message, such as "token expired".
 */
function onRefused(ws, code, message) {
  state.ws = null;
  state.joined = false;
  state.expectedFiles = [];
  stopTimers();
  ws.close(1000, "refused");
  countFailedSends(ws);
  const why = describeRefusal({
    code,
    reason: "",
    detail: message,
    hadToken: state.token !== null,
    accepted: state.tokenAccepted,
  });
  showRefusal(why ?? "You are not allowed in this room.");
}

/**
 * The server refused a nickname: at hello (the socket waits for another
 * hello) or for a rename (the old name stays). Either way the person picks
 * another one.
 *
 * @param {string} code `nick_taken` or `bad_nick`.
 * @param {string} message
 */
function onNickRefused(code, message) {
  const tried = state.renaming ?? state.nick;
  if (state.joined) {
    state.renaming = null;
    if (state.me) {
      state.nick = state.me.nick;
      store(localStorage, "parley.nick", state.me.nick);
    }
  } else {
    state.needNick = true;
  }
  renderNick();
  // Without any name yet (a token the server does not use), just ask for one.
  openNickDialog(tried === null ? undefined : nickRefusal(code, message), tried ?? "");
}

/**
 * @param {WebSocket} ws
 * @param {RoomState} room
 * @param {PendingChange} change
 * @param {string} code
 * @param {string} message
 * @param {boolean} retry
 */
function onChangeError(ws, room, change, code, message, retry) {
  if (retry) {
    change.sentOn = null;
    setTimeout(() => {
      if (state.ws === ws && state.joined && room.changes.includes(change)) {
        transmitChange(ws, change);
      }
    }, RETRY_MS + Math.random() * RETRY_MS);
    return;
  }
  dropChange(room, change);
  const what = change.kind === "edit" ? "edit the message" : "delete the message";
  showNotice(refusal(code, change.kind) ?? `Cannot ${what}: ${message || code}`);
}

/**
 * Takes an edit or delete of ours out of flight and redraws its target.
 *
 * @param {RoomState} room
 * @param {PendingChange} change
 */
function dropChange(room, change) {
  room.changes = room.changes.filter((c) => c !== change);
  const target = room.keys.get(entryKey(change.epoch, change.target));
  if (target) redrawEntry(room, target);
}

/**
 * An edit or delete of ours is stored. Unless a resend of one stored before,
 * its entry is on its way: the change stays shown until it arrives.
 *
 * @param {RoomState} room
 * @param {string} cid
 * @param {number} id
 * @param {boolean} duplicate
 */
function onChangeAck(room, cid, id, duplicate) {
  const change = room.changes.find((c) => c.cid === cid);
  if (!change) return;
  change.sentOn = null;
  if (duplicate || id <= room.lastId) dropChange(room, change);
  else change.acked = id;
}

/**
 * Applies an `edit` or `delete` entry, from anyone, to its target. The entry
 * itself is not shown.
 *
 * @param {Record<string, unknown>} envelope
 */
function onChange(envelope) {
  const room = currentRoom();
  const change = readChange(envelope);
  if (!change) return;
  markSeen(room, change.epoch, change.id);
  if (change.from && state.me && change.from.id === state.me.id) {
    room.changes = room.changes.filter((c) => c.cid !== change.cid);
  }
  // Acked changes whose entry went by unseen (a gap) are stored all the same.
  room.changes = room.changes.filter((c) => c.acked === undefined || c.acked > room.lastId);
  if (change.epoch !== room.epoch) return;
  const key = entryKey(change.epoch, change.target);
  const target = room.keys.get(key);
  if (!target) {
    room.late.remember(change);
    return;
  }
  const url = target.file?.url;
  if (applyChange(target, change)) {
    if (url && target.deleted) URL.revokeObjectURL(url);
    scheduleSave(room);
    redrawReplies(room, new Set([key]));
    if (target.deleted && state.compose?.key === key) {
      // What was typed stays in the box, as a new message.
      showNotice("The message you were answering or editing was deleted.");
      endCompose(false);
    }
  }
  redrawEntry(room, target);
}

/**
 * Adds a scroll-back page above the oldest message, keeping in view what the
 * person was looking at.
 *
 * @param {Record<string, unknown>} envelope
 */
function onHistory(envelope) {
  const room = currentRoom();
  const page = readHistoryPage(envelope);
  if (!page) return;
  if (page.epoch !== room.epoch) {
    room.older.cancel();
    renderEdge();
    return;
  }
  room.older.settle(page);
  const list = ui.messages;
  const fromBottom = list.scrollHeight - list.scrollTop;
  /** @type {Set<string>} */
  const added = new Set();
  for (const value of page.messages) {
    const entry = readEntry(value);
    if (!entry || entry.epoch !== room.epoch || room.keys.has(entry.key)) continue;
    if (entry.file) entry.file.unloaded = true; // pages bring no bytes
    const late = room.late.take(entry.id);
    if (late) applyChange(entry, late);
    insertEntry(room, entry);
    added.add(entry.key);
  }
  list.scrollTop = list.scrollHeight - fromBottom;
  stickToBottom = atBottom();
  redrawReplies(room, added);
  renderEdge();
}

/** Asks for the page before the oldest message shown, unless one is on its way. */
function loadOlder() {
  const room = currentRoom();
  const ws = state.ws;
  if (!ws || !state.joined || room.epoch === null) return;
  const request = room.older.request(oldestShown(room), Math.max(room.head, room.lastId));
  if (!request) return;
  sendEnvelope(ws, request);
  renderEdge();
  // Should the answer never come, the button comes back once the wait is over.
  setTimeout(renderEdge, ANSWER_TIMEOUT_MS + 100);
}

/**
 * @param {RoomState} room
 * @param {Outgoing} item
 * @param {string} reason
 */
function failOutgoing(room, item, reason) {
  item.failed = reason;
  item.sentOn = null;
  if (room.name !== state.room) return;
  const old = pendingElements.get(item.cid);
  const li = renderPending(item);
  if (old) old.replaceWith(li);
  pendingElements.set(item.cid, li);
  keepBottom(); // the reason makes it taller
}

// ---------------------------------------------------------------- sending

function nextCid() {
  state.cidCount++;
  return `${state.cidPrefix}-${state.cidCount}`;
}

/**
 * @param {WebSocket} ws
 * @param {Outgoing} item
 */
function transmit(ws, item) {
  if (ws.readyState !== WebSocket.OPEN) return;
  // A reply chosen in an earlier epoch would name an unrelated message now.
  const replyTo = item.reply && item.reply.epoch === currentRoom().epoch
    ? item.reply.id
    : undefined;
  if (item.file) {
    const { name, mime, size, data } = item.file;
    sendEnvelope(ws, { type: "file", cid: item.cid, name, mime, size, reply_to: replyTo });
    ws.send(data);
  } else {
    sendEnvelope(ws, { type: "message", cid: item.cid, text: item.text, reply_to: replyTo });
  }
  item.sentOn = ws;
}

/**
 * @param {WebSocket} ws
 * @param {PendingChange} change
 */
function transmitChange(ws, change) {
  if (ws.readyState !== WebSocket.OPEN) return;
  const { kind, cid, target, text } = change;
  sendEnvelope(ws, { type: kind, cid, id: target, text: kind === "edit" ? text : undefined });
  change.sentOn = ws;
}

/**
 * Edits or deletes one of our messages: shown as in progress at once, sent
 * now or on the next connection.
 *
 * @param {Entry} entry
 * @param {"edit" | "delete"} kind
 * @param {string} [text]
 */
function requestChange(entry, kind, text) {
  const room = currentRoom();
  /** @type {PendingChange} */
  const change = { cid: nextCid(), kind, target: entry.id, epoch: entry.epoch, sentOn: null };
  if (kind === "edit") change.text = text;
  room.changes.push(change);
  redrawEntry(room, entry);
  if (state.ws && state.joined) transmitChange(state.ws, change);
  else if (!state.ws || state.ws.readyState === WebSocket.CLOSED) connect();
}

/** @param {Outgoing} item */
function queue(item) {
  const room = currentRoom();
  room.outbox.push(item);
  stickToBottom = true;
  const li = renderPending(item);
  pendingElements.set(item.cid, li);
  ui.messages.append(li);
  keepBottom();
  if (state.ws && state.joined) transmit(state.ws, item);
  else if (!state.ws || state.ws.readyState === WebSocket.CLOSED) connect();
}

/**
 * @param {string} text
 * @param {Outgoing["reply"]} [reply]
 */
function sendText(text, reply) {
  queue({ cid: nextCid(), ts: Date.now(), text, reply, sentOn: null, attempts: 0 });
}

/**
 * The message a reply being written answers, and ends the reply: a file sent
 * meanwhile answers it too.
 *
 * @returns {Outgoing["reply"]}
 */
function takeReply() {
  const mode = state.compose;
  if (mode?.kind !== "reply") return undefined;
  const entry = currentRoom().keys.get(mode.key);
  endCompose(false);
  return entry && { id: entry.id, epoch: entry.epoch };
}

/** @param {string} name */
function cleanFileName(name) {
  const clean = [...name].filter((ch) => !hasControl(ch)).join("").trim();
  return [...(clean || "file")].slice(0, MAX_FILE_NAME_LENGTH).join("");
}

/** @param {string} type */
function cleanMime(type) {
  const bare = type.split(";")[0].trim().toLowerCase();
  return MIME_PATTERN.test(bare) && bare.length <= 127 ? bare : "application/octet-stream";
}

/** @param {File} file */
async function sendFile(file) {
  if (file.size > MAX_FILE_BYTES) {
    showNotice(
      `${file.name} is too large: ${formatSize(file.size)}, limit is ${
        formatSize(MAX_FILE_BYTES)
      }.`,
    );
    return;
  }
  const data = await file.arrayBuffer();
  const mime = cleanMime(file.type);
  queue({
    cid: nextCid(),
    ts: Date.now(),
    reply: takeReply(),
    file: {
      name: cleanFileName(file.name),
      mime,
      size: data.byteLength,
      data,
      url: blobUrl(data, mime),
    },
    sentOn: null,
    attempts: 0,
  });
}

/** @param {Iterable<File>} files */
async function sendFiles(files) {
  for (const file of files) {
    try {
      await sendFile(file);
    } catch (error) {
      showNotice(`Cannot read ${file.name}: ${error instanceof Error ? error.message : error}`);
    }
  }
}

// ---------------------------------------------------------------- composing

/** @param {Entry} entry */
function startReply(entry) {
  if (state.compose?.kind === "edit") endCompose(true);
  state.compose = { kind: "reply", key: entry.key };
  renderComposer();
  ui.text.focus();
}

/** @param {Entry} entry */
function startEdit(entry) {
  if (entry.text === undefined) return;
  // What was being written waits while the edit happens.
  const draft = state.compose?.kind === "edit" ? state.compose.draft : ui.text.value;
  state.compose = { kind: "edit", key: entry.key, draft };
  ui.text.value = pendingChangeOf(currentRoom(), entry)?.text ?? entry.text;
  renderComposer();
  ui.text.focus();
  ui.text.setSelectionRange(ui.text.value.length, ui.text.value.length);
}

/**
 * Back to writing a new message.
 *
 * @param {boolean} restoreDraft Put back what was being written before an edit
 *   (after the edit is saved or cancelled); false keeps the box as it is.
 */
function endCompose(restoreDraft) {
  const mode = state.compose;
  if (!mode) return;
  state.compose = null;
  if (mode.kind === "edit" && restoreDraft) ui.text.value = mode.draft;
  renderComposer();
}

/**
 * What the server would refuse for its length, in words; null when fine.
 *
 * @param {string} text
 * @returns {string | null}
 */
function lengthProblem(text) {
  if (state.maxText === null) return null;
  const length = codePoints(text);
  if (length <= state.maxText) return null;
  return `The message is ${length} characters long; the limit is ${state.maxText}.`;
}

/** @param {string} text */
function saveEdit(text) {
  const mode = state.compose;
  if (mode?.kind !== "edit") return;
  const entry = currentRoom().keys.get(mode.key);
  if (!entry || entry.deleted || entry.text === undefined) {
    showNotice("That message was deleted, so it cannot be edited; your text is still in the box.");
    endCompose(false);
    return;
  }
  const shown = pendingChangeOf(currentRoom(), entry)?.text ?? entry.text;
  endCompose(true);
  if (text !== shown) requestChange(entry, "edit", text);
}

// ---------------------------------------------------------------- nickname

/**
 * @param {string} [problem] What was wrong with the last one, in words.
 * @param {string} [value] What the box starts with; the current nickname by default.
 */
function openNickDialog(problem, value) {
  ui.nickInput.value = value ?? state.nick ?? "";
  ui.nickError.textContent = problem ?? "";
  // Without a nickname the server accepts there is no joining: no way out.
  ui.nickCancel.hidden = state.nick === null || state.needNick;
  if (!ui.nickDialog.open) ui.nickDialog.showModal();
  ui.nickInput.focus();
  ui.nickInput.select();
}

/** @param {string} nick */
function applyNick(nick) {
  const first = state.nick === null;
  state.nick = nick;
  store(localStorage, "parley.nick", nick);
  renderNick();
  const ws = state.ws;
  if (ws && ws.readyState === WebSocket.OPEN) {
    if (state.joined) {
      state.renaming = nick;
      sendEnvelope(ws, { type: "nick", nick });
    } else if (state.needNick) {
      state.needNick = false;
      sendHello(ws); // the last hello was refused for its nickname
    }
  } else if (first || !ws || ws.readyState === WebSocket.CLOSED) {
    connect();
  }
  showStatus();
}

// ---------------------------------------------------------------- rooms

/** @param {string} name */
function switchRoom(name) {
  if (name === state.room) return;
  disconnect();
  hideNotice();
  hideRefusal();
  closeRemoveForm(false);
  saveRoom(currentRoom());
  endCompose(false);
  typists.clear();
  state.room = name;
  state.me = null;
  state.attempt = 0;
  state.stopped = false;
  // Access is per room: the welcome of the next one says it.
  state.access = "write";
  state.moderator = false;
  renderAccess();
  members.clear();
  kicked.clear();
  renderMembers();
  renderRoom();
  renderAll();
  connect();
}

// ---------------------------------------------------------------- events

ui.compose.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.text.value;
  if (text.trim() === "") return;
  if (state.access === "read") {
    showNotice(READ_ONLY_WORDS);
    return;
  }
  if (!canJoin()) {
    openNickDialog();
    return;
  }
  const problem = lengthProblem(text);
  if (problem) {
    showNotice(problem);
    return;
  }
  if (state.compose?.kind === "edit") {
    saveEdit(text);
    return;
  }
  ui.text.value = "";
  sendText(text, takeReply());
  // The message ends our indicator for the others: the next message may start
  // a new one as soon as the server takes it.
  typingSignal.allowAfter(SERVER_TYPING_INTERVAL_MS + 200);
});

ui.text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.compose.requestSubmit();
  } else if (event.key === "Escape" && state.compose) {
    event.preventDefault();
    endCompose(true);
  }
});

ui.text.addEventListener("input", () => {
  // Others see that we type a message; editing an old one is not news.
  if (state.compose?.kind === "edit" || ui.text.value.trim() === "") return;
  const ws = state.ws;
  if (ws && state.joined && typingSignal.take()) sendEnvelope(ws, { type: "typing" });
});

ui.composeCancel.addEventListener("click", () => {
  endCompose(true);
  ui.text.focus();
});

ui.messages.addEventListener("click", (event) => {
  const target = event.target;
  if (!(target instanceof HTMLElement)) return;
  const button = target.closest("button.tool");
  const li = button?.closest("li.msg");
  if (!(button instanceof HTMLButtonElement) || !(li instanceof HTMLLIElement)) return;
  const entry = currentRoom().keys.get(li.dataset.key ?? "");
  if (!entry || entry.deleted) return;
  if (button.dataset.action === "reply") startReply(entry);
  else if (button.dataset.action === "edit" && isOwn(entry)) startEdit(entry);
  else if (button.dataset.action === "delete" && (isOwn(entry) || state.moderator)) {
    if (state.compose?.key === entry.key) endCompose(state.compose.kind === "edit");
    requestChange(entry, "delete");
  }
});

ui.loadOlder.addEventListener("click", loadOlder);

ui.text.addEventListener("paste", (event) => {
  const files = event.clipboardData?.files;
  if (files && files.length > 0) {
    event.preventDefault();
    sendFiles([...files]);
  }
});

ui.file.addEventListener("change", () => {
  const files = [...(ui.file.files ?? [])];
  ui.file.value = "";
  sendFiles(files);
});

ui.messages.addEventListener("dragover", (event) => {
  if (!event.dataTransfer?.types.includes("Files")) return;
  event.preventDefault();
  ui.messages.classList.add("drop-target");
});
ui.messages.addEventListener("dragleave", () => ui.messages.classList.remove("drop-target"));
ui.messages.addEventListener("drop", (event) => {
  ui.messages.classList.remove("drop-target");
  const files = event.dataTransfer?.files;
  if (!files || files.length === 0) return;
  event.preventDefault();
  sendFiles([...files]);
});
ui.messages.addEventListener("scroll", () => {
  stickToBottom = atBottom();
  const list = ui.messages;
  if (list.scrollTop < 40 && list.scrollHeight > list.clientHeight) loadOlder();
});

ui.nickButton.addEventListener("click", () => openNickDialog());
ui.nickCancel.addEventListener("click", () => ui.nickDialog.close());
ui.nickDialog.addEventListener("cancel", (event) => {
  // A nickname is needed to join.
  if (state.nick === null || state.needNick) event.preventDefault();
});
ui.nickForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const problem = nickProblem(ui.nickInput.value);
  if (problem) {
    ui.nickError.textContent = problem;
    ui.nickInput.focus();
    return;
  }
  ui.nickDialog.close();
  applyNick(ui.nickInput.value.trim());
  // The dialog gives focus back to what had it, often nothing: next comes a message.
  if (!ui.text.disabled) ui.text.focus();
});

ui.roomForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = ui.roomInput.value.trim();
  if (!ROOM_PATTERN.test(name)) {
    ui.roomInput.setCustomValidity("1 to 64 letters, digits, _ or -");
    ui.roomInput.reportValidity();
    return;
  }
  ui.roomInput.setCustomValidity("");
  if (name !== state.room) history.pushState(null, "", BASE + name);
  switchRoom(name);
});
ui.roomInput.addEventListener("input", () => ui.roomInput.setCustomValidity(""));

addEventListener("popstate", () => switchRoom(roomFromPath(location.pathname)));

ui.membersToggle.addEventListener("click", () => {
  const open = ui.membersPanel.classList.toggle("open");
  ui.membersToggle.setAttribute("aria-expanded", String(open));
  if (open) loadMembers(true);
});

ui.membersMore.addEventListener("click", () => loadMembers(false));

ui.noticeClose.addEventListener("click", hideNotice);

ui.members.addEventListener("click", (event) => {
  const target = event.target;
  if (!(target instanceof HTMLElement)) return;
  const button = target.closest("button.member-remove");
  if (!(button instanceof HTMLButtonElement)) return;
  const id = button.dataset.member ?? "";
  if (state.removing === id) closeRemoveForm(true);
  else openRemoveForm(id);
});

ui.removeForm.addEventListener("submit", (event) => {
  event.preventDefault();
  submitRemoval();
});
ui.removeReason.addEventListener("input", () => ui.removeReason.setCustomValidity(""));
ui.removeCancel.addEventListener("click", () => closeRemoveForm(true));
ui.removeForm.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    event.preventDefault();
    closeRemoveForm(true);
  }
});

ui.tryAgain.addEventListener("click", () => {
  // One new attempt: should it be refused again, the page stops again.
  hideRefusal();
  state.attempt = 0;
  connect();
});

ui.reconnect.addEventListener("click", () => {
  state.attempt = 0;
  hideNotice();
  connect();
});

addEventListener("pagehide", () => {
  state.leaving = true;
  saveAll();
  disconnect();
});

addEventListener("pageshow", (event) => {
  if (!event.persisted) return;
  state.leaving = false;
  connect();
});

addEventListener("online", () => {
  if (state.stopped || state.leaving) return;
  if (!state.ws || state.ws.readyState === WebSocket.CLOSED) {
    state.attempt = 0;
    connect();
  }
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.reconnectWhenVisible) connect();
});

// Tests read the socket through this; nothing else is exposed.
Object.defineProperty(globalThis, "parley", {
  value: Object.freeze({
    get ws() {
      return state.ws;
    },
    get room() {
      return state.room;
    },
    get me() {
      return state.me;
    },
  }),
});

// ---------------------------------------------------------------- start

renderRoom();
renderNick();
renderAll();
renderMembers();
renderAccess();
showStatus();
if (canJoin()) {
  connect();
  // Ready to type, except on a touch screen, where focus would raise the keyboard over the page.
  if (!ui.text.disabled && !matchMedia("(pointer: coarse)").matches) ui.text.focus();
} else openNickDialog();
