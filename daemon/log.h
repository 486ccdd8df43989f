/*
 * daemon/log.h: the daemon's one logger (STYLE.md allows this one piece of
 * global state besides the loaded config).
 *
 * Lines go to standard error or to the log_file option's file, one write()
 * each, from any thread.  Format:
 *   - standard error connected to the journal (systemd sets JOURNAL_STREAM to
 *     its device:inode): "<N>text", the sd-daemon priority prefix, so that
 *     journalctl -p works and no second timestamp is printed;
 *   - otherwise: "2025-11-25 22:40:01.123 info: text" (local time).
 * Levels are conf's: CONF_LOG_ERROR 0, WARN 1, INFO 2, DEBUG 3 (the same
 * numbers api_log_fn uses).  SIGHUP calls log_reopen, so logrotate can move
 * the file away.  Never log API keys or request bodies.
 */
#ifndef MOED_DAEMON_LOG_H
#define MOED_DAEMON_LOG_H

#include <stdarg.h>
#include <stdbool.h>

#include "common/err.h"

enum { LOG_ERR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* Log to path (appended, created 0640) or, with path NULL or "", to standard
 * error, at level and above.  Without a call: standard error, info. */
int log_open(const char *path, int level, struct moed_err *e);
/* Open path again (or switch to it, or to stderr with ""): on failure the
 * old destination stays and e says why. */
int log_reopen(const char *path, struct moed_err *e);
void log_set_level(int level);
int log_level(void);
bool log_enabled(int level);
/* Close the file (back to standard error). */
void log_close(void);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(int level, const char *fmt, va_list ap);

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_DEBUG))                                                                \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
    } while (0)

#endif
