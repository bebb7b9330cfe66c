/* errors.c - static names for libcorral's error codes and enums: corral_strerror(),
 * corral_state_name(), corral_outcome_name(), corral_source_name(). No state, no I/O. */
#include "corral.h"

/* Returns a static message for err (a corral_err, or any other number). Never NULL. */
const char *
corral_strerror(int err)
{
    switch (err) {
    case CORRAL_OK:
        return "ok";
    case CORRAL_EBADREQUEST:
        return "bad request";
    case CORRAL_EVERSION:
        return "unsupported protocol version";
    case CORRAL_ENOTFOUND:
        return "not found";
    case CORRAL_ENOTACTIVE:
        return "group is not active";
    case CORRAL_ETOOLARGE:
        return "too large";
    case CORRAL_EBUSY:
        return "broker busy, retry later";
    case CORRAL_ESTALE:
        return "stale attempt";
    case CORRAL_EWRONGSTATE:
        return "wrong state";
    case CORRAL_EUNKNOWNWORKER:
        return "unknown worker";
    case CORRAL_EINTERNAL:
        return "internal broker error";
    case CORRAL_ESHUTDOWN:
        return "broker is shutting down";
    case CORRAL_ESTARTFAILED:
        return "job failed before signalling readiness";
    case CORRAL_ESTARTCANCELLED:
        return "job was cancelled before signalling readiness";
    case CORRAL_ENOTSTARTED:
        return "job ended without signalling readiness";
    case CORRAL_ETIMEDOUT:
        return "timed out";
    case CORRAL_EIO:
        return "socket error";
    case CORRAL_ENOMEM:
        return "out of memory";
    case CORRAL_EINVAL:
        return "invalid argument";
    case CORRAL_EPROTO:
        return "protocol error";
    case CORRAL_ECLOSED:
        return "worker closed";
    default:
        return "unknown error";
    }
}

/* Returns the static upper-case name of a state ("QUEUED"), "UNKNOWN" out of range. */
const char *
corral_state_name(enum corral_state s)
{
    switch (s) {
    case CORRAL_STATE_UNSPECIFIED:
        return "UNSPECIFIED";
    case CORRAL_STATE_QUEUED:
        return "QUEUED";
    case CORRAL_STATE_RUNNING:
        return "RUNNING";
    case CORRAL_STATE_CANCELLING:
        return "CANCELLING";
    case CORRAL_STATE_ENDED:
        return "ENDED";
    case CORRAL_STATE_OPEN:
        return "OPEN";
    case CORRAL_STATE_CLOSED:
        return "CLOSED";
    case CORRAL_STATE_WAITING:
        return "WAITING";
    case CORRAL_STATE_RETRY_WAIT:
        return "RETRY_WAIT";
    }
    return "UNKNOWN";
}

/* Returns the static name of an outcome ("SUCCEEDED"); NULL for CORRAL_OUTCOME_NONE,
 * "UNKNOWN" out of range. */
const char *
corral_outcome_name(enum corral_outcome o)
{
    switch (o) {
    case CORRAL_OUTCOME_NONE:
        return NULL;
    case CORRAL_OUTCOME_SUCCEEDED:
        return "SUCCEEDED";
    case CORRAL_OUTCOME_FAILED:
        return "FAILED";
    case CORRAL_OUTCOME_CANCELLED:
        return "CANCELLED";
    }
    return "UNKNOWN";
}

/* Returns the static name of a cancel source ("sibling_failed"); NULL for
 * CORRAL_SOURCE_NONE, "unknown" out of range. */
const char *
corral_source_name(enum corral_cancel_source s)
{
    switch (s) {
    case CORRAL_SOURCE_NONE:
        return NULL;
    case CORRAL_SOURCE_EXPLICIT:
        return "explicit";
    case CORRAL_SOURCE_DEADLINE:
        return "deadline";
    case CORRAL_SOURCE_SIBLING_FAILED:
        return "sibling_failed";
    case CORRAL_SOURCE_PARENT:
        return "parent";
    }
    return "unknown";
}
