/* codec.h - internal to libcorral (not installed): protobuf-c messages <-> the library's
 * plain structs, and envelope packing. Only codec.c, client*.c and worker_*.c include it;
 * protobuf-c types never reach corral.h. Pure: no I/O, no clock. */
#ifndef CORRAL_CODEC_H
#define CORRAL_CODEC_H

#include "corral.h"
#include "corral.pb-c.h"

#include <stddef.h>
#include <stdint.h>

/* Deepest tree or exception group accepted from the wire; deeper is CORRAL_EPROTO. */
#define CODEC_MAX_DEPTH 200

/* A reusable output buffer for codec_pack (zmq_send copies what it is given, so one
 * buffer per sender serves every message). Zero-initialised = empty. */
struct codec_buf {
    uint8_t *data; /* owned */
    size_t cap;
};

/* Frees what b owns; b may be reused afterwards (as empty). */
void codec_buf_fini(struct codec_buf *b);

/* Sets env's version to CORRAL_PROTOCOL_VERSION and its request id, then serializes it
 * (borrowed) into b, returning the bytes borrowed in *data (valid until the next
 * codec_pack with b) and *len. Returns 0 or CORRAL_ENOMEM. */
int codec_pack(struct codec_buf *b, Corral__V1__Envelope *env, uint64_t request_id,
               const uint8_t **data, size_t *len);

/* A bump allocator that unpacked envelopes live in: protobuf-c allocates every message,
 * string and array of a frame separately, and freeing them one by one cost as much as
 * parsing. Each codec_unpack starts the arena afresh, so an envelope is valid until the
 * next codec_unpack with the same arena (which also frees the blocks a big frame spilled
 * into: the buffer itself never grows past 256 KiB). Zero-initialised = empty; one per
 * thread. */
struct codec_arena {
    uint8_t *buf; /* owned; cap bytes, used of them handed out */
    size_t cap;
    size_t used;
    size_t spill;              /* bytes of the blocks below, to size buf next time */
    struct arena_block *extra; /* owned: allocations that did not fit in buf */
};

/* Frees what a owns; a may be reused afterwards (as empty). */
void codec_arena_fini(struct codec_arena *a);

/* Parses one frame (borrowed) into *out, allocated in a (which is reset first, ending the
 * life of the envelope unpacked before): *out is borrowed from a until the next
 * codec_unpack with it. CORRAL_EPROTO when it is not an Envelope (or memory ran out).
 * The version is not checked here. */
int codec_unpack(struct codec_arena *a, const void *data, size_t len,
                 const Corral__V1__Envelope **out);

/* Maps a Reply's code to an enum corral_err: ERR_OK -> CORRAL_OK, 1..99 -> the same
 * number, anything else -> CORRAL_EPROTO. Borrows r. */
int codec_reply_code(const Corral__V1__Reply *r);

/* Copies an id (borrowed) into out. CORRAL_EPROTO when it is empty or does not fit. */
int codec_copy_id(char out[CORRAL_ID_MAX], const char *id);

/* Deep copy of a Node (borrowed) and all its descendants. Returns owned *out
 * (corral_node_free). CORRAL_EPROTO for an unknown node type or a tree deeper than
 * CODEC_MAX_DEPTH, CORRAL_ENOMEM. */
int codec_node_new(struct corral_node **out, const Corral__V1__Node *pb);

/* Deep copy of an Error (borrowed) and its sub-exceptions. Returns owned *out
 * (corral_error_free). CORRAL_EPROTO for nesting deeper than CODEC_MAX_DEPTH or a missing
 * sub-exception, CORRAL_ENOMEM. */
int codec_error_new(struct corral_error **out, const Corral__V1__Error *pb);

/* Deep copy of an Event (borrowed). Returns owned *out (corral_event_free).
 * CORRAL_EPROTO for an unknown event type, a missing node (but for
 * SUBSCRIPTION_OVERFLOW, which may come without one) or a subscription id that does not
 * fit, CORRAL_ENOMEM. */
int codec_event_new(struct corral_event **out, const Corral__V1__Event *pb);

/* Deep copy of the n Limiters src (borrowed). Returns owned *out (corral_limiters_free;
 * NULL when n is 0), untouched on error. CORRAL_EPROTO for a missing limiter or one
 * without a name, CORRAL_ENOMEM. */
int codec_limiters_new(struct corral_limiter **out, Corral__V1__Limiter *const *src, size_t n);

/* Copies len bytes (borrowed; may be NULL when len is 0) into a new buffer with a NUL
 * after them; returns it owned (free()), or NULL when out of memory. */
uint8_t *codec_dup_bytes(const void *data, size_t len);

#endif
