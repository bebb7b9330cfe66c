/* log.h - the daemon's structured logger: one line per event on stderr, in logfmt
 * (ts=... level=info event=bind endpoint=tcp://... side=client) or as one JSON object
 * per line ({"ts":"...","level":"info","event":"bind","endpoint":"tcp://...",...}). */
#ifndef CORRAL_LOG_H
#define CORRAL_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

enum log_format { LOG_FORMAT_LOGFMT, LOG_FORMAT_JSON };

/* Sets the lowest level written and the output format. The defaults are LOG_INFO and
 * LOG_FORMAT_LOGFMT. Safe to call at any time (the settings are atomics). */
void log_setup(enum log_level min, enum log_format fmt);

/* Parses a level name ("debug", "info", "warn" or "warning", "error"; any case) into
 * *out. Returns 0, or CORRAL_EINVAL for an unknown name (*out untouched). s borrowed. */
int log_parse_level(const char *s, enum log_level *out);

/* Parses a format name ("logfmt" or "json"; any case) into *out. Returns 0, or
 * CORRAL_EINVAL for an unknown name (*out untouched). s borrowed. */
int log_parse_format(const char *s, enum log_format *out);

/* Writes one line for event (a bare word such as "bind") at level lvl, unless lvl is
 * below the configured minimum. fmt_kv (may be NULL) is printf-style text of logfmt
 * pairs, e.g. "endpoint=%s side=%s"; a value with spaces must be double-quoted, with
 * '"' and '\' inside it escaped by a backslash. In JSON format each pair becomes a
 * string member (a bare key gets ""). Control characters and invalid UTF-8 are escaped,
 * so a line is always one line. Each line is written with a single fwrite, so lines
 * from several threads do not interleave. All arguments are borrowed. */
void log_event(enum log_level lvl, const char *event, const char *fmt_kv, ...)
    __attribute__((format(printf, 3, 4)));

#endif
