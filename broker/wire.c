/* wire.c - protobuf-c <-> plain C. Decoding turns one received Envelope into a struct
 * cmd (validated: version, body kind, endpoint side, required fields); encoding turns a
 * struct out_msg into a packed Envelope. Pure: no I/O, no clock. protobuf-c types never
 * leave this file. */
#include "wire.h"

#include "corral.pb-c.h"

#include <stdlib.h>
#include <string.h>

/* The one protocol version this broker speaks. */
#define WIRE_VERSION 1

/* The enums of model.h and cmd.h carry the proto's numbers, so they map by cast. Check
 * it here, once, so that a renumbering on either side breaks the build. */
_Static_assert((int)NODE_GROUP == CORRAL__V1__NODE_TYPE__NODE_GROUP, "node type");
_Static_assert((int)NODE_JOB == CORRAL__V1__NODE_TYPE__NODE_JOB, "node type");
_Static_assert((int)ON_DEADLINE_FAIL == CORRAL__V1__ON_DEADLINE__ON_DEADLINE_FAIL, "on_deadline");
_Static_assert((int)ON_DEADLINE_MOVE_ON == CORRAL__V1__ON_DEADLINE__ON_DEADLINE_MOVE_ON,
               "on_deadline");
_Static_assert((int)ST_NONE == CORRAL__V1__STATE__STATE_UNSPECIFIED, "state");
_Static_assert((int)ST_QUEUED == CORRAL__V1__STATE__STATE_QUEUED, "state");
_Static_assert((int)ST_RUNNING == CORRAL__V1__STATE__STATE_RUNNING, "state");
_Static_assert((int)ST_CANCELLING == CORRAL__V1__STATE__STATE_CANCELLING, "state");
_Static_assert((int)ST_ENDED == CORRAL__V1__STATE__STATE_ENDED, "state");
_Static_assert((int)ST_OPEN == CORRAL__V1__STATE__STATE_OPEN, "state");
_Static_assert((int)ST_CLOSED == CORRAL__V1__STATE__STATE_CLOSED, "state");
_Static_assert((int)ST_WAITING == CORRAL__V1__STATE__STATE_WAITING, "state");
_Static_assert((int)ST_RETRY_WAIT == CORRAL__V1__STATE__STATE_RETRY_WAIT, "state");
_Static_assert((int)OUT_NONE == CORRAL__V1__OUTCOME__OUTCOME_NONE, "outcome");
_Static_assert((int)OUT_SUCCEEDED == CORRAL__V1__OUTCOME__OUTCOME_SUCCEEDED, "outcome");
_Static_assert((int)OUT_FAILED == CORRAL__V1__OUTCOME__OUTCOME_FAILED, "outcome");
_Static_assert((int)OUT_CANCELLED == CORRAL__V1__OUTCOME__OUTCOME_CANCELLED, "outcome");
_Static_assert((int)SRC_NONE == CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_NONE, "source");
_Static_assert((int)SRC_EXPLICIT == CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_EXPLICIT, "source");
_Static_assert((int)SRC_DEADLINE == CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_DEADLINE, "source");
_Static_assert((int)SRC_SIBLING_FAILED == CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_SIBLING_FAILED,
               "source");
_Static_assert((int)SRC_PARENT == CORRAL__V1__CANCEL_SOURCE__CANCEL_SOURCE_PARENT, "source");
_Static_assert((int)EV_JOB_DISPATCHED == CORRAL__V1__EVENT_TYPE__EVENT_JOB_DISPATCHED, "event");
_Static_assert((int)EV_JOB_STARTED == CORRAL__V1__EVENT_TYPE__EVENT_JOB_STARTED, "event");
_Static_assert((int)EV_JOB_ENDED == CORRAL__V1__EVENT_TYPE__EVENT_JOB_ENDED, "event");
_Static_assert((int)EV_GROUP_CANCELLING == CORRAL__V1__EVENT_TYPE__EVENT_GROUP_CANCELLING, "event");
_Static_assert((int)EV_GROUP_ENDED == CORRAL__V1__EVENT_TYPE__EVENT_GROUP_ENDED, "event");
_Static_assert((int)EV_SUBSCRIPTION_OVERFLOW == CORRAL__V1__EVENT_TYPE__EVENT_SUBSCRIPTION_OVERFLOW,
               "event");
_Static_assert((int)ST_WAITING == CORRAL__V1__STATE__STATE_WAITING, "state");
_Static_assert((int)CORRAL_OK == CORRAL__V1__ERROR_CODE__ERR_OK, "code");
_Static_assert((int)CORRAL_EBADREQUEST == CORRAL__V1__ERROR_CODE__ERR_BAD_REQUEST, "code");
_Static_assert((int)CORRAL_EVERSION == CORRAL__V1__ERROR_CODE__ERR_UNSUPPORTED_VERSION, "code");
_Static_assert((int)CORRAL_ENOTFOUND == CORRAL__V1__ERROR_CODE__ERR_NOT_FOUND, "code");
_Static_assert((int)CORRAL_ENOTACTIVE == CORRAL__V1__ERROR_CODE__ERR_NOT_ACTIVE, "code");
_Static_assert((int)CORRAL_ETOOLARGE == CORRAL__V1__ERROR_CODE__ERR_TOO_LARGE, "code");
_Static_assert((int)CORRAL_EBUSY == CORRAL__V1__ERROR_CODE__ERR_BUSY, "code");
_Static_assert((int)CORRAL_ESTALE == CORRAL__V1__ERROR_CODE__ERR_STALE_ATTEMPT, "code");
_Static_assert((int)CORRAL_EWRONGSTATE == CORRAL__V1__ERROR_CODE__ERR_WRONG_STATE, "code");
_Static_assert((int)CORRAL_EUNKNOWNWORKER == CORRAL__V1__ERROR_CODE__ERR_UNKNOWN_WORKER, "code");
_Static_assert((int)CORRAL_EINTERNAL == CORRAL__V1__ERROR_CODE__ERR_INTERNAL, "code");
_Static_assert((int)CORRAL_ESHUTDOWN == CORRAL__V1__ERROR_CODE__ERR_SHUTTING_DOWN, "code");
_Static_assert((int)CORRAL_ESTARTFAILED == CORRAL__V1__ERROR_CODE__ERR_START_FAILED, "code");
_Static_assert((int)CORRAL_ESTARTCANCELLED == CORRAL__V1__ERROR_CODE__ERR_START_CANCELLED, "code");
_Static_assert((int)CORRAL_ENOTSTARTED == CORRAL__V1__ERROR_CODE__ERR_NOT_STARTED, "code");

/* What a decoded message keeps alive while the engine handles it. */
struct wire_decoded {
    Corral__V1__Envelope *env;   /* from corral__v1__envelope__unpack */
    struct running_ref *running; /* READY: built from env's RunningJob list (malloc'd) */
};

/* ------------------------------------------------------------------ decoding */

/* Returns s, or "" when protobuf-c left it NULL. */
static const char *
str_or_empty(const char *s)
{
    return s != NULL ? s : "";
}

/* True when s is absent or empty. */
static bool
str_empty(const char *s)
{
    return s == NULL || s[0] == '\0';
}

/* Maps protobuf bytes (borrowed) to struct bytes. */
static struct bytes
bytes_of(ProtobufCBinaryData b)
{
    struct bytes out = {.data = b.len > 0 ? b.data : NULL, .len = b.data != NULL ? b.len : 0};
    return out;
}

/* Fills c from a client request body. Returns 0 or CORRAL_EBADREQUEST with *errmsg set
 * (static) when a required field is missing. */

/* Reads an optional Scope into *out. Returns 0, or CORRAL_EBADREQUEST with *errmsg. */
static int
decode_scope(const Corral__V1__Scope *sc, struct scope_opts *out, const char **errmsg)
{
    *out = (struct scope_opts){0};
    if (sc == NULL)
        return 0;
    if (sc->timeout_ms != 0 && sc->deadline_unix_ms != 0) {
        *errmsg = "scope: set at most one of timeout_ms and deadline_unix_ms";
        return CORRAL_EBADREQUEST;
    }
    if (sc->on_deadline != CORRAL__V1__ON_DEADLINE__ON_DEADLINE_FAIL &&
        sc->on_deadline != CORRAL__V1__ON_DEADLINE__ON_DEADLINE_MOVE_ON) {
        *errmsg = "scope: unknown on_deadline";
        return CORRAL_EBADREQUEST;
    }
    out->timeout_ms = sc->timeout_ms;
    out->deadline_unix_ms = sc->deadline_unix_ms;
    out->on_deadline = (enum on_deadline)sc->on_deadline;
    out->shield = sc->shield != 0;
    return 0;
}

static int
decode_client(const Corral__V1__Envelope *env, struct cmd *c, const char **errmsg)
{
    switch (env->body_case) {
    case CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP: {
        const Corral__V1__OpenGroup *b = env->open_group;
        c->type = CMD_OPEN_GROUP;
        c->parent_group = str_or_empty(b->parent_group);
        c->parent_job = str_or_empty(b->parent_job);
        if (c->parent_group[0] != '\0' && c->parent_job[0] != '\0') {
            *errmsg = "open_group: set at most one of parent_group and parent_job";
            return CORRAL_EBADREQUEST;
        }
        return decode_scope(b->scope, &c->scope, errmsg);
    }
    case CORRAL__V1__ENVELOPE__BODY_SUBMIT: {
        const Corral__V1__Submit *b = env->submit;
        c->type = CMD_SUBMIT;
        if (str_empty(b->group)) {
            *errmsg = "submit: missing required field group";
            return CORRAL_EBADREQUEST;
        }
        if (str_empty(b->kind)) {
            *errmsg = "submit: missing required field kind";
            return CORRAL_EBADREQUEST;
        }
        c->id = b->group;
        c->kind = b->kind;
        c->data = bytes_of(b->payload);
        c->wait_started = b->wait_started != 0;
        c->max_attempts = b->max_attempts;
        c->backoff_ms = b->backoff_ms;
        c->idem_key = str_or_empty(b->idempotency_key);
        c->limiters = (const char *const *)b->limiters;
        c->nlimiters = b->n_limiters;
        for (size_t i = 0; i < b->n_limiters; i++) {
            if (str_empty(b->limiters[i])) {
                *errmsg = "submit: empty limiter name";
                return CORRAL_EBADREQUEST;
            }
            for (size_t k = 0; k < i; k++) {
                if (strcmp(b->limiters[k], b->limiters[i]) == 0) {
                    *errmsg = "submit: a limiter is named twice";
                    return CORRAL_EBADREQUEST;
                }
            }
        }
        return decode_scope(b->scope, &c->scope, errmsg);
    }
    case CORRAL__V1__ENVELOPE__BODY_SET_LIMITER:
        c->type = CMD_SET_LIMITER;
        if (str_empty(env->set_limiter->name)) {
            *errmsg = "set_limiter: missing required field name";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->set_limiter->name;
        c->total_tokens = env->set_limiter->total_tokens;
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_DELETE_LIMITER:
        c->type = CMD_DELETE_LIMITER;
        if (str_empty(env->delete_limiter->name)) {
            *errmsg = "delete_limiter: missing required field name";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->delete_limiter->name;
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_GET_LIMITERS:
        c->type = CMD_GET_LIMITERS;
        c->id = str_or_empty(env->get_limiters->name);
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_PURGE_GROUP:
        c->type = CMD_PURGE_GROUP;
        if (str_empty(env->purge_group->group)) {
            *errmsg = "purge_group: missing required field group";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->purge_group->group;
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_CLOSE_GROUP:
        c->type = CMD_CLOSE_GROUP;
        if (str_empty(env->close_group->group)) {
            *errmsg = "close_group: missing required field group";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->close_group->group;
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_CANCEL_GROUP:
        c->type = CMD_CANCEL_GROUP;
        if (str_empty(env->cancel_group->group)) {
            *errmsg = "cancel_group: missing required field group";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->cancel_group->group;
        c->reason = str_or_empty(env->cancel_group->reason);
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_CANCEL_JOB:
        c->type = CMD_CANCEL_JOB;
        if (str_empty(env->cancel_job->job)) {
            *errmsg = "cancel_job: missing required field job";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->cancel_job->job;
        c->reason = str_or_empty(env->cancel_job->reason);
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_GET_TREE:
        c->type = CMD_GET_TREE;
        if (str_empty(env->get_tree->group)) {
            *errmsg = "get_tree: missing required field group";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->get_tree->group;
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_WAIT_GROUP:
        c->type = CMD_WAIT_GROUP;
        if (str_empty(env->wait_group->group)) {
            *errmsg = "wait_group: missing required field group";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->wait_group->group;
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_SUBSCRIBE:
        c->type = CMD_SUBSCRIBE;
        if (str_empty(env->subscribe->group)) {
            *errmsg = "subscribe: missing required field group";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->subscribe->group;
        for (size_t i = 0; i < env->subscribe->n_types; i++) {
            int t = (int)env->subscribe->types[i];
            if (t < EV_JOB_DISPATCHED || t > EV_GROUP_ENDED) {
                *errmsg = "subscribe: unknown event type in types";
                return CORRAL_EBADREQUEST;
            }
            c->event_mask |= 1u << t;
        }
        return 0;
    default:
        *errmsg = "internal: not a client request";
        return CORRAL_EBADREQUEST;
    }
}

/* Fills c from a Ready body, building the running_ref array into h. Returns 0,
 * CORRAL_EBADREQUEST with *errmsg set, or CORRAL_ENOMEM. */
static int
decode_ready(const Corral__V1__Ready *b, struct cmd *c, struct wire_decoded *h, const char **errmsg)
{
    c->type = CMD_READY;
    if (b->n_kinds == 0) {
        *errmsg = "ready: missing required field kinds (at least one kind)";
        return CORRAL_EBADREQUEST;
    }
    for (size_t i = 0; i < b->n_kinds; i++) {
        if (str_empty(b->kinds[i])) {
            *errmsg = "ready: kinds must not contain an empty kind";
            return CORRAL_EBADREQUEST;
        }
    }
    if (b->concurrency == 0) {
        *errmsg = "ready: missing required field concurrency (at least 1)";
        return CORRAL_EBADREQUEST;
    }
    for (size_t i = 0; i < b->n_running; i++) {
        if (b->running[i] == NULL || str_empty(b->running[i]->job)) {
            *errmsg = "ready: running entry without job";
            return CORRAL_EBADREQUEST;
        }
    }
    if (b->n_running > 0) {
        h->running = calloc(b->n_running, sizeof(struct running_ref));
        if (h->running == NULL) {
            *errmsg = "out of memory";
            return CORRAL_ENOMEM;
        }
        for (size_t i = 0; i < b->n_running; i++) {
            h->running[i].job = b->running[i]->job;
            h->running[i].attempt = b->running[i]->attempt;
        }
    }
    /* protobuf-c's repeated string is char **: the engine only reads it. */
    c->kinds = (const char *const *)b->kinds;
    c->nkinds = b->n_kinds;
    c->concurrency = b->concurrency;
    c->running = h->running;
    c->nrunning = b->n_running;
    c->name = str_or_empty(b->name);
    return 0;
}

/* Fills c from a worker request body (building arrays into h). Returns 0,
 * CORRAL_EBADREQUEST with *errmsg set, or CORRAL_ENOMEM. */
static int
decode_worker(const Corral__V1__Envelope *env, struct cmd *c, struct wire_decoded *h,
              const char **errmsg)
{
    switch (env->body_case) {
    case CORRAL__V1__ENVELOPE__BODY_READY:
        return decode_ready(env->ready, c, h, errmsg);
    case CORRAL__V1__ENVELOPE__BODY_HEARTBEAT:
        c->type = CMD_HEARTBEAT;
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_STARTED:
        c->type = CMD_STARTED;
        if (str_empty(env->started->job)) {
            *errmsg = "started: missing required field job";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->started->job;
        c->attempt = env->started->attempt;
        c->data = bytes_of(env->started->value);
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_DONE:
        c->type = CMD_DONE;
        if (str_empty(env->done->job)) {
            *errmsg = "done: missing required field job";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->done->job;
        c->attempt = env->done->attempt;
        c->data = bytes_of(env->done->result);
        return 0;
    case CORRAL__V1__ENVELOPE__BODY_FAILED: {
        const Corral__V1__Failed *b = env->failed;
        c->type = CMD_FAILED;
        if (str_empty(b->job)) {
            *errmsg = "failed: missing required field job";
            return CORRAL_EBADREQUEST;
        }
        if (str_empty(b->type)) {
            *errmsg = "failed: missing required field type";
            return CORRAL_EBADREQUEST;
        }
        c->id = b->job;
        c->attempt = b->attempt;
        c->err_type = b->type;
        c->err_message = str_or_empty(b->message);
        c->data = bytes_of(b->details);
        c->retryable = b->retryable != 0;
        return 0;
    }
    case CORRAL__V1__ENVELOPE__BODY_CANCEL_ACK:
        c->type = CMD_CANCEL_ACK;
        if (str_empty(env->cancel_ack->job)) {
            *errmsg = "cancel_ack: missing required field job";
            return CORRAL_EBADREQUEST;
        }
        c->id = env->cancel_ack->job;
        c->attempt = env->cancel_ack->attempt;
        return 0;
    default:
        *errmsg = "internal: not a worker request";
        return CORRAL_EBADREQUEST;
    }
}

/* True when s is valid UTF-8, as proto3 requires of strings: no stray continuation
 * bytes, overlong forms, surrogates or code points past U+10FFFF. protobuf-c does not
 * check, but other languages' decoders reject a message holding such a string, so one
 * stored and echoed in a tree would break every client reading that tree. */
static bool
utf8_valid(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    while (*s != '\0') {
        unsigned char c = *s;
        size_t len;
        unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c < 0x80) {
            s++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return false;
        }
        if (s[1] < lo || s[1] > hi) /* also stops at the NUL */
            return false;
        for (size_t i = 2; i < len; i++) {
            if (s[i] < 0x80 || s[i] > 0xBF)
                return false;
        }
        s += len;
    }
    return true;
}

/* True when every string of a decoded command is valid UTF-8. */
static bool
cmd_utf8_valid(const struct cmd *c)
{
    const char *strs[] = {c->id,     c->parent_group, c->parent_job,  c->kind,
                          c->reason, c->err_type,     c->err_message, c->name};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        if (!utf8_valid(strs[i]))
            return false;
    }
    for (size_t i = 0; i < c->nkinds; i++) {
        if (!utf8_valid(c->kinds[i]))
            return false;
    }
    for (size_t i = 0; i < c->nlimiters; i++) {
        if (!utf8_valid(c->limiters[i]))
            return false;
    }
    if (c->idem_key != NULL && !utf8_valid(c->idem_key))
        return false;
    for (size_t i = 0; i < c->nrunning; i++) {
        if (!utf8_valid(c->running[i].job))
            return false;
    }
    return true;
}

/* The endpoint a body belongs to. */
enum body_class { BODY_NONE, BODY_CLIENT, BODY_WORKER, BODY_BROKER };

/* Classifies an Envelope's body; BODY_NONE for an unset (or unknown) body. */
static enum body_class
classify(const Corral__V1__Envelope *env)
{
    switch (env->body_case) {
    case CORRAL__V1__ENVELOPE__BODY_OPEN_GROUP:
    case CORRAL__V1__ENVELOPE__BODY_SUBMIT:
    case CORRAL__V1__ENVELOPE__BODY_CLOSE_GROUP:
    case CORRAL__V1__ENVELOPE__BODY_CANCEL_GROUP:
    case CORRAL__V1__ENVELOPE__BODY_CANCEL_JOB:
    case CORRAL__V1__ENVELOPE__BODY_GET_TREE:
    case CORRAL__V1__ENVELOPE__BODY_WAIT_GROUP:
    case CORRAL__V1__ENVELOPE__BODY_SUBSCRIBE:
    case CORRAL__V1__ENVELOPE__BODY_SET_LIMITER:
    case CORRAL__V1__ENVELOPE__BODY_DELETE_LIMITER:
    case CORRAL__V1__ENVELOPE__BODY_GET_LIMITERS:
    case CORRAL__V1__ENVELOPE__BODY_PURGE_GROUP:
        return BODY_CLIENT;
    case CORRAL__V1__ENVELOPE__BODY_READY:
    case CORRAL__V1__ENVELOPE__BODY_HEARTBEAT:
    case CORRAL__V1__ENVELOPE__BODY_STARTED:
    case CORRAL__V1__ENVELOPE__BODY_DONE:
    case CORRAL__V1__ENVELOPE__BODY_FAILED:
    case CORRAL__V1__ENVELOPE__BODY_CANCEL_ACK:
        return BODY_WORKER;
    case CORRAL__V1__ENVELOPE__BODY_REPLY:
    case CORRAL__V1__ENVELOPE__BODY_DISPATCH:
    case CORRAL__V1__ENVELOPE__BODY_CANCEL:
    case CORRAL__V1__ENVELOPE__BODY_EVENT:
    case CORRAL__V1__ENVELOPE__BODY_SHUTDOWN:
        return BODY_BROKER;
    default:
        return BODY_NONE;
    }
}

/* Decodes buf[0..len) (borrowed) received on side into *cmd; see wire.h. request_id and
 * errmsg may be NULL when the caller does not want them. */
int
wire_decode(const uint8_t *buf, size_t len, enum peer_side side, struct cmd *cmd,
            struct wire_decoded **holder, uint64_t *request_id, const char **errmsg)
{
    const char *msg = NULL;
    int rc = 0;
    struct wire_decoded *h = NULL;

    *holder = NULL;
    if (request_id != NULL)
        *request_id = 0;
    memset(cmd, 0, sizeof(*cmd));

    if (buf == NULL || len == 0) {
        /* An empty frame is a valid empty Envelope to protobuf, but never a request. */
        msg = "malformed message: empty frame, not a corral Envelope";
        rc = CORRAL_EBADREQUEST;
        goto out;
    }
    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        msg = "out of memory";
        rc = CORRAL_ENOMEM;
        goto out;
    }
    h->env = corral__v1__envelope__unpack(NULL, len, buf);
    if (h->env == NULL) {
        msg = "malformed message: not a corral Envelope";
        rc = CORRAL_EBADREQUEST;
        goto out;
    }
    const Corral__V1__Envelope *env = h->env;
    if (request_id != NULL)
        *request_id = env->request_id;
    if (env->version != WIRE_VERSION) {
        msg = "unsupported protocol version; this broker supports version 1";
        rc = CORRAL_EVERSION;
        goto out;
    }

    enum body_class cls = classify(env);
    if (cls == BODY_NONE || env->open_group == NULL) {
        /* Every body member is a pointer in one union: open_group tests them all. */
        msg = "malformed message: envelope has no (known) body";
        rc = CORRAL_EBADREQUEST;
        goto out;
    }
    if (cls == BODY_BROKER) {
        msg = "reply, dispatch, cancel, event and shutdown are sent by the broker, not to it";
        rc = CORRAL_EBADREQUEST;
        goto out;
    }
    if (cls == BODY_CLIENT && side != SIDE_CLIENT) {
        msg = "a client request on the worker endpoint: send it to the client endpoint";
        rc = CORRAL_EBADREQUEST;
        goto out;
    }
    if (cls == BODY_WORKER && side != SIDE_WORKER) {
        msg = "a worker request on the client endpoint: send it to the worker endpoint";
        rc = CORRAL_EBADREQUEST;
        goto out;
    }

    /* Every string the engine may read is "" unless the body sets it. */
    cmd->id = "";
    cmd->parent_group = "";
    cmd->parent_job = "";
    cmd->kind = "";
    cmd->reason = "";
    cmd->err_type = "";
    cmd->err_message = "";
    cmd->name = "";
    cmd->request_id = env->request_id;
    rc = cls == BODY_CLIENT ? decode_client(env, cmd, &msg) : decode_worker(env, cmd, h, &msg);
    if (rc == 0 && !cmd_utf8_valid(cmd)) {
        msg = "malformed message: a string field is not valid UTF-8";
        rc = CORRAL_EBADREQUEST;
    }

out:
    if (rc != 0) {
        memset(cmd, 0, sizeof(*cmd));
        wire_decoded_free(&h);
        if (errmsg != NULL)
            *errmsg = msg;
        return rc;
    }
    if (errmsg != NULL)
        *errmsg = NULL;
    *holder = h;
    return 0;
}

/* Frees what a successful wire_decode() returned; accepts NULL and sets *p to NULL. */
void
wire_decoded_free(struct wire_decoded **p)
{
    if (p == NULL || *p == NULL)
        return;
    struct wire_decoded *h = *p;
    if (h->env != NULL)
        corral__v1__envelope__free_unpacked(h->env, NULL);
    free(h->running);
    free(h);
    *p = NULL;
}

/* ------------------------------------------------------------------ encoding */

/* protobuf-c declares its string fields char * although packing only reads them: this
 * is the one place where const is cast away. NULL becomes "". */
static char *
pbstr(const char *s)
{
    return (char *)(s != NULL ? s : "");
}

/* Maps struct bytes to protobuf bytes; packing only reads the data. */
static ProtobufCBinaryData
pbbytes(struct bytes b)
{
    ProtobufCBinaryData out = {.len = b.data != NULL ? b.len : 0, .data = (uint8_t *)b.data};
    return out;
}

/* Returns zeroed arena memory for n objects of size elem, or NULL when out of memory or
 * when n * elem overflows. */
static void *
alloc_array(struct arena *a, size_t n, size_t elem)
{
    if (elem != 0 && n > SIZE_MAX / elem)
        return NULL;
    return arena_alloc(a, n * elem);
}

/* Builds the protobuf Error for e (borrowed) and its nested exceptions in arena a.
 * Returns NULL when out of memory. */
static Corral__V1__Error *
build_error(struct arena *a, const struct terr *e)
{
    static const Corral__V1__Error init = CORRAL__V1__ERROR__INIT;
    Corral__V1__Error *pe = arena_alloc(a, sizeof(*pe));
    if (pe == NULL)
        return NULL;
    *pe = init;
    pe->type = pbstr(e->type);
    pe->message = pbstr(e->message);
    pe->job = pbstr(e->job);
    pe->group = pbstr(e->group);
    pe->details = pbbytes(e->details);
    if (e->nexceptions > 0 && e->exceptions != NULL) {
        pe->exceptions = alloc_array(a, e->nexceptions, sizeof(*pe->exceptions));
        if (pe->exceptions == NULL)
            return NULL;
        for (size_t i = 0; i < e->nexceptions; i++) {
            pe->exceptions[i] = build_error(a, &e->exceptions[i]);
            if (pe->exceptions[i] == NULL)
                return NULL;
        }
        pe->n_exceptions = e->nexceptions;
    }
    return pe;
}

static Corral__V1__Node *build_node(struct arena *a, const struct tnode *n, bool deep);

/* Builds protobuf Nodes for the count nodes at list (borrowed) into *out and *nout.
 * Returns false when out of memory. */
static bool
build_node_list(struct arena *a, const struct tnode *list, size_t count, Corral__V1__Node ***out,
                size_t *nout)
{
    if (count == 0 || list == NULL)
        return true;
    Corral__V1__Node **arr = alloc_array(a, count, sizeof(*arr));
    if (arr == NULL)
        return false;
    for (size_t i = 0; i < count; i++) {
        arr[i] = build_node(a, &list[i], true);
        if (arr[i] == NULL)
            return false;
    }
    *out = arr;
    *nout = count;
    return true;
}

/* Builds the protobuf Node for n (borrowed) in arena a, with its children and the
 * groups it opened when deep is true (a shallow node, for events, has neither).
 * Returns NULL when out of memory. */
static Corral__V1__Node *
build_node(struct arena *a, const struct tnode *n, bool deep)
{
    static const Corral__V1__Node init = CORRAL__V1__NODE__INIT;
    Corral__V1__Node *pn = arena_alloc(a, sizeof(*pn));
    if (pn == NULL)
        return NULL;
    *pn = init;
    /* model.h's enums carry the proto's numbers (checked above). */
    pn->type = (Corral__V1__NodeType)n->type;
    pn->id = pbstr(n->id);
    pn->kind = pbstr(n->kind);
    pn->state = (Corral__V1__State)n->state;
    pn->outcome = (Corral__V1__Outcome)n->outcome;
    pn->result = pbbytes(n->result);
    if (n->error != NULL) {
        pn->error = build_error(a, n->error);
        if (pn->error == NULL)
            return NULL;
    }
    pn->attempt = n->attempt;
    pn->cancel_called = n->cancel_called;
    pn->cancelled_caught = n->cancelled_caught;
    pn->cancel_source = (Corral__V1__CancelSource)n->cancel_source;
    pn->cancel_reason = pbstr(n->cancel_reason);
    pn->parent = pbstr(n->parent);
    pn->closed = n->closed;
    pn->deadline_unix_ms = n->deadline_ms;
    /* model.h's on_deadline carries the proto's numbers. */
    pn->on_deadline = (Corral__V1__OnDeadline)n->on_deadline;
    pn->shield = n->shield;
    pn->effective_deadline_unix_ms = n->effective_deadline_ms;
    pn->max_attempts = n->max_attempts;
    pn->next_attempt_unix_ms = n->next_attempt_ms;
    pn->started = n->started;
    if (n->nlimiters > 0) {
        char **names = alloc_array(a, n->nlimiters, sizeof(*names));
        if (names == NULL)
            return NULL;
        for (size_t i = 0; i < n->nlimiters; i++)
            names[i] = pbstr(n->limiters[i]);
        pn->limiters = names;
        pn->n_limiters = n->nlimiters;
    }
    if (deep) {
        if (!build_node_list(a, n->children, n->nchildren, &pn->children, &pn->n_children))
            return NULL;
        if (!build_node_list(a, n->groups, n->ngroups, &pn->groups, &pn->n_groups))
            return NULL;
    }
    return pn;
}

/* Fills reply->limiters from list[0..n) (borrowed) in arena a. False when out of memory. */
static bool
build_limiters(struct arena *a, const struct limiter_info *list, size_t n, Corral__V1__Reply *reply)
{
    static const Corral__V1__Limiter init = CORRAL__V1__LIMITER__INIT;
    Corral__V1__Limiter *ls = alloc_array(a, n, sizeof(*ls));
    Corral__V1__Limiter **ptrs = alloc_array(a, n, sizeof(*ptrs));
    if (ls == NULL || ptrs == NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        ls[i] = init;
        ls[i].name = pbstr(list[i].name);
        ls[i].total_tokens = list[i].total_tokens;
        ls[i].borrowed_tokens = list[i].borrowed_tokens;
        ls[i].waiting = list[i].waiting;
        if (list[i].nborrowers > 0) {
            char **b = alloc_array(a, list[i].nborrowers, sizeof(*b));
            if (b == NULL)
                return false;
            for (size_t k = 0; k < list[i].nborrowers; k++)
                b[k] = pbstr(list[i].borrowers[k]);
            ls[i].borrowers = b;
            ls[i].n_borrowers = list[i].nborrowers;
        }
        ptrs[i] = &ls[i];
    }
    reply->limiters = ptrs;
    reply->n_limiters = n;
    return true;
}

/* Maps a reply code to the proto's ErrorCode: equal numbers for the broker's codes
 * (checked above); a library-only code (>= 100, such as ENOMEM inside the broker) is
 * sent as ERR_INTERNAL, which is what it means to the peer. */
static Corral__V1__ErrorCode
wire_code(enum corral_err code)
{
    if ((int)code < 0 || (int)code > CORRAL__V1__ERROR_CODE__ERR_NOT_STARTED)
        return CORRAL__V1__ERROR_CODE__ERR_INTERNAL;
    return (Corral__V1__ErrorCode)code;
}

/* Packs env into w's buffer, growing it when needed. Returns 0, CORRAL_ENOMEM, or
 * CORRAL_EINTERNAL when protobuf-c packs another size than it announced. */
static int
pack_envelope(struct wire_encoder *w, const Corral__V1__Envelope *env, size_t *len)
{
    size_t n = corral__v1__envelope__get_packed_size(env);
    if (n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < n)
            cap *= 2;
        uint8_t *grown = realloc(w->buf, cap);
        if (grown == NULL)
            return CORRAL_ENOMEM;
        w->buf = grown;
        w->cap = cap;
    }
    if (corral__v1__envelope__pack(env, w->buf) != n)
        return CORRAL_EINTERNAL;
    *len = n;
    return 0;
}

void
wire_encoder_init(struct wire_encoder *w)
{
    w->buf = NULL;
    w->cap = 0;
    arena_init(&w->scratch);
}

void
wire_encoder_fini(struct wire_encoder *w)
{
    free(w->buf);
    w->buf = NULL;
    w->cap = 0;
    arena_fini(&w->scratch);
}

/* Serializes m (borrowed) into w's buffer; see wire.h. The protobuf structs live in
 * w's scratch arena, rewound on every call; strings and bytes are not copied. */
int
wire_encode(struct wire_encoder *w, const struct out_msg *m, const uint8_t **out, size_t *len)
{
    Corral__V1__Envelope env = CORRAL__V1__ENVELOPE__INIT;
    Corral__V1__Reply reply = CORRAL__V1__REPLY__INIT;
    Corral__V1__Dispatch dispatch = CORRAL__V1__DISPATCH__INIT;
    Corral__V1__Cancel cancel = CORRAL__V1__CANCEL__INIT;
    Corral__V1__Event event = CORRAL__V1__EVENT__INIT;
    Corral__V1__Shutdown shut = CORRAL__V1__SHUTDOWN__INIT;
    uint32_t versions[1] = {WIRE_VERSION};
    struct arena *a = &w->scratch;
    int rc = 0;

    arena_reset(a);
    env.version = WIRE_VERSION;
    env.request_id = m->request_id;

    switch (m->type) {
    case OUTMSG_REPLY:
        env.body_case = CORRAL__V1__ENVELOPE__BODY_REPLY;
        env.reply = &reply;
        reply.code = wire_code(m->code);
        reply.message = pbstr(m->message);
        reply.id = pbstr(m->id);
        reply.cancelled = m->cancelled;
        if (m->tree != NULL) {
            reply.tree = build_node(a, m->tree, true);
            if (reply.tree == NULL) {
                rc = CORRAL_ENOMEM;
                goto out;
            }
        }
        if (reply.code == CORRAL__V1__ERROR_CODE__ERR_UNSUPPORTED_VERSION) {
            reply.supported_versions = versions;
            reply.n_supported_versions = 1;
        }
        reply.retry_after_ms = m->retry_after_ms;
        reply.heartbeat_interval_ms = m->hb_interval_ms;
        reply.heartbeat_timeout_ms = m->hb_timeout_ms;
        reply.value = pbbytes(m->value);
        reply.duplicate = m->duplicate;
        reply.purged_nodes = m->purged_nodes;
        if (m->nlimiters > 0 && !build_limiters(a, m->limiters, m->nlimiters, &reply)) {
            rc = CORRAL_ENOMEM;
            goto out;
        }
        if (m->error != NULL) {
            reply.error = build_error(a, m->error);
            if (reply.error == NULL) {
                rc = CORRAL_ENOMEM;
                goto out;
            }
        }
        if (m->nreclaimed > 0 && m->reclaimed != NULL) {
            static const Corral__V1__RunningJob rj_init = CORRAL__V1__RUNNING_JOB__INIT;
            Corral__V1__RunningJob *rjs = alloc_array(a, m->nreclaimed, sizeof(*rjs));
            Corral__V1__RunningJob **ptrs = alloc_array(a, m->nreclaimed, sizeof(*ptrs));
            if (rjs == NULL || ptrs == NULL) {
                rc = CORRAL_ENOMEM;
                goto out;
            }
            for (size_t i = 0; i < m->nreclaimed; i++) {
                rjs[i] = rj_init;
                rjs[i].job = pbstr(m->reclaimed[i].job);
                rjs[i].attempt = m->reclaimed[i].attempt;
                ptrs[i] = &rjs[i];
            }
            reply.reclaimed = ptrs;
            reply.n_reclaimed = m->nreclaimed;
        }
        break;
    case OUTMSG_DISPATCH:
        env.body_case = CORRAL__V1__ENVELOPE__BODY_DISPATCH;
        env.dispatch = &dispatch;
        dispatch.job = pbstr(m->job);
        dispatch.attempt = m->attempt;
        dispatch.kind = pbstr(m->kind);
        dispatch.payload = pbbytes(m->payload);
        dispatch.group = pbstr(m->group);
        dispatch.effective_deadline_unix_ms = m->effective_deadline_ms;
        break;
    case OUTMSG_CANCEL:
        env.body_case = CORRAL__V1__ENVELOPE__BODY_CANCEL;
        env.cancel = &cancel;
        cancel.job = pbstr(m->job);
        cancel.attempt = m->attempt;
        /* model.h's cancel_source carries the proto's numbers (checked above). */
        cancel.source = (Corral__V1__CancelSource)m->source;
        cancel.reason = pbstr(m->reason);
        break;
    case OUTMSG_EVENT:
        env.body_case = CORRAL__V1__ENVELOPE__BODY_EVENT;
        env.event = &event;
        /* cmd.h's event_type carries the proto's numbers (checked above). */
        event.type = (Corral__V1__EventType)m->event;
        event.subscription = pbstr(m->subscription);
        if (m->node != NULL) {
            event.node = build_node(a, m->node, false);
            if (event.node == NULL) {
                rc = CORRAL_ENOMEM;
                goto out;
            }
        }
        break;
    case OUTMSG_SHUTDOWN:
        env.body_case = CORRAL__V1__ENVELOPE__BODY_SHUTDOWN;
        env.shutdown = &shut;
        break;
    default:
        rc = CORRAL_EINVAL;
        goto out;
    }
    rc = pack_envelope(w, &env, len);
    if (rc == 0)
        *out = w->buf;

out:
    return rc;
}
