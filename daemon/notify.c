/*
 * daemon/notify.c: sd_notify over a plain AF_UNIX datagram socket (notify.h).
 *
 * The socket is connected once at init, so a send is one send() call with no
 * allocation; systemd reads the sender's credentials from the datagram
 * (NotifyAccess=main: it must come from the main process, which it does,
 * whichever thread sends).
 */
#include "daemon/notify.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int notify_fd = -1;

int notify_init(struct moed_err *e)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof sa.sun_path)
        return moed_err_set(e, MOED_EINVAL,
                            "NOTIFY_SOCKET=%s: expected an absolute path or @name of at most %zu "
                            "bytes",
                            path, sizeof sa.sun_path - 1);
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return moed_err_set(e, MOED_EIO, "NOTIFY_SOCKET: socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, len)) {
        int err = errno;
        close(fd);
        return moed_err_set(e, MOED_EIO, "NOTIFY_SOCKET=%s: connect: %s", path, strerror(err));
    }
    if (notify_fd >= 0)
        close(notify_fd);
    notify_fd = fd;
    return 0;
}

void notify_close(void)
{
    if (notify_fd >= 0)
        close(notify_fd);
    notify_fd = -1;
}

bool notify_enabled(void)
{
    return notify_fd >= 0;
}

int notify_send(struct moed_err *e, const char *fmt, ...)
{
    if (notify_fd < 0)
        return 0;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return moed_err_set(e, MOED_EINVAL, "sd_notify: bad message");
    size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
    for (;;) {
        ssize_t w = send(notify_fd, buf, len, MSG_NOSIGNAL);
        if (w >= 0)
            return 0;
        if (errno != EINTR)
            return moed_err_set(e, MOED_EIO, "sd_notify: send: %s", strerror(errno));
    }
}

uint64_t notify_watchdog_usec(void)
{
    const char *s = getenv("WATCHDOG_USEC");
    if (!s || !*s)
        return 0;
    const char *pid = getenv("WATCHDOG_PID");
    if (pid && *pid) {
        char *end;
        errno = 0;
        unsigned long long p = strtoull(pid, &end, 10);
        if (errno || *end || p != (unsigned long long)getpid())
            return 0;
    }
    char *end;
    errno = 0;
    unsigned long long us = strtoull(s, &end, 10);
    if (errno || *end || us == 0)
        return 0;
    return (uint64_t)us;
}
