/* wire.h - protobuf-c <-> plain C (struct cmd in, struct out_msg out). Pure: no I/O.
 * protobuf-c types never leave wire.c. */
#ifndef CORRAL_WIRE_H
#define CORRAL_WIRE_H

#include "cmd.h"

#include <stddef.h>
#include <stdint.h>

struct wire_decoded;

/* Decodes one message body received from a peer on the given side into *cmd, whose
 * pointers borrow from *holder only (buf may be freed right after) (returned owned; free with
 * wire_decoded_free after handling). On failure returns a corral_err code (CORRAL_EBADREQUEST for
 * malformed or truncated input, a broker-to-peer body, a request sent to the wrong endpoint or a
 * missing required field or invalid UTF-8; CORRAL_EVERSION for a version other than 1;
 * CORRAL_ENOMEM), sets
 * *request_id when it could be read (else 0) and *errmsg to a static human message, and
 * leaves *holder NULL. */
int wire_decode(const uint8_t *buf, size_t len, enum peer_side side, struct cmd *cmd,
                struct wire_decoded **holder, uint64_t *request_id, const char **errmsg);
void wire_decoded_free(struct wire_decoded **p);

/* A reusable encoder: its output buffer and scratch memory are kept between messages,
 * so encoding allocates nothing once warm. */
struct wire_encoder {
    uint8_t *buf;
    size_t cap;
    struct arena scratch;
};

void wire_encoder_init(struct wire_encoder *w);
void wire_encoder_fini(struct wire_encoder *w);

/* Serializes m (borrowed) as an Envelope of version 1 into w's buffer: *out (borrowed
 * from w) and *len stay valid until the next call. Returns 0, CORRAL_ENOMEM, or CORRAL_EINVAL /
 * CORRAL_EINTERNAL for a message the encoder does not know (a bug). Reply codes of 100 and more
 * (local codes) go on the wire as ERR_INTERNAL. */
int wire_encode(struct wire_encoder *w, const struct out_msg *m, const uint8_t **out, size_t *len);

#endif
