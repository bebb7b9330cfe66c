/* engine_purge.c - retention: nothing the broker holds grows without bound. Ended root
 * groups wait in a list in the order they ended; once --retention has passed since a
 * root ended (or a client purged it with PurgeGroup) its whole tree is freed and its rows
 * deleted, PURGE_BATCH nodes per turn, so a large tree never stalls the loop.
 *
 * A tree being purged is invisible at once: lookups of any node under a root marked
 * `purging` fail (engine_lookup). Nodes are taken children first, so that the rows left
 * in the store after any commit still form whole trees (the root's row goes last, with
 * the root's purge marker), and a purge cut short by a crash resumes at start. */
#include "engine_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Nodes freed (and rows deleted) per turn, at most. */
#define PURGE_BATCH 2000

/* ------------------------------------------------------------------ the retained list */

void
retain_root(struct engine *e, struct group *g)
{
    g->rprev = e->retain_tail;
    g->rnext = NULL;
    if (e->retain_tail)
        e->retain_tail->rnext = g;
    else
        e->retain_head = g;
    e->retain_tail = g;
    g->retained = true;
}

static void
unretain(struct engine *e, struct group *g)
{
    if (!g->retained)
        return;
    if (g->rprev)
        g->rprev->rnext = g->rnext;
    else
        e->retain_head = g->rnext;
    if (g->rnext)
        g->rnext->rprev = g->rprev;
    else
        e->retain_tail = g->rprev;
    g->rprev = g->rnext = NULL;
    g->retained = false;
}

static int
by_ended(const void *a, const void *b)
{
    const struct group *x = *(struct group *const *)a, *y = *(struct group *const *)b;
    if (x->n.ended_ms != y->n.ended_ms)
        return x->n.ended_ms < y->n.ended_ms ? -1 : 1;
    return x->n.id < y->n.id ? -1 : x->n.id > y->n.id;
}

void
retain_restored(struct engine *e, struct group **roots, size_t n)
{
    if (n > 1)
        qsort(roots, n, sizeof(*roots), by_ended);
    for (size_t i = 0; i < n; i++)
        retain_root(e, roots[i]);
}

/* ------------------------------------------------------------------ purging */

static void
push(struct engine *e, struct node *n)
{
    eappend((void ***)&e->purge_stack, &e->npurge, &e->cappurge, n);
}

/* Starts the purge of an ended root: it disappears from every request now. */
static void
purge_begin(struct engine *e, struct group *root, bool write_marker)
{
    unretain(e, root);
    root->n.purging = true;
    push(e, &root->n);
    if (!write_marker)
        return; /* resumed at start: counted, and marked, before */
    e->stats.groups_purged++;
    if (!outbox_purge_root(e->out, root->n.id))
        engine_oom();
}

/* Frees a node whose children are gone: out of the id map and the idempotency keys,
 * its row deleted, its memory freed at the end of the turn (messages of this turn may
 * still borrow its strings). */
static void
retire_node(struct engine *e, struct node *n)
{
    struct job *j = as_job(n);
    if (j && j->idem_key) {
        char *k = idem_map_key(n->parent->id, j->idem_key);
        strmap_del(&e->idem, k);
        free(k);
    }
    struct group *g = as_group(n);
    if (g) {
        for (struct listener *s = g->subs; s; s = s->next)
            e->nsubs--;
        listeners_free(&g->subs);
    }
    engine_forget(e, n);
    struct deleted_row row = {.type = n->type, .id = n->id, .root = n->parent == NULL};
    if (!outbox_deleted_row(e->out, &row))
        engine_oom();
    eappend((void ***)&e->retired_nodes, &e->nretired_nodes, &e->capretired_nodes, n);
    e->stats.nodes_purged++;
}

bool
purge_step(struct engine *e)
{
    size_t budget = PURGE_BATCH;
    /* Jobs RUNNING at the last start are listed until the reconnect window ends; their
     * trees are not freed before. */
    if (e->norphans > 0)
        return false;
    while (budget > 0) {
        if (e->npurge == 0) {
            struct group *g = e->retain_head;
            if (g == NULL || e->cfg.retention_ms == 0 || e->now < g->n.ended_ms ||
                e->now - g->n.ended_ms < e->cfg.retention_ms)
                return false;
            purge_begin(e, g, true);
        }
        struct node *n = e->purge_stack[e->npurge - 1];
        struct group *g = as_group(n);
        struct job *j = as_job(n);
        if (g && g->nchildren > 0) {
            push(e, g->children[--g->nchildren]);
            continue;
        }
        if (j && j->ngroups > 0) {
            push(e, &j->groups[--j->ngroups]->n);
            continue;
        }
        e->npurge--;
        if (n->parent == NULL)
            engine_note(e, LOG_DEBUG, "purged", "group=%s nodes_purged=%" PRIu64, n->idstr,
                        e->stats.nodes_purged + 1);
        retire_node(e, n);
        budget--;
    }
    return true;
}

uint64_t
purge_next(const struct engine *e)
{
    if (e->npurge > 0 && e->norphans == 0)
        return e->now;
    const struct group *g = e->retain_head;
    if (g == NULL || e->cfg.retention_ms == 0)
        return UINT64_MAX;
    return g->n.ended_ms + e->cfg.retention_ms;
}

void
purge_end_turn(struct engine *e)
{
    for (size_t i = 0; i < e->nretired_nodes; i++)
        node_free(e->retired_nodes[i]);
    e->nretired_nodes = 0;
}

void
purge_free(struct engine *e)
{
    purge_end_turn(e);
    free(e->retired_nodes);
    free(e->purge_stack);
}

/* How many nodes the tree of root holds. */
static uint64_t
tree_size(struct group *root)
{
    uint64_t count = 0;
    struct node **stack = NULL;
    size_t n = 0, cap = 0;
    eappend((void ***)&stack, &n, &cap, &root->n);
    while (n > 0) {
        struct node *x = stack[--n];
        count++;
        struct group *g = as_group(x);
        struct job *j = as_job(x);
        if (g)
            for (size_t i = 0; i < g->nchildren; i++)
                eappend((void ***)&stack, &n, &cap, g->children[i]);
        else
            for (size_t i = 0; i < j->ngroups; i++)
                eappend((void ***)&stack, &n, &cap, &j->groups[i]->n);
    }
    free(stack);
    return count;
}

void
on_purge_group(struct engine *e, const struct peer *from, const struct cmd *c)
{
    struct group *g = as_group(engine_lookup(e, c->id, NODE_GROUP));
    if (g == NULL) {
        reply_fmt(e, from, c->request_id, CORRAL_ENOTFOUND,
                  "purge_group: no group %s (unknown, or already purged)", c->id);
        return;
    }
    if (g->n.parent != NULL) {
        reply_fmt(e, from, c->request_id, CORRAL_EWRONGSTATE,
                  "purge_group: %s is not a root group: purge its root, %s", g->n.idstr,
                  root_of(&g->n)->idstr);
        return;
    }
    if (g->n.state != ST_ENDED) {
        reply_fmt(e, from, c->request_id, CORRAL_EWRONGSTATE,
                  "purge_group: %s has not ended: cancel it or wait for it to end first",
                  g->n.idstr);
        return;
    }
    uint64_t size = tree_size(g);
    purge_begin(e, g, true);
    struct out_msg *m = reply(e, from, c->request_id, CORRAL_OK, NULL);
    m->id = g->n.idstr;
    m->purged_nodes = size;
}

int
engine_restore_purging(struct engine *e, uint64_t root_id)
{
    struct group *g = as_group(engine_node(e, root_id));
    if (g == NULL)
        return CORRAL_OK; /* every row of it was deleted; only the marker was left */
    if (g->n.parent != NULL || g->n.state != ST_ENDED)
        return CORRAL_EINTERNAL;
    purge_begin(e, g, false);
    return CORRAL_OK;
}
