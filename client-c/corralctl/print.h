/* print.h - how corralctl shows a group's tree: indented text for people, with failed
 * groups' exception groups laid out the way Python 3.11 prints an ExceptionGroup, or the
 * --json tree of the protocol contract (issue 2: node and error objects; issue 3 adds deadlines,
 * shields and, on jobs, retries and readiness; issue 4 the limiters of jobs); and how it
 * shows limiters, as a table or as JSON. */
#ifndef CORRALCTL_PRINT_H
#define CORRALCTL_PRINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "corral.h"

/* Prints the tree rooted at n (borrowed) as indented text, one line per node, then the
 * exception group of every failed group that is not already part of an enclosing one.
 * Returns 0, or -1 when writing to f failed. */
int print_tree_text(FILE *f, const struct corral_node *n);

/* Prints the tree rooted at n (borrowed) as one pretty-printed JSON document followed by
 * a newline. Returns 0, or -1 when writing to f failed. */
int print_tree_json(FILE *f, const struct corral_node *n);

/* Prints the n limiters l (borrowed) as an aligned table with the header
 * NAME  TOTAL  BORROWED  WAITING  BORROWERS, one line per limiter (borrowers
 * comma-separated, "-" when none; no line but the header when n is 0). Returns 0, or -1
 * when writing to f failed. */
int print_limiters_text(FILE *f, const struct corral_limiter *l, size_t n);

/* Prints limiters as pretty-printed JSON followed by a newline: each one as {"name",
 * "total_tokens", "borrowed_tokens", "waiting", "borrowers": [ID...]}; as_array: an array
 * of all n, else the object of l[0] (n must be at least 1). Returns 0, or -1 when writing
 * to f failed. */
int print_limiters_json(FILE *f, const struct corral_limiter *l, size_t n, bool as_array);

/* Prints an error (borrowed) the way Python 3.11's traceback module prints an exception
 * without a traceback: an exception group as a boxed, nested listing of its
 * sub-exceptions, any other error as one "Type: message" line. */
void print_exception(FILE *f, const struct corral_error *e);

#endif
