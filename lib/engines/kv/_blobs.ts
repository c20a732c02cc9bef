/**
 * File bytes and long texts in the KV engine: split into chunks under the
 * 64 KiB value limit, at `["parley", room, "blob", blobId, index]`, and put
 * back into the messages they belong to.
 *
 * @module
 */

import type { StoredMessage } from "../../protocol.ts";
import { isFile, type MessageRecord, toMessage } from "./_records.ts";
import { key, type KvContext, write } from "./_store.ts";

/** Bytes of content per chunk key: under the 64 KiB value limit, with room to spare. */
export const CHUNK_BYTES = 60 * 1024;
/** Chunks per atomic write: ten of 60 KiB stay under the 800 KiB mutation size limit. */
const CHUNKS_PER_WRITE = 10;
/** Deletions per atomic write, well under the limit of 1000 mutations. */
const DELETES_PER_WRITE = 500;
/** How long the bytes of a file too big for history stay, for live delivery only. */
const TRANSIENT_MS = 10 * 60_000;

/** Which file bytes {@linkcode Blobs.message} reads. */
export type FileBytes = "none" | "kept" | "live";

const decoder = new TextDecoder();

/** Where the chunks of a file (or of a long text) are. */
export interface BlobRef {
  id: string;
  chunks: number;
  bytes: number;
}

/** Writes, reads and deletes chunked bytes. */
export class Blobs {
  #context: KvContext;

  constructor(context: KvContext) {
    this.#context = context;
  }

  /** Writes bytes as chunks; `transient` ones expire on their own. */
  async write(room: string, bytes: Uint8Array, transient: boolean): Promise<BlobRef> {
    const { kv } = this.#context;
    const blob: BlobRef = {
      id: crypto.randomUUID(),
      chunks: Math.ceil(bytes.byteLength / CHUNK_BYTES),
      bytes: bytes.byteLength,
    };
    const options = transient ? { expireIn: TRANSIENT_MS } : undefined;
    for (let start = 0; start < blob.chunks; start += CHUNKS_PER_WRITE) {
      await write(() => {
        const op = kv.atomic();
        for (let i = start; i < Math.min(blob.chunks, start + CHUNKS_PER_WRITE); i++) {
          // A copy: a view would carry its whole buffer.
          const chunk = bytes.slice(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES);
          op.set(key(room, "blob", blob.id, i), chunk, options);
        }
        return op;
      });
    }
    return blob;
  }

  /** The bytes of a blob, or undefined when some chunk is gone. */
  async read(room: string, blob: BlobRef): Promise<Uint8Array | undefined> {
    const bytes = new Uint8Array(blob.bytes);
    let offset = 0;
    let chunks = 0;
    const entries = this.#context.kv.list<Uint8Array>(
      { prefix: key(room, "blob", blob.id) },
      { batchSize: CHUNKS_PER_WRITE },
    );
    for await (const { value } of entries) {
      if (!(value instanceof Uint8Array) || offset + value.byteLength > blob.bytes) return;
      bytes.set(value, offset);
      offset += value.byteLength;
      chunks++;
    }
    return chunks === blob.chunks && offset === blob.bytes ? bytes : undefined;
  }

  /** Deletes the chunks of a blob. */
  async delete(room: string, blob: BlobRef): Promise<void> {
    const { kv } = this.#context;
    for (let start = 0; start < blob.chunks; start += DELETES_PER_WRITE) {
      await write(() => {
        const op = kv.atomic();
        for (let i = start; i < Math.min(blob.chunks, start + DELETES_PER_WRITE); i++) {
          op.delete(key(room, "blob", blob.id, i));
        }
        return op;
      });
    }
  }

  /** Deletes blobs nothing points at any more; a failure only leaves garbage behind. */
  async drop(room: string, blobs: Iterable<BlobRef>): Promise<void> {
    for (const blob of blobs) {
      await this.delete(room, blob).catch((error) =>
        this.#context.log.warn("kv_blob_delete_failed", { room, error: String(error) })
      );
    }
  }

  /**
   * Rebuilds a message from its record and chunks, with the bytes of a file
   * as `bytes` says: `"kept"` when part of history, `"live"` also those of a
   * file too big for history while they last, `"none"` never.
   */
  async message(room: string, record: MessageRecord, bytes: FileBytes): Promise<StoredMessage> {
    let text = record.text;
    if (record.longText) {
      const content = record.blob && await this.read(room, record.blob);
      text = content ? decoder.decode(content) : "";
    }
    let data: Uint8Array | undefined;
    if (isFile(record) && (bytes === "live" || (bytes === "kept" && record.kept))) {
      data = record.blob ? await this.read(room, record.blob) : new Uint8Array(0);
    }
    return toMessage(room, record, text, data);
  }
}
