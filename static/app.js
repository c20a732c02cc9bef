// @ts-check
/**
 * The Parley chat page: the UI of one room at a time, on the client SDK
 * (`parley-client.js`), which does the protocol: joining and resuming,
 * reconnecting, the outbox and its resends, presence, typing, scroll-back.
 *
 * This module renders what the SDK reports, takes what people type and drop,
 * and keeps what they see and type (the conversation and drafts) across
 * reloads. User content reaches the DOM only through `textContent` and safe
 * attributes (links: see `text.js`). Wording of refusals lives in
 * `access.js` and `lifecycle.js`.
 *
 * @module
 */

import { ParleyClient, WebStorage } from "./parley-client.js";
import {
  BAN_MINUTES,
  describeKick,
  describeRefusal,
  hasControl,
  MAX_REASON_LENGTH,
  nickProblem,
  nickRefusal,
  refusalCloseCode,
  tokenFromHash,
} from "./access.js";
import { applyChange, quoteOf, refusal } from "./lifecycle.js";
import { describePresence } from "./roster.js";
import { fillText } from "./text.js";
import { describeTyping, TypingList } from "./typing.js";
import { codePoints, isId, isObject, readMember } from "./wire.js";

/** @typedef {import("./wire.js").Member} Member */
/**
 * A file as shown in the list. `url` is a blob: URL owned by the entry, or
 * the server's URL of a stored file. `unloaded` marks a file from a
 * scroll-back page, which brings no bytes.
 * @typedef {{ name: string, mime: string, size: number, omitted?: boolean, url?: string,
 *   gone?: boolean, missing?: boolean, unloaded?: boolean }} FileInfo
 */
/**
 * A message of the room, text or file, in server order. A `note` is no
 * message but something that happened (someone joined, a gap), shown after
 * the message it followed and never stored.
 * @typedef {{ key: string, id: number, epoch: string, ts: number, from: Member | null,
 *   cid: string, text?: string, file?: FileInfo, stray?: boolean, replyTo?: number,
 *   edited?: number, deleted?: boolean, moderated?: boolean, note?: string,
 *   gap?: boolean }} Entry
 */
/**
 * An outbox item of the SDK, as far as the page reads it.
 * @typedef {{ cid: string, kind: "message" | "file" | "edit" | "delete", text?: string,
 *   replyTo?: { epoch: string, id: number }, target?: { epoch: string, id: number },
 *   file?: { name: string, mime: string, size: number, data: Uint8Array },
 *   createdAt: number }} Item
 */
/**
 * A message of ours that failed for good: shown with Retry and Delete.
 * @typedef {{ item: Item, reason: string }} Failed
 */
/**
 * Everything the page knows about one room. `epochs` lists the epochs seen,
 * oldest first: a restarted server's new ids come after the old ones.
 * @typedef {{ name: string, epoch: string | null, epochs: string[], head: number,
 *   entries: Entry[], keys: Map<string, Entry>, failed: Failed[], more: boolean | null,
 *   loadingOlder: boolean, settling: Map<string, Item>,
 *   saveTimer: ReturnType<typeof setTimeout> | undefined }} RoomState
 */
/**
 * What the message box is for besides a new message.
 * @typedef {{ kind: "reply", key: string } | { kind: "edit", key: string, draft: string }} ComposeMode
 */

const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const CLIENT_PATTERN = /^[A-Za-z0-9_-]{8,64}$/;
const MIME_PATTERN = /^[\w.+-]+\/[\w.+-]+$/;
const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const MAX_FILE_NAME_LENGTH = 255;
/** The server's default MAX_MESSAGE_BYTES, until a welcome says the limit. */
const MAX_FILE_BYTES = 2 * 1024 * 1024;
const MEMORY_ENTRIES = 1000;
const STORED_ENTRIES = 200;
const READ_ONLY_WORDS = "This room is read-only for you.";
const RECOVERY_NOTICE = "Could not resume: some messages may be missing.";
const GAP_WORDS = "Some messages may be missing here.";
/** The counter shows once a message is this share of the limit. */
const COUNTER_FROM = 0.8;
/** A message continues its author's group when it follows within this many ms. */
const GROUP_MS = 5 * 60_000;
/** Messages put into the page per animation frame: a burst stays smooth. */
const FLUSH_MAX = 20;
/** Ids of one epoch stay below this, so that (epoch, id) sorts as one number. */
const EPOCH_SPAN = 2 ** 40;

// Made once: a format made per call (`toLocaleTimeString`) costs half a millisecond.
const TIME_FORMAT = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const FULL_FORMAT = new Intl.DateTimeFormat([], { dateStyle: "short", timeStyle: "medium" });
const DAY_FORMAT = new Intl.DateTimeFormat([], { weekday: "long", month: "long", day: "numeric" });

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
  counter: byId("counter", HTMLElement),
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
  jump: byId("jump", HTMLButtonElement),
  copyLink: byId("copy-link", HTMLButtonElement),
  lightbox: byId("lightbox", HTMLDialogElement),
  lightboxImage: byId("lightbox-image", HTMLImageElement),
  lightboxCaption: byId("lightbox-caption", HTMLElement),
  welcome: byId("welcome", HTMLElement),
  welcomeClose: byId("welcome-close", HTMLButtonElement),
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
 * @param {string | null} value null removes the key.
 */
function store(storage, key, value) {
  try {
    if (value === null) storage.removeItem(key);
    else storage.setItem(key, value);
  } catch {
    // quota or disabled storage: forgetting is better than failing
  }
}

/**
 * The client id is shared by every tab of this browser (one member), so it
 * lives in localStorage; what one tab saw and has not sent lives in its
 * sessionStorage, which a reload keeps.
 *
 * @returns {string}
 */
function loadClientId() {
  const saved = load(localStorage, "parley.client");
  if (saved && CLIENT_PATTERN.test(saved)) return saved;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  const fresh = Array.from(bytes, (b) => ID_ALPHABET[b & 63]).join("");
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

/** @param {string} room */
function draftKey(room) {
  return `parley.draft.${room}`;
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
/** @type {Map<string, HTMLLIElement>} entry key to its element, for the current room */
const elements = new Map();
/** @type {Map<string, HTMLLIElement>} cid to the element of a pending or failed message */
const pendingElements = new Map();
/** @type {Map<string, string>} cid to the blob: URL of a file of ours being sent */
const pendingUrls = new Map();

const state = {
  room: roomFromPath(location.pathname),
  clientId: loadClientId(),
  /** The invite token, sent in every hello; null in open mode. */
  token: takeToken(),
  /** True once a welcome accepted the token: a later 4401 means it expired. */
  tokenAccepted: false,
  nick: loadNick(),
  /** A hello was refused for its nickname: the socket waits for another one. */
  needNick: false,
  /** @type {string | null} A rename sent and not answered yet. */
  renaming: null,
  /** @type {ParleyClient | null} The SDK's client of the current room. */
  client: null,
  /** @type {WebSocket | null} The client's current socket (tests read it). */
  ws: null,
  joined: false,
  /** @type {Member | null} */
  me: null,
  /** @type {import("../client/mod.ts").Status | { state: "idle" }} */
  status: { state: "idle" },
  /** @type {string | null} Why the server refused us (4401, 4403): no reconnecting. */
  refused: null,
  /** The detail of the last in-band refusal, such as "token expired". */
  refusalDetail: "",
  /** @type {"write" | "read"} What we may do in the room, from `welcome`. */
  access: "write",
  /** True when we moderate the room: Delete on every message, Remove on members. */
  moderator: false,
  /** @type {string | null} The member whose Remove form is open. */
  removing: null,
  /** @type {Map<string, string>} cid of a kick sent to the nickname it removes */
  kicks: new Map(),
  membersLoading: false,
  /** The last page of members said more follow (and nothing made the list stale since). */
  membersMore: false,
  noteCount: 0,
  strayCount: 0,
  /** @type {ComposeMode | null} */
  compose: null,
  /** @type {number | null} The longest text the server takes, from `welcome`. */
  maxText: null,
  /** The largest frame the server takes, from `welcome`. */
  maxBytes: MAX_FILE_BYTES,
  /** @type {ReturnType<typeof setInterval> | undefined} Counts down "Reconnecting in". */
  countdown: undefined,
};

const typists = new TypingList(() => {
  ui.typing.textContent = describeTyping(typists.members);
});

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
 * Reads a room's recent messages from sessionStorage, so a reload shows
 * them at once (the SDK resumes after the last one).
 *
 * @param {string} name
 * @returns {RoomState}
 */
function restoreRoom(name) {
  /** @type {RoomState} */
  const room = {
    name,
    epoch: null,
    epochs: [],
    head: 0,
    entries: [],
    keys: new Map(),
    failed: [],
    more: null,
    loadingOlder: false,
    settling: new Map(),
    saveTimer: undefined,
  };
  try {
    const saved = JSON.parse(load(sessionStorage, `parley.room.${name}`) ?? "null");
    if (!saved || !Array.isArray(saved.epochs)) return room;
    room.epochs = saved.epochs.filter((/** @type {unknown} */ e) => typeof e === "string");
    room.epoch = room.epochs.at(-1) ?? null;
    room.head = isId(saved.head) ? saved.head : 0;
    for (const raw of Array.isArray(saved.entries) ? saved.entries : []) {
      const entry = readEntry(raw);
      if (!entry || room.keys.has(entry.key) || !room.epochs.includes(entry.epoch)) continue;
      if (raw.gap === true) {
        entry.note = GAP_WORDS;
        entry.gap = true;
      } else if (entry.file && !entry.file.omitted) {
        // Its bytes came over the socket before the reload; the server keeps them too.
        if (state.token === null) entry.file.url = storedFileUrl(name, entry.epoch, entry.id);
        else {
          entry.file.gone = true; // until fetched
          fetchStored(room, entry);
        }
      }
      room.entries.push(entry);
      room.keys.set(entry.key, entry);
    }
    room.entries.sort((a, b) => order(room, a) - order(room, b));
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
  const kept = room.entries.filter((e) => !e.stray && (e.note === undefined || e.gap));
  const entries = kept.slice(-STORED_ENTRIES).map((e) => ({
    id: e.id,
    epoch: e.epoch,
    ts: e.ts,
    from: e.from,
    cid: e.cid,
    text: e.text,
    gap: e.gap,
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
  const record = { epochs: room.epochs, head: room.head, entries };
  store(sessionStorage, `parley.room.${room.name}`, JSON.stringify(record));
}

function saveAll() {
  for (const room of rooms.values()) saveRoom(room);
}

// ---------------------------------------------------------------- entries

/**
 * Reads a stored entry.
 *
 * @param {unknown} value
 * @returns {Entry | null}
 */
function readEntry(value) {
  if (!isObject(value)) return null;
  const { id, epoch } = value;
  if (typeof id !== "number" || !Number.isSafeInteger(id) || typeof epoch !== "string") {
    return null;
  }
  /** @type {Entry} */
  const entry = {
    key: entryKey(epoch, id),
    id,
    epoch,
    ts: typeof value.ts === "number" ? value.ts : Date.now(),
    from: readMember(value.from),
    cid: typeof value.cid === "string" ? value.cid : "",
  };
  if (value.gap === true) {
    entry.key = `gap:${epoch}:${id}`;
    return entry;
  }
  if (isId(value.reply_to)) entry.replyTo = value.reply_to;
  if (value.deleted === true) {
    entry.deleted = true;
    if (value.moderated === true) entry.moderated = true;
    return entry;
  }
  if (typeof value.text === "string") {
    entry.text = value.text;
    if (typeof value.edited === "number") entry.edited = value.edited;
    return entry;
  }
  const file = value.file;
  if (isObject(file) && typeof file.name === "string") {
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
 * An entry from a message the SDK reports.
 *
 * @param {import("../client/mod.ts").ChatMessage} message
 * @returns {Entry}
 */
function entryOf(message) {
  /** @type {Entry} */
  const entry = {
    key: entryKey(message.epoch, message.id),
    id: message.id,
    epoch: message.epoch,
    ts: message.ts,
    from: message.from,
    cid: message.cid ?? "",
  };
  if (message.replyTo !== undefined) entry.replyTo = message.replyTo;
  if (message.deleted) entry.deleted = true;
  else if (message.text !== undefined) {
    entry.text = message.text;
    if (message.edited !== undefined) entry.edited = message.edited;
  } else if (message.file) {
    const { name, mime, size, data, omitted } = message.file;
    entry.file = { name, mime, size, omitted: omitted === true };
    if (data) entry.file.url = blobUrl(data, mime);
  }
  return entry;
}

/**
 * @param {string} epoch
 * @param {number} id
 */
function entryKey(epoch, id) {
  return `${epoch}:${id}`;
}

/**
 * Where an entry sorts: by epoch (in the order seen), then by id.
 *
 * @param {RoomState} room
 * @param {Entry} entry
 */
function order(room, entry) {
  let rank = room.epochs.indexOf(entry.epoch);
  if (rank < 0) rank = room.epochs.length;
  return rank * EPOCH_SPAN + entry.id;
}

/**
 * @param {Uint8Array | ArrayBuffer} data
 * @param {string} mime
 */
function blobUrl(data, mime) {
  // Only pictures keep their type; anything else is an opaque download.
  const type = mime.startsWith("image/") ? mime : "application/octet-stream";
  return URL.createObjectURL(new Blob([/** @type {BlobPart} */ (data)], { type }));
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
// ---------------------------------------------------------------- rendering

/** @param {number} ts */
function formatTime(ts) {
  return TIME_FORMAT.format(ts);
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
    fillText(body, content.text, state.me?.nick ?? state.nick);
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
  li.className = entry.gap ? "note gap" : "note";
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
  time.setAttribute("title", FULL_FORMAT.format(entry.ts));
  if (entry.deleted) li.classList.add("deleted");
  const room = currentRoom();
  const change = pendingChangeOf(room, entry);
  if (entry.edited !== undefined) {
    const mark = part(li, ".edited");
    mark.hidden = false;
    mark.setAttribute("title", `edited ${FULL_FORMAT.format(entry.edited)}`);
  }
  if (entry.replyTo !== undefined) {
    fillQuote(part(li, ".quote"), room.keys.get(entryKey(entry.epoch, entry.replyTo)));
  }
  const shownText = change?.kind === "edit" && !entry.deleted ? { text: change.text } : entry;
  grouping(li, entry);
  fillBody(part(li, ".body"), shownText);
  if (change) part(li, ".state").textContent = change.kind === "edit" ? "saving…" : "deleting…";
  else if (!entry.stray && !entry.deleted) fillTools(part(li, ".tools"), entry);
  return li;
}

/**
 * Our newest edit or delete of an entry that is still in flight, or acked
 * and not seen yet (so the old text does not flash).
 *
 * @param {RoomState} room
 * @param {Entry} entry
 * @returns {Item | undefined}
 */
function pendingChangeOf(room, entry) {
  /** @param {Item} item */
  const aims = (item) =>
    (item.kind === "edit" || item.kind === "delete") && item.target?.id === entry.id &&
    item.target.epoch === entry.epoch;
  const outbox = /** @type {readonly Item[]} */ (state.client?.outbox ?? []);
  return outbox.findLast(aims) ?? [...room.settling.values()].findLast(aims);
}

/**
 * Marks a message that continues its author's previous one (within a few
 * minutes, the same day) and one that starts a new day.
 *
 * @param {HTMLLIElement} li
 * @param {Entry} entry
 */
function grouping(li, entry) {
  const room = currentRoom();
  const index = room.entries.indexOf(entry);
  let previous = index > 0 ? room.entries[index - 1] : undefined;
  while (previous?.stray) previous = room.entries[room.entries.indexOf(previous) - 1];
  const day = new Date(entry.ts).toDateString();
  if (!previous || new Date(previous.ts).toDateString() !== day) {
    li.dataset.day = DAY_FORMAT.format(entry.ts);
    li.classList.add("new-day");
    return;
  }
  if (
    previous.note === undefined && entry.from !== null && previous.from?.id === entry.from.id &&
    entry.ts - previous.ts < GROUP_MS
  ) {
    li.classList.add("grouped");
  }
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

/** What a message of ours waiting for the server says, in people's words. */
function pendingWords() {
  return state.status.state === "open" ? "sending…" : "Waiting to send";
}

/**
 * A message of ours the server has not stored yet, or that failed for good
 * (`reason`): that one offers Retry and Delete.
 *
 * @param {Item} item
 * @param {string} [reason]
 * @returns {HTMLLIElement}
 */
function renderPending(item, reason) {
  const li = cloneMessage();
  li.classList.add(reason === undefined ? "pending" : "failed", "own");
  li.dataset.cid = item.cid;
  part(li, ".from").textContent = state.me?.nick ?? state.nick ?? "";
  const time = part(li, ".time");
  time.textContent = formatTime(item.createdAt);
  time.setAttribute("datetime", new Date(item.createdAt).toISOString());
  part(li, ".state").textContent = reason === undefined ? pendingWords() : `not sent: ${reason}`;
  if (reason !== undefined) {
    const tools = part(li, ".tools");
    for (const [action, label] of [["retry", "Retry"], ["discard", "Delete"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "tool";
      button.dataset.action = action;
      button.textContent = label;
      tools.append(button);
    }
  }
  if (item.replyTo) {
    const key = entryKey(item.replyTo.epoch, item.replyTo.id);
    fillQuote(part(li, ".quote"), currentRoom().keys.get(key));
  }
  if (item.file) {
    let url = pendingUrls.get(item.cid);
    if (!url) {
      url = blobUrl(item.file.data, item.file.mime);
      pendingUrls.set(item.cid, url);
    }
    const { name, mime, size } = item.file;
    fillBody(part(li, ".body"), { file: { name, mime, size, url } });
  } else fillBody(part(li, ".body"), { text: item.text });
  return li;
}

/** Our messages not stored yet, oldest first (not edits or deletes). */
function outgoing() {
  const items = /** @type {readonly Item[]} */ (state.client?.outbox ?? []);
  return items.filter((item) => item.kind === "message" || item.kind === "file");
}

/** Shows every outbox message of ours and every failed one, each once, after the messages. */
function renderOutbox() {
  const room = currentRoom();
  /** @type {[Item, string | undefined][]} */
  const wanted = [
    ...room.failed.map((f) => /** @type {[Item, string]} */ ([f.item, f.reason])),
    ...outgoing().map((item) => /** @type {[Item, undefined]} */ ([item, undefined])),
  ];
  const cids = new Set(wanted.map(([item]) => item.cid));
  for (const [cid, li] of pendingElements) {
    if (!cids.has(cid)) {
      li.remove();
      pendingElements.delete(cid);
    }
  }
  const words = pendingWords();
  for (const [item, reason] of wanted) {
    const old = pendingElements.get(item.cid);
    if (old && old.classList.contains("failed") === (reason !== undefined)) {
      const mark = part(old, ".state");
      if (reason === undefined && mark.textContent !== words) mark.textContent = words;
      ui.messages.append(old); // keeps the order; a no-op when already last
      continue;
    }
    const li = renderPending(item, reason);
    if (old) old.replaceWith(li);
    else ui.messages.append(li);
    pendingElements.set(item.cid, li);
  }
  keepBottom();
}

/** True when the list shows its newest message, so new ones should stay in view. */
function atBottom() {
  const list = ui.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

let stickToBottom = true;

/** Where the list was scrolled to last, by the person or by the page. */
let lastScrollTop = 0;

function keepBottom() {
  if (!stickToBottom) return;
  ui.messages.scrollTop = ui.messages.scrollHeight;
  lastScrollTop = ui.messages.scrollTop;
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
  toInsert = [];
  unread.count = 0;
  unread.first = null;
  const items = [];
  for (const entry of room.entries) {
    const li = renderEntry(entry);
    elements.set(entry.key, li);
    items.push(li);
  }
  ui.messages.replaceChildren(ui.historyEdge, ...items);
  renderOutbox();
  renderEdge();
  stickToBottom = true;
  keepBottom();
  renderUnread();
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

/**
 * Whether the list starts at the beginning of the room's history.
 *
 * @param {RoomState} room
 */
function atStart(room) {
  if (room.epoch === null) return false;
  if (room.more === false) return true;
  const oldest = oldestShown(room);
  return oldest === null ? room.head === 0 : oldest <= 1;
}

/** Shows the top of the list: a button for older messages, or the start of history. */
function renderEdge() {
  const room = currentRoom();
  const start = atStart(room);
  const loading = room.loadingOlder;
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

/** The members the SDK lists, by id. */
function members() {
  return /** @type {ReadonlyMap<string, Member>} */ (state.client?.members ?? new Map());
}

function renderMembers() {
  const sorted = [...members().values()].sort((a, b) =>
    a.nick.localeCompare(b.nick, undefined, { sensitivity: "base" }) || a.id.localeCompare(b.id)
  );
  if (state.removing !== null && (!state.moderator || !members().has(state.removing))) {
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
  // Offline, the list is as it was: who is there now is unknown.
  const known = state.joined;
  const count = known ? (state.client?.memberCount ?? 0).toLocaleString("en") : "?";
  // Called on every presence update: touch the DOM only when something changes.
  if (ui.memberCount.textContent !== count) ui.memberCount.textContent = count;
  if (ui.memberTotal.textContent !== count) ui.memberTotal.textContent = count;
  ui.membersPanel.classList.toggle("unknown", !known);
  ui.members.title = known ? "" : "Unknown while offline";
  const complete = !state.client?.membersIncomplete;
  if (ui.membersMore.hidden !== complete) ui.membersMore.hidden = complete;
  const busy = state.membersLoading;
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
  const member = members().get(id);
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
  const member = id === null ? undefined : members().get(id);
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
  if (!state.client || !state.joined) {
    showNotice(`Cannot remove ${member.nick} while offline; try again once connected.`);
    return;
  }
  const cid = state.client.kick(member.id, {
    minutes: BAN_MINUTES.includes(minutes) ? minutes : 0,
    reason,
  });
  state.kicks.set(cid, member.nick);
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
  state.needNick = false;
  if (ui.nickDialog.open) ui.nickDialog.close();
  ui.refusalText.textContent = why;
  ui.refusal.hidden = false;
  hideNotice();
  closeRemoveForm(false);
  typists.clear();
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
  renderTitle();
}

/** The tab's title: the room, after the count of messages not seen yet. */
function renderTitle() {
  const title = `${state.room} · Parley`;
  const wanted = unread.count > 0 ? `(${unread.count}) ${title}` : title;
  if (document.title !== wanted) document.title = wanted;
}

/**
 * @param {number} count
 * @param {string} what
 */
function plural(count, what) {
  return `${count} ${what}${count === 1 ? "" : "s"}`;
}

/** Says the connection's state as people would; called on every change. */
function showStatus() {
  const status = state.status;
  const waiting = outgoing().length;
  const later = waiting > 0 ? `: ${plural(waiting, "message")} will be sent when you're back` : "";
  let word = "closed";
  if (status.state === "open") word = "open";
  else if (status.state === "connecting") {
    word = status.attempt > 0 ? "Reconnecting…" : "Connecting…";
  } else if (status.state === "offline") word = `Offline${later}`;
  else if (status.state === "reconnecting") {
    const seconds = Math.max(1, Math.ceil((reconnectAt - Date.now()) / 1000));
    word = `Reconnecting in ${seconds} s…`;
    if (waiting > 0) word += ` ${plural(waiting, "message")} waiting to send`;
  }
  if (ui.status.textContent !== word) ui.status.textContent = word;
  ui.status.dataset.state = status.state === "idle" ? "closed" : status.state;
  // A close the server chose (not a refusal) waits for the person.
  ui.reconnect.hidden = !(status.state === "closed" && canJoin() && state.refused === null);
  renderEdge(); // older messages can be asked for only while joined
  renderMemberCount();
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

/** @type {Entry[]} Entries added to the model and not yet to the page (see `flush`). */
let toInsert = [];
let flushScheduled = false;

/** Messages that came while the person was reading older ones. */
const unread = {
  count: 0,
  /** @type {string | null} The key of the first of them, where the marker goes. */
  first: null,
};

/**
 * Adds a message to a room in order, unless it is already there. The page
 * shows it at the next animation frame, with everything else that came
 * meanwhile: a burst costs one layout, not one per message.
 *
 * @param {RoomState} room
 * @param {Entry} entry
 * @returns {boolean} Whether it was new.
 */
function addEntry(room, entry) {
  if (room.keys.has(entry.key)) return false;
  let index = room.entries.length;
  const rank = order(room, entry);
  while (index > 0 && order(room, room.entries[index - 1]) > rank) index--;
  room.entries.splice(index, 0, entry);
  room.keys.set(entry.key, entry);
  if (room.name === state.room) {
    toInsert.push(entry);
    scheduleFlush();
  }
  scheduleSave(room);
  return true;
}

function scheduleFlush() {
  if (flushScheduled) return;
  flushScheduled = true;
  // A page in the background gets few frames or none: a timer shows the messages all the same.
  requestAnimationFrame(() => flush());
  setTimeout(() => flush(), 100);
}

/**
 * Puts the entries added since the last frame into the page, at most
 * {@linkcode FLUSH_MAX} a frame (the rest at the next): one measure, one
 * scroll.
 *
 * @param {boolean} [all] Every entry now (a scroll-back page, which must be measured).
 */
function flush(all = false) {
  if (!flushScheduled) return;
  flushScheduled = false;
  const room = currentRoom();
  const waiting = toInsert.filter((e) => room.keys.get(e.key) === e && !elements.has(e.key));
  const entries = all ? waiting : waiting.slice(0, FLUSH_MAX);
  toInsert = waiting.slice(entries.length);
  if (toInsert.length > 0) scheduleFlush();
  if (entries.length === 0) return;
  const reading = !stickToBottom;
  const firstPending = ui.messages.querySelector(".msg.pending, .msg.failed");
  for (const entry of entries) {
    const index = room.entries.indexOf(entry);
    const li = renderEntry(entry);
    elements.set(entry.key, li);
    let next = null;
    for (let i = index + 1; i < room.entries.length && !next; i++) {
      next = elements.get(room.entries[i].key) ?? null;
    }
    ui.messages.insertBefore(li, next ?? firstPending);
    // The one after it may now continue its author's group, or not.
    const after = room.entries[index + 1];
    if (after && elements.has(after.key) && after.note === undefined) redrawEntry(room, after);
    if ((reading || document.hidden) && entry.note === undefined && !isOwn(entry)) {
      unread.count++;
      if (unread.first === null) {
        unread.first = entry.key;
        li.classList.add("first-unread");
      }
    }
  }
  trim(room);
  keepBottom();
  renderEdge();
  renderUnread();
}

/**
 * Forgets the oldest messages of a long conversation, unless the person is
 * reading older ones: those stay until back at the newest.
 *
 * @param {RoomState} room
 */
function trim(room) {
  const cap = stickToBottom ? MEMORY_ENTRIES : 4 * MEMORY_ENTRIES;
  while (room.entries.length > cap) {
    const old = room.entries.shift();
    if (!old) break;
    room.keys.delete(old.key);
    if (old.file?.url?.startsWith("blob:")) URL.revokeObjectURL(old.file.url);
    elements.get(old.key)?.remove();
    elements.delete(old.key);
  }
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
  if (state.compose && keys.has(state.compose.key)) renderComposer();
}

/**
 * Redraws one entry in place (its file arrived, it was edited).
 *
 * @param {RoomState} room
 * @param {Entry} entry
 */
function redrawEntry(room, entry) {
  if (room.name !== state.room) return;
  const old = elements.get(entry.key);
  if (!old) return;
  const li = renderEntry(entry);
  if (old.classList.contains("first-unread")) li.classList.add("first-unread");
  old.replaceWith(li);
  elements.set(entry.key, li);
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
 * Says something that happened in the room, after the newest message.
 *
 * @param {string} text
 * @param {boolean} [gap] A gap in the conversation: kept across reloads.
 * @param {number} [after] The id it follows; the newest shown by default.
 */
function addNote(text, gap = false, after) {
  const room = currentRoom();
  const epoch = room.epoch ?? "";
  let id = after ?? 0;
  if (after === undefined) {
    for (const entry of room.entries) if (entry.epoch === epoch && entry.id > id) id = entry.id;
  }
  state.noteCount++;
  addEntry(room, {
    key: gap ? `gap:${epoch}:${id}` : `note:${state.noteCount}`,
    id,
    epoch,
    ts: Date.now(),
    from: null,
    cid: "",
    note: text,
    gap,
  });
}

/** Shows the jump-to-latest button while new messages wait below. */
function renderUnread() {
  const show = !stickToBottom && unread.count > 0;
  ui.jump.hidden = !show;
  ui.jump.textContent = unread.count === 1 ? "1 new message ↓" : `${unread.count} new messages ↓`;
  renderTitle();
}

/** Back at the newest message: nothing is unread any more. */
function clearUnread() {
  if (unread.count === 0 && unread.first === null) return;
  unread.count = 0;
  if (unread.first !== null) elements.get(unread.first)?.classList.remove("first-unread");
  unread.first = null;
  renderUnread();
}

// ---------------------------------------------------------------- the client

/** When the SDK's next reconnect is due, for "Reconnecting in 3 s…". */
let reconnectAt = 0;

/** @param {string} room */
function socketUrl(room) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  return scheme + location.host + pathOfRoom(room);
}

/**
 * The browser's WebSocket, remembered as the current socket so tests can
 * reach it (`parley.ws`).
 */
class PageSocket extends WebSocket {
  /**
   * @param {string} url
   * @param {string | string[]} [protocols]
   */
  constructor(url, protocols) {
    super(url, protocols);
    state.ws = this;
    // The client read its saved outbox before opening this: show what waits from before a reload.
    queueMicrotask(() => {
      renderOutbox();
      showStatus();
    });
  }
}

/** Starts the SDK's client of the current room, unless it runs or cannot join. */
function connect() {
  if (state.client || !canJoin() || state.refused !== null) return;
  /** @type {Record<string, unknown>} */
  const options = {
    clientId: state.clientId,
    // What this tab saw and has not sent yet survives a reload of it.
    storage: new WebStorage(sessionStorage),
    WebSocket: PageSocket,
  };
  if (state.token !== null) options.token = state.token;
  else if (state.nick !== null) options.nick = state.nick;
  const client = new ParleyClient(socketUrl(state.room), options);
  state.client = client;
  const room = currentRoom();
  /**
   * @template {keyof import("../client/mod.ts").ParleyEvents} K
   * @param {K} type
   * @param {(payload: import("../client/mod.ts").ParleyEvents[K]) => void} fn
   */
  const on = (type, fn) =>
    client.on(type, (/** @type {import("../client/mod.ts").ParleyEvents[K]} */ payload) => {
      if (state.client === client) fn(payload);
    });
  on("status", onStatus);
  on("welcome", (welcome) => onWelcome(room, welcome));
  on("gap", (gap) => onGap(room, gap));
  on("message", (message) => onMessage(room, message));
  on("edit", (change) => onChange(room, change));
  on("delete", (change) => onChange(room, change));
  on("history", () => {});
  on("presence", onPresence);
  on("members", () => renderMembers());
  on("typing", ({ member, ttl }) => typists.add(member, ttl));
  on("kick", (kick) => {
    typists.remove(kick.member.id);
    renderMembers();
    addNote(describeKick(kick));
  });
  on("sent", ({ item, delivery }) => onSent(room, item, delivery));
  on("failed", ({ item, error }) => onFailed(room, item, error));
  on("error", onError);
  on("binary", (bytes) => onBinary(room, bytes));
  client.connect().catch(() => {}); // a refusal is shown by the status
}

/** Ends the current room's client: its unsent messages stay in storage. */
function disconnect() {
  const client = state.client;
  state.client = null;
  state.ws = null;
  state.joined = false;
  state.status = { state: "idle" };
  clearInterval(state.countdown);
  client?.close().catch(() => {});
  showStatus();
}

/** @param {import("../client/mod.ts").Status} status */
function onStatus(status) {
  state.status = status;
  state.joined = status.state === "open" && state.me !== null;
  clearInterval(state.countdown);
  if (status.state === "reconnecting") {
    reconnectAt = Date.now() + status.delayMs;
    state.countdown = setInterval(showStatus, 1000);
  }
  if (status.state !== "open") {
    state.joined = false;
    typists.clear();
  }
  if (status.state === "closed") onClosed(status.code, status.reason);
  showStatus();
  renderOutbox();
}

/**
 * The client stopped for good: a refusal (4401, 4403) says why and offers
 * to try again; a normal close waits for the person.
 *
 * @param {number} code
 * @param {string} reason
 */
function onClosed(code, reason) {
  const client = state.client;
  state.client = null; // a new one starts on "Try again" or "Reconnect"
  state.ws = null;
  client?.close().catch(() => {});
  const refused = describeRefusal({
    code,
    reason,
    detail: state.refusalDetail || reason,
    hadToken: state.token !== null,
    accepted: state.tokenAccepted,
  });
  state.refusalDetail = "";
  if (refused !== null) showRefusal(refused);
  else if (code === 1000) showNotice("The server closed the connection.");
}

/**
 * @param {RoomState} room
 * @param {import("../client/mod.ts").Welcome} welcome
 */
function onWelcome(room, welcome) {
  state.me = welcome.you;
  state.joined = true;
  state.needNick = false;
  state.renaming = null;
  if (welcome.you.verified === true) {
    // The token names us; the name is not stored as a nickname of our own.
    state.nick = welcome.you.nick;
    if (state.token !== null) state.tokenAccepted = true;
    if (ui.nickDialog.open) ui.nickDialog.close();
  }
  renderNick();
  state.access = welcome.access;
  state.moderator = welcome.moderator;
  renderAccess();
  if (!room.epochs.includes(welcome.epoch)) room.epochs.push(welcome.epoch);
  if (room.epoch !== welcome.epoch) room.more = null;
  room.epoch = welcome.epoch;
  room.head = welcome.head;
  room.loadingOlder = false;
  state.maxText = welcome.limits.text;
  state.maxBytes = welcome.limits.bytes;
  // Changes acked on the old connection and not seen are stored all the same.
  room.settling.clear();
  typists.clear();
  state.membersMore = false;
  renderMembers();
  if (ui.membersPanel.classList.contains("open")) loadMembers(true);
  // Own messages look different: redraw with the (maybe new) member id.
  renderAll();
  renderComposer();
  renderCounter();
  showStatus();
  scheduleSave(room);
}

/**
 * Messages may be missing: what was shown stays, the gap is marked in the
 * conversation, and what comes after follows it.
 *
 * @param {RoomState} room
 * @param {import("../client/mod.ts").Gap} gap
 */
function onGap(room, gap) {
  const shown = room.entries.some((e) => e.note === undefined && !e.stray);
  if (!shown) return; // nothing to keep: a fresh start is no gap
  const after = gap.previous && gap.previous.epoch === gap.epoch ? gap.previous.id : 0;
  addNote(GAP_WORDS, true, after);
  showNotice(RECOVERY_NOTICE);
}

/**
 * A message or file, live or replayed, each once and in order.
 *
 * @param {RoomState} room
 * @param {import("../client/mod.ts").ChatMessage} message
 */
function onMessage(room, message) {
  if (message.from) typists.remove(message.from.id);
  const entry = entryOf(message);
  if (addEntry(room, entry)) {
    if (room.epoch === entry.epoch && entry.id > room.head) room.head = entry.id;
    return;
  }
  // Shown already (ours, shown at its ack; or restored after a reload).
  const known = room.keys.get(entry.key);
  if (!known) return;
  if (known.file && !known.file.url && entry.file?.url) {
    attachFile(room, known, entry.file.url);
    return;
  }
  if (entry.file?.url) URL.revokeObjectURL(entry.file.url);
  if (catchUp(known, entry)) {
    redrawEntry(room, known);
    redrawReplies(room, new Set([known.key]));
  }
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
    if (known.file?.url?.startsWith("blob:")) URL.revokeObjectURL(known.file.url);
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

/**
 * An edit or delete, from anyone, applied to its message.
 *
 * @param {RoomState} room
 * @param {import("../client/mod.ts").Change} change
 */
function onChange(room, change) {
  if (change.cid !== undefined) room.settling.delete(change.cid);
  const key = entryKey(change.epoch, change.target);
  const target = room.keys.get(key);
  if (!target) return; // not loaded: a scroll-back page brings it changed
  const url = target.file?.url;
  if (applyChange(target, change)) {
    if (url?.startsWith("blob:") && target.deleted) URL.revokeObjectURL(url);
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
 * One of ours is stored. A message shows at once (its broadcast may come
 * later); an edit or delete stays shown as it will be until its entry comes.
 *
 * @param {RoomState} room
 * @param {Item} item
 * @param {{ id: number, epoch: string, duplicate: boolean }} delivery
 */
function onSent(room, item, delivery) {
  const url = pendingUrls.get(item.cid);
  pendingUrls.delete(item.cid);
  if (item.kind === "edit" || item.kind === "delete") {
    if (!delivery.duplicate) room.settling.set(item.cid, item);
    const target = item.target && room.keys.get(entryKey(item.target.epoch, item.target.id));
    if (target) redrawEntry(room, target);
    return;
  }
  const key = entryKey(delivery.epoch, delivery.id);
  if (!room.keys.has(key)) {
    /** @type {Entry} */
    const entry = {
      key,
      id: delivery.id,
      epoch: delivery.epoch,
      ts: item.createdAt,
      from: state.me,
      cid: item.cid,
    };
    if (item.replyTo?.epoch === delivery.epoch) entry.replyTo = item.replyTo.id;
    if (item.file) {
      const { name, mime, size } = item.file;
      entry.file = { name, mime, size, url };
    } else entry.text = item.text;
    stickToBottom = true;
    addEntry(room, entry);
  } else if (url) URL.revokeObjectURL(url);
  if (room.name === state.room) renderOutbox();
  showStatus();
}

/**
 * One of ours failed for good: a message stays, with the reason, Retry and
 * Delete; an edit or delete is undone, with a notice.
 *
 * @param {RoomState} room
 * @param {Item} item
 * @param {{ code: string, message: string }} error
 */
function onFailed(room, item, error) {
  if (item.kind === "edit" || item.kind === "delete") {
    const target = item.target && room.keys.get(entryKey(item.target.epoch, item.target.id));
    if (target) redrawEntry(room, target);
    const what = item.kind === "edit" ? "edit the message" : "delete the message";
    const detail = error.message.replace(/^Cannot send \S+: /, "");
    showNotice(refusal(error.code, item.kind) ?? `Cannot ${what}: ${detail || error.code}`);
    return;
  }
  room.failed.push({ item, reason: failureWords(error.code) });
  if (error.code === "forbidden") showNotice(READ_ONLY_WORDS);
  if (room.name === state.room) renderOutbox();
  showStatus();
}

/**
 * Why a message of ours was not sent, and what to do.
 *
 * @param {string} code
 */
function failureWords(code) {
  switch (code) {
    case "forbidden":
      return "this room is read-only for you";
    case "too_large":
    case "bad_envelope":
      return "the server does not take it as it is (too long or too large?)";
    case "connection_lost":
      return "the connection kept dropping";
    case "epoch_changed":
      return "the server restarted before it was stored";
    default:
      return refusal(code) ?? `the server refused it (${code})`;
  }
}

/** @param {{ code: string, message: string, cid?: string, retry?: boolean }} error */
function onError(error) {
  const { code, message, cid } = error;
  if (cid === undefined && refusalCloseCode(code, message) !== null) {
    state.refusalDetail = message; // the SDK closes for good; onClosed says why
    return;
  }
  if (code === "nick_taken" || code === "bad_nick") {
    onNickRefused(code, message);
    return;
  }
  const kicked = cid === undefined ? undefined : state.kicks.get(cid);
  if (cid !== undefined && kicked !== undefined) {
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
  if (code === "forbidden" && state.access === "read") {
    showNotice(READ_ONLY_WORDS);
    return;
  }
  const plain = refusal(code);
  if (plain) showNotice(plain);
  else showNotice(message ? `Server error (${code}): ${message}` : `Server error: ${code}`);
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

/** @param {import("../client/mod.ts").PresenceEvent} presence */
function onPresence(presence) {
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
  for (const line of describePresence(presence.changes)) addNote(line);
  if (!presence.listed) state.membersMore = false; // who came or went is not known
  if (presence.listed) renderMembers();
  else renderMemberCount();
}

/**
 * Asks for the next page of members, unless one is on its way.
 *
 * @param {boolean} opened The list was just opened (it starts over).
 */
function loadMembers(opened) {
  const client = state.client;
  if (!client || !state.joined || state.membersLoading) return;
  if (!opened && !client.membersIncomplete) return;
  state.membersLoading = true;
  renderMemberCount();
  // Pages go on from where the last one ended; a list gone stale starts over.
  const restart = opened || !state.membersMore;
  client.loadMembers({ restart })
    .then((page) => {
      state.membersMore = page.more;
    })
    .catch(() => {})
    .finally(() => {
      state.membersLoading = false;
      if (state.client === client) renderMembers();
    });
}

/** Asks for the page before the oldest message shown, unless one is on its way. */
function loadOlder() {
  const room = currentRoom();
  const client = state.client;
  if (!client || !state.joined || room.loadingOlder || atStart(room)) return;
  room.loadingOlder = true;
  renderEdge();
  const before = oldestShown(room) ?? room.head + 1;
  client.loadOlder({ before })
    .then((page) => {
      if (state.client === client && page.epoch === room.epoch) showOlder(room, page);
    })
    .catch(() => {})
    .finally(() => {
      room.loadingOlder = false;
      if (state.client === client) renderEdge();
    });
}

/**
 * Adds a scroll-back page above the oldest message, keeping in view what the
 * person was looking at.
 *
 * @param {RoomState} room
 * @param {import("../client/mod.ts").HistoryPage} page
 */
function showOlder(room, page) {
  room.more = page.more;
  flush(true); // what came live first, so the measure below holds
  const list = ui.messages;
  // The first message in view stays where it is, even if it joins its author's group now.
  const top = list.getBoundingClientRect().top;
  const anchor = room.entries.find((e) => {
    const li = elements.get(e.key);
    return li !== undefined && li.getBoundingClientRect().bottom > top;
  });
  const anchorTop = anchor ? elements.get(anchor.key)?.getBoundingClientRect().top ?? 0 : 0;
  const fromBottom = list.scrollHeight - list.scrollTop;
  /** @type {Set<string>} */
  const added = new Set();
  for (const message of page.messages) {
    const entry = entryOf(message);
    if (room.keys.has(entry.key)) continue;
    if (entry.file) entry.file.unloaded = true; // pages bring no bytes
    addEntry(room, entry);
    added.add(entry.key);
  }
  flushScheduled = true;
  flush(true);
  const moved = anchor ? elements.get(anchor.key) : undefined;
  if (moved) list.scrollTop += moved.getBoundingClientRect().top - anchorTop;
  else list.scrollTop = list.scrollHeight - fromBottom;
  stickToBottom = atBottom();
  redrawReplies(room, added);
  renderEdge();
}

/**
 * A binary frame no envelope announced (a raw client's): shown anyway, as a
 * picture when it is one.
 *
 * @param {RoomState} room
 * @param {Uint8Array} data
 */
function onBinary(room, data) {
  const mime = sniffImage(data.subarray(0, 16));
  const epoch = room.epoch ?? "";
  let id = 0;
  for (const entry of room.entries) if (entry.epoch === epoch && entry.id > id) id = entry.id;
  state.strayCount++;
  addEntry(room, {
    key: `stray:${state.strayCount}`,
    id,
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

// ---------------------------------------------------------------- sending

/**
 * Sends a text through the client, shown as pending at once.
 *
 * @param {string} text
 * @param {number} [replyTo]
 */
function sendText(text, replyTo) {
  const client = state.client;
  if (!client) return;
  client.send(text, { replyTo }).delivered.catch(() => {}); // a failure is a `failed` event
  stickToBottom = true;
  renderOutbox();
  showStatus();
}

/**
 * The message a reply being written answers, and ends the reply: a file sent
 * meanwhile answers it too. Null when it belongs to another epoch.
 *
 * @returns {number | undefined}
 */
function takeReply() {
  const mode = state.compose;
  if (mode?.kind !== "reply") return undefined;
  const entry = currentRoom().keys.get(mode.key);
  endCompose(false);
  return entry && entry.epoch === currentRoom().epoch ? entry.id : undefined;
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

/**
 * A file the server would refuse for its size: shown as not sent, and why.
 *
 * @param {Item} item
 */
function tooLarge(item) {
  const size = formatSize(item.file?.size ?? 0);
  const max = formatSize(state.maxBytes);
  currentRoom().failed.push({ item, reason: `too large (${size}; the limit is ${max})` });
  showNotice(`${item.file?.name} is too large: ${size}, the limit is ${max}. Send a smaller file.`);
  stickToBottom = true;
  renderOutbox();
}

/** @param {File} file */
async function sendFile(file) {
  const name = cleanFileName(file.name);
  const mime = cleanMime(file.type);
  if (file.size > state.maxBytes) {
    state.strayCount++;
    // Not read: the bytes could not be sent anyway.
    const data = new Uint8Array(0);
    const size = file.size;
    const cid = `local-${state.strayCount}`;
    tooLarge({ cid, kind: "file", file: { name, mime, size, data }, createdAt: Date.now() });
    return;
  }
  const data = new Uint8Array(await file.arrayBuffer());
  const client = state.client;
  if (!client) return;
  client.sendFile({ name, mime, data }, { replyTo: takeReply() }).delivered.catch(() => {});
  stickToBottom = true;
  renderOutbox();
  showStatus();
}

/** @param {Iterable<File>} files */
async function sendFiles(files) {
  if (!state.client) {
    if (!canJoin()) openNickDialog();
    return;
  }
  for (const file of files) {
    try {
      await sendFile(file);
    } catch (error) {
      showNotice(`Cannot send ${file.name}: ${error instanceof Error ? error.message : error}`);
    }
  }
}

/**
 * Sends a failed message again (a new cid: the old one was refused), or
 * forgets it.
 *
 * @param {string} cid
 * @param {boolean} retry
 */
function resolveFailed(cid, retry) {
  const room = currentRoom();
  const index = room.failed.findIndex((f) => f.item.cid === cid);
  if (index < 0) return;
  const [{ item }] = room.failed.splice(index, 1);
  const url = pendingUrls.get(cid);
  pendingUrls.delete(cid);
  if (url) URL.revokeObjectURL(url);
  if (retry && item.file && item.file.size > state.maxBytes) {
    tooLarge(item);
    return;
  }
  if (retry && state.client) {
    const replyTo = item.replyTo?.epoch === room.epoch ? item.replyTo.id : undefined;
    try {
      const pending = item.file
        ? state.client.sendFile(item.file, { replyTo })
        : state.client.send(item.text ?? "", { replyTo });
      pending.delivered.catch(() => {});
    } catch (error) {
      showNotice(error instanceof Error ? error.message : String(error));
      room.failed.splice(index, 0, { item, reason: "still not accepted" });
    }
  }
  renderOutbox();
  showStatus();
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
  renderCounter();
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
  renderCounter();
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
  return `This message is ${length} characters long; the limit is ${state.maxText}. ` +
    "Shorten it, or send it in parts: your text is still in the box.";
}

/** Shows how long the message is once it nears the limit. */
function renderCounter() {
  const max = state.maxText;
  const length = codePoints(ui.text.value);
  const show = max !== null && length >= Math.floor(max * COUNTER_FROM);
  ui.counter.hidden = !show;
  if (!show || max === null) return;
  ui.counter.textContent = `${length} / ${max}`;
  ui.counter.classList.toggle("over", length > max);
  ui.counter.title = length > max
    ? `${length - max} characters over the limit`
    : `${max - length} characters left`;
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

/**
 * Edits or deletes one of our messages (a moderator: anyone's): shown as in
 * progress at once, sent now or once connected.
 *
 * @param {Entry} entry
 * @param {"edit" | "delete"} kind
 * @param {string} [text]
 */
function requestChange(entry, kind, text) {
  const client = state.client;
  if (!client) return;
  if (entry.epoch !== currentRoom().epoch) {
    showNotice("That message is from before the server restarted; it can no longer be changed.");
    return;
  }
  try {
    const pending = kind === "edit" ? client.edit(entry.id, text ?? "") : client.delete(entry.id);
    pending.delivered.catch(() => {});
  } catch (error) {
    showNotice(error instanceof Error ? error.message : String(error));
  }
  redrawEntry(currentRoom(), entry);
}

/** Keeps what is typed in the box for this room (not an edit in progress). */
function saveDraft() {
  const text = state.compose?.kind === "edit" ? state.compose.draft : ui.text.value;
  store(localStorage, draftKey(state.room), text === "" ? null : text);
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
  state.nick = nick;
  store(localStorage, "parley.nick", nick);
  renderNick();
  if (state.client && (state.joined || state.needNick)) {
    if (state.joined) state.renaming = nick;
    state.needNick = false;
    state.client.rename(nick);
  } else if (!state.client) {
    connect();
  }
  showStatus();
}

// ---------------------------------------------------------------- rooms

/** @param {string} name */
function switchRoom(name) {
  if (name === state.room) return;
  saveDraft();
  disconnect();
  hideNotice();
  hideRefusal();
  closeRemoveForm(false);
  saveRoom(currentRoom());
  endCompose(false);
  typists.clear();
  clearUnread();
  state.room = name;
  state.me = null;
  // Access is per room: the welcome of the next one says it.
  state.access = "write";
  state.moderator = false;
  ui.text.value = load(localStorage, draftKey(name)) ?? "";
  renderCounter();
  renderAccess();
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
    renderCounter();
    return;
  }
  if (state.compose?.kind === "edit") {
    saveEdit(text);
    return;
  }
  if (!state.client) {
    showNotice("Not connected: your text is still in the box.");
    return;
  }
  ui.text.value = "";
  sendText(text, takeReply());
  saveDraft();
  renderCounter();
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
  renderCounter();
  saveDraft();
  // Others see that we type a message; editing an old one is not news.
  if (state.compose?.kind === "edit" || ui.text.value.trim() === "") return;
  if (state.joined) state.client?.typing();
});

ui.composeCancel.addEventListener("click", () => {
  endCompose(true);
  ui.text.focus();
});

ui.messages.addEventListener("click", (event) => {
  const target = event.target;
  if (!(target instanceof HTMLElement)) return;
  const picture = target.closest(".body img");
  if (picture instanceof HTMLImageElement) {
    openLightbox(picture);
    return;
  }
  const button = target.closest("button.tool");
  const li = button?.closest("li.msg");
  if (!(button instanceof HTMLButtonElement) || !(li instanceof HTMLLIElement)) return;
  const action = button.dataset.action;
  if (action === "retry" || action === "discard") {
    resolveFailed(li.dataset.cid ?? "", action === "retry");
    return;
  }
  const entry = currentRoom().keys.get(li.dataset.key ?? "");
  if (!entry || entry.deleted) return;
  if (action === "reply") startReply(entry);
  else if (action === "edit" && isOwn(entry)) startEdit(entry);
  else if (action === "delete" && (isOwn(entry) || state.moderator)) {
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

// Files dropped anywhere on the conversation or the message box are sent.
for (const zone of /** @type {HTMLElement[]} */ ([ui.messages, ui.compose])) {
  zone.addEventListener("dragover", (event) => {
    if (!event.dataTransfer?.types.includes("Files")) return;
    event.preventDefault();
    zone.classList.add("drop-target");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("drop-target"));
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("drop-target");
    const files = event.dataTransfer?.files;
    if (!files || files.length === 0) return;
    event.preventDefault();
    sendFiles([...files]);
  });
}

ui.messages.addEventListener("scroll", () => {
  // The page's own scroll to the newest message changes nothing.
  if (ui.messages.scrollTop === lastScrollTop) return;
  stickToBottom = atBottom();
  if (stickToBottom) clearUnread();
  else renderUnread();
  const list = ui.messages;
  // Older messages come when the list is scrolled up to its top, not when it starts there.
  const up = list.scrollTop < lastScrollTop;
  lastScrollTop = list.scrollTop;
  if (up && list.scrollTop < 40 && list.scrollHeight > list.clientHeight) loadOlder();
});

ui.jump.addEventListener("click", () => {
  stickToBottom = true;
  keepBottom();
  clearUnread();
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
  connect();
});

ui.reconnect.addEventListener("click", () => {
  hideNotice();
  connect();
});

ui.copyLink.addEventListener("click", async () => {
  // The room's address, never an invite token.
  const url = new URL(pathOfRoom(state.room), location.href).href;
  try {
    await navigator.clipboard.writeText(url);
    ui.copyLink.textContent = "Link copied";
  } catch {
    ui.copyLink.textContent = "Copy failed";
  }
  setTimeout(() => {
    ui.copyLink.textContent = "Copy link";
  }, 2000);
});

ui.lightbox.addEventListener("click", () => ui.lightbox.close());

ui.welcomeClose.addEventListener("click", () => {
  ui.welcome.hidden = true;
  store(localStorage, "parley.welcomed", "1");
});

// Closing the tab with messages not sent yet: the browser asks first (they
// would be sent after a reload of this tab, not after closing it).
addEventListener("beforeunload", (event) => {
  // What is shown as waiting counts too: between two clients (a reconnect,
  // a refusal) the outbox is in storage, not in a client.
  if (outgoing().length === 0 && !ui.messages.querySelector(".msg.pending")) return;
  event.preventDefault();
  event.returnValue = "";
});

addEventListener("pagehide", () => {
  saveAll();
  saveDraft();
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && stickToBottom) clearUnread();
});

/**
 * Shows a picture large, in a dialog that Esc or a click closes.
 *
 * @param {HTMLImageElement} picture
 */
function openLightbox(picture) {
  ui.lightboxImage.src = picture.src;
  ui.lightboxImage.alt = picture.alt;
  ui.lightboxCaption.textContent = picture.alt;
  ui.lightbox.showModal();
}

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

ui.text.value = load(localStorage, draftKey(state.room)) ?? "";
// A first visit says what this is; with an invite link the name is the invite's, not a nickname.
ui.welcome.hidden = state.token !== null || load(localStorage, "parley.welcomed") !== null;
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
