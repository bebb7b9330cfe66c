/* harness.h - integration-test support: start the real corrald in a temp dir, stop it,
 * crash it, and drive it with libcorral, corralctl and raw ZeroMQ/protobuf sockets.
 *
 * The corrald and corralctl binaries are found through the CORRALD and CORRALCTL
 * environment variables (meson sets them). Brokers listen on ipc:// sockets inside their
 * temp dir unless asked for tcp. Every function aborts the test (cr_assert) on failure,
 * so tests read straight.
 */
#ifndef CORRAL_HARNESS_H
#define CORRAL_HARNESS_H

#include <corral.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "corral.pb-c.h"

struct broker {
    pid_t pid;
    char dir[256];       /* temp dir, removed by broker_cleanup */
    char data_dir[300];  /* <dir>/data */
    char client_ep[320]; /* ipc://<dir>/c.sock or tcp://127.0.0.1:PORT */
    char worker_ep[320];
    char log_path[300]; /* corrald's stderr */
    char extra[8][64];  /* extra corrald arguments, kept for restarts */
    int nextra;
};

/* Creates a temp dir and starts corrald in it with default test settings
 * (--sync normal, --heartbeat-interval 100ms, --heartbeat-timeout 1s) plus the given
 * extra arguments (NULL-terminated list, may be empty; later flags override earlier
 * ones). Waits until the broker answers a request. */
void broker_start(struct broker *b, const char *const *extra);
/* Same, listening on tcp://127.0.0.1 with free ports instead of ipc. */
void broker_start_tcp(struct broker *b, const char *const *extra);
/* Starts corrald again on the same data dir and endpoints (after a stop or a kill). */
void broker_restart(struct broker *b);
/* Sends SIGTERM and asserts corrald exits with status 0 within 10 s. */
void broker_stop(struct broker *b);
/* Sends sig to corrald and waits up to timeout_ms for it to exit. Returns its wait status
 * (waitpid), or -1 when it had not exited by then (it is killed then); *took_ms (may be
 * NULL) gets how long it took. Either way the broker is stopped afterwards. */
int broker_signal_wait(struct broker *b, int sig, int timeout_ms, uint64_t *took_ms);
/* Sends SIGKILL and reaps it. */
void broker_kill9(struct broker *b);
/* Removes the temp dir (call last). */
void broker_cleanup(struct broker *b);

/* A connected client (timeout 5 s) on the broker's client endpoint. */
struct corral_client *client_connect(const struct broker *b);

/* Convenience wrappers that assert success. */
void open_root(struct corral_client *c, char id[CORRAL_ID_MAX]);
void open_child(struct corral_client *c, const char *parent_group, char id[CORRAL_ID_MAX]);
void submit(struct corral_client *c, const char *group, const char *kind, const char *payload,
            char id[CORRAL_ID_MAX]);
/* Waits for a group to end (timeout_ms) and returns its tree (owned). */
struct corral_node *wait_group(struct corral_client *c, const char *group, int timeout_ms);
/* Finds a node by id anywhere in a tree (children and job-opened groups); NULL if none. */
const struct corral_node *tree_find(const struct corral_node *root, const char *id);

/* ---- in-process test workers (a thread running libcorral's worker API) ----
 *
 * Behaviour by kind:
 *   "echo"   succeeds at once with the payload as result;
 *   "fail"   fails at once: payload "Type:message" (type defaults to "ValueError");
 *   "sleep"  sleeps payload milliseconds (default 60000) then succeeds with "slept";
 *            a cancel makes it acknowledge (CancelAck) at once;
 *   "sleepfail" sleeps payload ms then fails with ValueError "late failure";
 *   "stubborn" sleeps payload ms ignoring cancel, then succeeds with "finished anyway";
 *   "stubbornfail" sleeps payload ms ignoring cancel, then fails with ValueError
 *            "fail-<payload>".
 * Every cancel a test worker receives is recorded (job id, source, reason, time). */
struct test_worker;

struct cancel_seen {
    char job[CORRAL_ID_MAX];
    enum corral_cancel_source source;
    char reason[128];
    uint64_t at_ms; /* clock_mono_ms() when the cancel reached the worker */
};

/* Starts a worker thread serving all the kinds above with the given concurrency. */
struct test_worker *test_worker_start(const struct broker *b, unsigned concurrency);
/* Stops it (jobs still running are abandoned) and frees it. */
void test_worker_stop(struct test_worker **w);
/* Asserts the worker saw a cancel of job with this source and reason. */
void expect_worker_cancel(struct test_worker *w, const char *job, enum corral_cancel_source source,
                          const char *reason);
/* Expects (without stopping the test) that the worker met no error of its own. */
void expect_no_worker_problem(struct test_worker *w);
/* Copies up to max cancels seen so far into out; returns how many there were in all. */
size_t test_worker_cancels(struct test_worker *w, struct cancel_seen *out, size_t max);
/* Number of jobs the worker has started so far. */
size_t test_worker_started(struct test_worker *w);
/* Additions: waits until at least n jobs have started / n cancels were seen (false on
 * timeout); the first cancel seen for a job (false if none); the first unexpected error a
 * worker thread met ("" if none; e.g. a report the library refused). */
bool test_worker_wait_started(struct test_worker *w, size_t n, int timeout_ms);
bool test_worker_wait_cancels(struct test_worker *w, size_t n, int timeout_ms);
bool test_worker_cancel_of(struct test_worker *w, const char *job, struct cancel_seen *out);
void test_worker_problem(struct test_worker *w, char *out, size_t outlen);

/* ---- raw protocol peers, for tests that must control every byte ---- */

struct raw_peer {
    void *ctx;
    void *sock; /* ZMQ_DEALER */
    uint64_t next_request_id;
    /* Used by the raw_worker_* helpers below (raw_connect initialises them): messages
     * received while waiting for a reply, handed out first by raw_worker_next; the time
     * of the last heartbeat sent; the code of the last heartbeat reply. */
    Corral__V1__Envelope *stash[64];
    size_t nstash;
    uint64_t last_heartbeat_ms;
    int last_heartbeat_code;
};

/* Connects a DEALER to an endpoint (client or worker side). */
void raw_connect(struct raw_peer *p, const char *endpoint);
void raw_close(struct raw_peer *p);
/* Sends frames as given (for wrong frame counts and random bytes). */
void raw_send_frames(struct raw_peer *p, const void *const *frames, const size_t *lens,
                     size_t nframes);
/* Packs and sends an envelope (version and request_id taken from env as given). */
void raw_send(struct raw_peer *p, const Corral__V1__Envelope *env);
/* Receives one envelope within timeout_ms; NULL on timeout. Free with
 * corral__v1__envelope__free_unpacked(env, NULL). */
Corral__V1__Envelope *raw_recv(struct raw_peer *p, int timeout_ms);
/* Receives until a Reply with the given request_id arrives, discarding anything else
 * (use raw_recv when the other messages matter). Asserts it arrives within timeout_ms. */
Corral__V1__Envelope *raw_expect_reply(struct raw_peer *p, uint64_t request_id, int timeout_ms);

/* Runs corralctl with arguments (NULL-terminated), the broker's endpoints exported in
 * CORRAL_CLIENT_ENDPOINT / CORRAL_WORKER_ENDPOINT; captures stdout (into out, at most
 * outlen-1 bytes, NUL-terminated) and returns its exit status (or 128+signal). */
int run_ctl(const struct broker *b, char *out, size_t outlen, const char *const *args);

/* ---- raw workers (additions): a raw_peer on the worker endpoint speaking the worker
 * protocol by hand. Every request gets a fresh request id; Dispatch, Cancel, Shutdown
 * and other unsolicited messages that arrive while a helper waits for its reply are
 * stashed and returned, in order, by raw_worker_next. Replies to heartbeats are
 * swallowed (their code is kept in last_heartbeat_code). */

/* Sends a request (version 1 and a fresh request id are filled in) and returns its Reply
 * envelope (owned), asserting it arrives within timeout_ms. */
Corral__V1__Envelope *raw_request(struct raw_peer *p, Corral__V1__Envelope *env, int timeout_ms);
/* Ready with the kinds, the concurrency and the jobs still running (jobs[i], attempts[i]);
 * returns the Reply envelope (owned). */
Corral__V1__Envelope *raw_worker_ready(struct raw_peer *p, const char *const *kinds, size_t nkinds,
                                       unsigned concurrency, const char *const *jobs,
                                       const uint32_t *attempts, size_t nrunning);
/* Connects p to b's worker endpoint and registers it for the kinds with the given
 * concurrency; asserts the Ready reply is OK. */
void raw_worker_register(struct raw_peer *p, const struct broker *b, const char *const *kinds,
                         size_t nkinds, unsigned concurrency);
/* Reports; each returns the Reply's code (enum corral_err numbers). */
int raw_worker_done(struct raw_peer *p, const char *job, uint32_t attempt, const char *result);
int raw_worker_failed(struct raw_peer *p, const char *job, uint32_t attempt, const char *type,
                      const char *message);
int raw_worker_cancel_ack(struct raw_peer *p, const char *job, uint32_t attempt);
/* Failed with retryable set (S13). */
int raw_worker_failed_retryable(struct raw_peer *p, const char *job, uint32_t attempt,
                                const char *type, const char *message);
/* Sends a Heartbeat now (its reply is swallowed later). */
void raw_worker_heartbeat(struct raw_peer *p);
/* The next unsolicited message (stashed first), waiting up to timeout_ms; NULL on timeout.
 * With heartbeat set, sends a Heartbeat every 100 ms while waiting; without it the peer
 * stays silent (to get it declared lost). */
Corral__V1__Envelope *raw_worker_next(struct raw_peer *p, int timeout_ms, bool heartbeat);
/* Like raw_worker_next, but skips (frees) messages whose body is not `body`. */
Corral__V1__Envelope *raw_worker_expect(struct raw_peer *p, Corral__V1__Envelope__BodyCase body,
                                        int timeout_ms, bool heartbeat);
/* Stays alive for ms (heartbeats), stashing whatever arrives. */
void raw_worker_idle(struct raw_peer *p, int ms);

/* ---- tree helpers (additions) ---- */

/* Finds id in a protobuf tree (children and groups opened by jobs); NULL if absent. */
const Corral__V1__Node *pnode_find(const Corral__V1__Node *n, const char *id);

/* Prints a tree (one node a line, indented) to f, for diagnostics. */
void tree_print(FILE *f, const struct corral_node *root);
/* Finds id in the tree and asserts its state and outcome; prints the tree on failure.
 * Returns the node (borrowed from root). */
const struct corral_node *node_expect(const struct corral_node *root, const char *id,
                                      enum corral_state state, enum corral_outcome outcome);
/* Asserts the D8 fields of node id: cancel_called, cancel_source, cancel_reason (NULL: none,
 * which the tree may give as NULL or "") and cancelled_caught; prints the tree on failure. */
void node_expect_cancel(const struct corral_node *root, const char *id, bool called,
                        enum corral_cancel_source source, const char *reason, bool caught);
/* Asserts err is the exception group of group: type "ExceptionGroup", group set, the
 * message "unhandled errors in group <group>" (optionally followed by Python's
 * " (N sub-exception[s])"), n sub-exceptions. */
void error_expect_group(const struct corral_error *err, const char *group, size_t n);
/* Asserts err is job's error with that type and message and no sub-exceptions. */
void error_expect_job(const struct corral_error *err, const char *type, const char *message,
                      const char *job);
/* Asserts node id succeeded with that result. */
void node_expect_result(const struct corral_node *root, const char *id, const char *result);
/* Reads a group's tree now (asserts success); owned. */
struct corral_node *get_tree(struct corral_client *c, const char *group);
/* Polls the tree of group every 10 ms until node id is in the given state; false on
 * timeout. */
bool node_eventually(struct corral_client *c, const char *group, const char *id,
                     enum corral_state state, int timeout_ms);

/* Prints corrald's log of b to stderr. */
void broker_print_log(const struct broker *b);
/* Kills every broker this process started and has not cleaned up, printing its log
 * (a test that aborted on a failed assertion leaves them), and removes their temp dirs.
 * Use as a TestSuite's .fini; also registered with atexit. */
void harness_teardown(void);

/* Polls cond(arg) every 10 ms until it is true or timeout_ms passes; returns its last
 * value. */
bool eventually(bool (*cond)(void *arg), void *arg, int timeout_ms);

#endif
