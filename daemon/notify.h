/*
 * daemon/notify.h: the sd_notify protocol, without libsystemd.
 *
 * systemd passes $NOTIFY_SOCKET (a path, or "@name" for the abstract
 * namespace) to a Type=notify service; the service sends newline-separated
 * "KEY=VALUE" datagrams to it: READY=1 once it serves, STATUS=free text,
 * WATCHDOG=1 at least every $WATCHDOG_USEC, STOPPING=1 when it begins to
 * stop, EXTEND_TIMEOUT_USEC=N to ask for more time while starting.  Outside
 * systemd (no $NOTIFY_SOCKET) every call is a no-op returning 0.
 *
 * Call notify_init once at start; the sends may come from any thread.
 */
#ifndef MOED_DAEMON_NOTIFY_H
#define MOED_DAEMON_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"

/* Read $NOTIFY_SOCKET and open a datagram socket for it.  A malformed
 * variable is an error (EINVAL) naming it; absent: 0, notifications off. */
int notify_init(struct moed_err *e);
void notify_close(void);
bool notify_enabled(void);

/* Send one datagram of "KEY=VALUE" lines (printf-style).  0, or MOED_EIO
 * with e saying why (e may be NULL). */
int notify_send(struct moed_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The watchdog interval that systemd asks for, in microseconds: $WATCHDOG_USEC
 * when set and $WATCHDOG_PID is absent or this process; 0 otherwise. */
uint64_t notify_watchdog_usec(void);

#endif
