/**
 * A WebSocket client over bare TCP, for tests that must write frames no
 * WebSocket API would send, or read slowly (or never).
 *
 * @module
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const OP_CONTINUATION = 0x0;
export const OP_TEXT = 0x1;
export const OP_BINARY = 0x2;
export const OP_CLOSE = 0x8;
export const OP_PING = 0x9;

/** Header and payload of one frame to write by hand. */
export interface FrameOptions {
  opcode: number;
  payload?: Uint8Array | string;
  /** @default true */
  fin?: boolean;
  /** The three RSV bits, RSV1 as 0b100. @default 0 */
  rsv?: number;
  /** Clients must mask; `false` writes an unmasked frame. @default true */
  mask?: boolean;
}

/** Encodes one client frame, masked with a random key unless told otherwise. */
export function encodeFrame(options: FrameOptions): Uint8Array {
  const payload = typeof options.payload === "string"
    ? encoder.encode(options.payload)
    : options.payload ?? new Uint8Array(0);
  const mask = options.mask ?? true;
  const length = payload.byteLength;
  const extended = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const start = 2 + extended + (mask ? 4 : 0);
  const frame = new Uint8Array(start + length);
  const view = new DataView(frame.buffer);
  frame[0] = ((options.fin ?? true) ? 0x80 : 0) | ((options.rsv ?? 0) << 4) |
    (options.opcode & 0xf);
  if (extended === 0) {
    frame[1] = length;
  } else if (extended === 2) {
    frame[1] = 126;
    view.setUint16(2, length);
  } else {
    frame[1] = 127;
    view.setBigUint64(2, BigInt(length));
  }
  if (!mask) {
    frame.set(payload, start);
    return frame;
  }
  frame[1] |= 0x80;
  const key = crypto.getRandomValues(new Uint8Array(4));
  frame.set(key, start - 4);
  for (let i = 0; i < length; i++) frame[start + i] = payload[i] ^ key[i & 3];
  return frame;
}

/** Only the header of a binary frame that announces `length` bytes. */
export function frameHeader(length: number): Uint8Array {
  const header = new Uint8Array(14);
  header[0] = 0x80 | OP_BINARY;
  header[1] = 0x80 | 127;
  new DataView(header.buffer).setBigUint64(2, BigInt(length));
  return header;
}

/** A close frame carrying `code` (and no reason). */
export function closeFrame(code: number): Uint8Array {
  return encodeFrame({ opcode: OP_CLOSE, payload: new Uint8Array([code >> 8, code & 0xff]) });
}

/** A frame as the server sent it. */
export interface ServerFrame {
  fin: boolean;
  opcode: number;
  payload: Uint8Array;
}

/** Decodes the first frame of `bytes`, or returns null when it is not all there yet. */
export function decodeFrame(bytes: Uint8Array): { frame: ServerFrame; size: number } | null {
  if (bytes.length < 2) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let length = bytes[1] & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (bytes.length < 4) return null;
    length = view.getUint16(2);
    offset = 4;
  } else if (length === 127) {
    if (bytes.length < 10) return null;
    length = Number(view.getBigUint64(2));
    offset = 10;
  }
  if (bytes[1] & 0x80) offset += 4; // a server never masks, but skip a key if one came
  if (bytes.length < offset + length) return null;
  return {
    frame: {
      fin: (bytes[0] & 0x80) !== 0,
      opcode: bytes[0] & 0xf,
      payload: bytes.slice(offset, offset + length),
    },
    size: offset + length,
  };
}

/** How a connection ended, as the client saw it. */
export interface Ending {
  /** Code of the server's close frame; null when it sent none (or one without a code). */
  closeCode: number | null;
  closeReason: string;
  /** Whether a close frame came at all. */
  closeFrame: boolean;
  /** How the TCP stream ended. */
  end: "eof" | "reset";
  /** Other frames received before the end. */
  frames: ServerFrame[];
}

export function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * A WebSocket client over a bare TCP connection: it performs the handshake by
 * hand and then writes whatever bytes a test wants.
 */
export class RawSocket {
  #buffer: Uint8Array;
  #end?: "eof" | "reset";
  #chunk = new Uint8Array(64 * 1024);
  /** At most one read is in flight; a timed-out one is picked up again later. */
  #pending?: Promise<number | null | Error>;
  #closed = false;

  private constructor(
    readonly conn: Deno.TcpConn,
    /** Status code of the handshake response. */
    readonly status: number,
    /** The response head, without the blank line. */
    readonly head: string,
    rest: Uint8Array,
  ) {
    this.#buffer = rest;
  }

  /** Connects and sends a valid handshake for `path`; resolves whatever the status. */
  static async open(
    port: number,
    path = "/",
    headers: Record<string, string> = {},
  ): Promise<RawSocket> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
      const lines = [
        `GET ${path} HTTP/1.1`,
        `Host: 127.0.0.1:${port}`,
        "Upgrade: websocket",
        "Connection: Upgrade",
        `Sec-WebSocket-Key: ${key}`,
        "Sec-WebSocket-Version: 13",
        ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
      ];
      await writeAll(conn, encoder.encode(lines.join("\r\n") + "\r\n\r\n"));
      let bytes: Uint8Array = new Uint8Array(0);
      const chunk = new Uint8Array(4096);
      const timer = setTimeout(() => conn.close(), 5000);
      try {
        while (true) {
          const end = indexOfBlankLine(bytes);
          if (end >= 0) {
            const head = decoder.decode(bytes.subarray(0, end));
            const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(head)?.[1]);
            return new RawSocket(conn, status, head, bytes.slice(end + 4));
          }
          const n = await conn.read(chunk);
          if (n === null) throw new Error("the server closed the connection during the handshake");
          bytes = concat(bytes, chunk.subarray(0, n));
        }
      } finally {
        clearTimeout(timer);
      }
    } catch (error) {
      try {
        conn.close();
      } catch {
        // Closed by the timer.
      }
      throw error;
    }
  }

  /** Writes bytes as they are. */
  write(bytes: Uint8Array): Promise<void> {
    return writeAll(this.conn, bytes);
  }

  /** Reads more bytes, or the end of the stream; throws after `ms`. */
  async #fill(ms: number): Promise<void> {
    this.#pending ??= this.conn.read(this.#chunk).catch((error: Error) => error);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), Math.max(0, ms));
    });
    const result = await Promise.race([this.#pending, timeout]);
    clearTimeout(timer);
    if (result === "timeout") throw new Error(`the server sent nothing within ${ms} ms`);
    this.#pending = undefined;
    if (result === null) {
      this.#end = "eof";
    } else if (result instanceof Deno.errors.ConnectionReset) {
      this.#end = "reset";
    } else if (result instanceof Error) {
      throw result;
    } else {
      this.#buffer = concat(this.#buffer, this.#chunk.subarray(0, result));
    }
  }

  /** The next frame, or null at the end of the stream; throws after `ms`. */
  async frame(ms = 5000): Promise<ServerFrame | null> {
    const deadline = Date.now() + ms;
    while (true) {
      const decoded = decodeFrame(this.#buffer);
      if (decoded) {
        this.#buffer = this.#buffer.slice(decoded.size);
        return decoded.frame;
      }
      if (this.#end) return null;
      await this.#fill(deadline - Date.now());
    }
  }

  /**
   * Reads until the server ends the TCP connection. A close frame is answered
   * with one, as a client must (Deno waits for that answer before it ends a
   * close that Parley started), unless `answerClose` is false.
   */
  async ended(ms = 5000, { answerClose = true } = {}): Promise<Ending> {
    const deadline = Date.now() + ms;
    const ending: Omit<Ending, "end"> = {
      closeCode: null,
      closeReason: "",
      closeFrame: false,
      frames: [],
    };
    while (true) {
      const frame = await this.frame(deadline - Date.now());
      if (frame === null) return { ...ending, end: this.#end! };
      if (frame.opcode !== OP_CLOSE) {
        ending.frames.push(frame);
        continue;
      }
      ending.closeFrame = true;
      if (frame.payload.length >= 2) {
        ending.closeCode = (frame.payload[0] << 8) | frame.payload[1];
        ending.closeReason = decoder.decode(frame.payload.subarray(2));
      }
      if (!answerClose) continue;
      await this.write(encodeFrame({ opcode: OP_CLOSE, payload: frame.payload.slice(0, 2) }))
        .catch(() => {}); // the server may be gone already
    }
  }

  /** Closes the TCP connection and waits for a read in flight to finish. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
    await this.#pending;
  }
}

function indexOfBlankLine(bytes: Uint8Array): number {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
      return i;
    }
  }
  return -1;
}

export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let offset = 0; offset < bytes.length;) offset += await conn.write(bytes.subarray(offset));
}
