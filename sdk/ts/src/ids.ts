/** Client-side idempotency keys. */

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"; // Crockford base32, lower case

/**
 * A fresh random idempotency key (`prefix` + 26 base32 characters, 130 bits of
 * entropy), valid for `client_msg_id` and `client_request_id` (printable ASCII,
 * at most 64 characters).
 *
 * Uses `crypto.getRandomValues`, which (unlike `crypto.randomUUID`) also exists
 * on pages that are not a secure context.
 */
export function newClientId(prefix = "c_"): string {
  const bytes = new Uint8Array(26);
  crypto.getRandomValues(bytes);
  let id = prefix;
  for (const byte of bytes) id += ALPHABET[byte & 31];
  return id;
}
