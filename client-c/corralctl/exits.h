/* exits.h - corralctl's exit statuses, a public contract that scripts rely on: extend
 * them, never change one. Most commands exit 0 on success and with a sysexits.h value
 * otherwise; `group wait` and `start` also tell by their status how the wait ended. */
#ifndef CORRALCTL_EXITS_H
#define CORRALCTL_EXITS_H

/* Exit statuses (sysexits.h values). */
#define EXIT_USAGE       64 /* EX_USAGE */
#define EXIT_DATAERR     65 /* EX_DATAERR: the broker refused the request */
#define EXIT_NOINPUT     66 /* EX_NOINPUT: --payload-file unreadable */
#define EXIT_UNAVAILABLE 69 /* EX_UNAVAILABLE: no answer, transport failure */
#define EXIT_OSERR       71 /* EX_OSERR: out of memory */
#define EXIT_IOERR       74 /* EX_IOERR: cannot write the output */
#define EXIT_TEMPFAIL    75 /* EX_TEMPFAIL: the broker is busy (BUSY); try again later */

/* `group wait` exit statuses. */
#define EXIT_WAIT_FAILED    1
#define EXIT_WAIT_CANCELLED 2
#define EXIT_WAIT_TIMEOUT   3

/* `start` exit statuses. */
#define EXIT_START_FAILED      1 /* the job failed before signalling readiness */
#define EXIT_START_CANCELLED   2 /* it was cancelled first */
#define EXIT_START_TIMEOUT     3 /* no readiness within --timeout */
#define EXIT_START_NOT_STARTED 4 /* it ended without signalling readiness */

#endif
