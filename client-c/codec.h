/* codec.h - internal to libcorral (not installed): protobuf-c messages <-> the library's
 * plain structs, and envelope packing. Only codec.c, client.c and worker_*.c include it;
 * protobuf-c types never reach corral.h. Pure: no I/O, no clock. */
#ifndef CORRAL_CODEC_H
#define CORRAL_CODEC_H

#include "corral.h"
#include "corral.pb-c.h"

#include <stddef.h>
#include <stdint.h>

/* Deepest tree or exception group accepted from the wire; deeper is CORRAL_EPROTO. */
#define CODEC_MAX_DEPTH 200

/* Sets env's version to CORRAL_PROTOCOL_VERSION and its request id, then serializes it
 * (borrowed) into a malloc'd buffer, returned owned in *buf (free()) and *len.
 * Returns 0 or CORRAL_ENOMEM. */
int codec_pack(Corral__V1__Envelope *env, uint64_t request_id, uint8_t **buf, size_t *len);

/* Parses one frame (borrowed) into *out, returned owned (codec_envelope_free).
 * CORRAL_EPROTO when it is not an Envelope. The version is not checked here. */
int codec_unpack(const void *data, size_t len, Corral__V1__Envelope **out);
void codec_envelope_free(Corral__V1__Envelope **p);

/* Maps a Reply's code to an enum corral_err: ERR_OK -> CORRAL_OK, 1..99 -> the same
 * number, anything else -> CORRAL_EPROTO. Borrows r. */
int codec_reply_code(const Corral__V1__Reply *r);

/* Copies an id (borrowed) into out. CORRAL_EPROTO when it is empty or does not fit. */
int codec_copy_id(char out[CORRAL_ID_MAX], const char *id);

/* Deep copy of a Node (borrowed) and all its descendants. Returns owned *out
 * (corral_node_free). CORRAL_EPROTO for an unknown node type or a tree deeper than
 * CODEC_MAX_DEPTH, CORRAL_ENOMEM. */
int codec_node_new(struct corral_node **out, const Corral__V1__Node *pb);

/* Deep copy of an Event (borrowed). Returns owned *out (corral_event_free).
 * CORRAL_EPROTO for an unknown event type, a missing node or a subscription id that does
 * not fit, CORRAL_ENOMEM. */
int codec_event_new(struct corral_event **out, const Corral__V1__Event *pb);

/* Copies len bytes (borrowed; may be NULL when len is 0) into a new buffer with a NUL
 * after them; returns it owned (free()), or NULL when out of memory. */
uint8_t *codec_dup_bytes(const void *data, size_t len);

#endif
