/*
 * daemon/log.c: leveled logging to standard error or a file (log.h).
 *
 * One mutex guards the destination so that log_reopen (SIGHUP, on the loop
 * thread) can swap the file while the engine thread logs; each line is built
 * in a local buffer and written with one write(), so lines from threads
 * never interleave.  Lines longer than the buffer are cut with "...".
 */
#include "daemon/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1; /* -1: standard error */
static atomic_int log_lvl = LOG_INFO;
static int log_journal = -1; /* stderr is the journal: -1 not checked yet */

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* systemd sets JOURNAL_STREAM=DEV:INODE for a service whose stderr goes to
 * the journal; it is inherited, so compare with what stderr really is. */
static bool stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    if (!js || !*js)
        return false;
    unsigned long long dev, ino;
    if (sscanf(js, "%llu:%llu", &dev, &ino) != 2)
        return false;
    struct stat st;
    if (fstat(STDERR_FILENO, &st))
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

static int open_file(const char *path, struct moed_err *e)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
    if (fd < 0)
        return moed_err_set(e, MOED_EIO, "log file %s: %s", path, strerror(errno));
    return fd;
}

int log_open(const char *path, int level, struct moed_err *e)
{
    log_set_level(level);
    return log_reopen(path, e);
}

int log_reopen(const char *path, struct moed_err *e)
{
    int fd = -1;
    if (path && *path) {
        fd = open_file(path, e);
        if (fd < 0)
            return fd;
    }
    pthread_mutex_lock(&log_mu);
    int old = log_fd;
    log_fd = fd;
    if (log_journal < 0)
        log_journal = stderr_is_journal();
    pthread_mutex_unlock(&log_mu);
    if (old >= 0)
        close(old);
    return 0;
}

void log_close(void)
{
    log_reopen(NULL, NULL);
}

void log_set_level(int level)
{
    if (level < LOG_ERR)
        level = LOG_ERR;
    if (level > LOG_DEBUG)
        level = LOG_DEBUG;
    atomic_store(&log_lvl, level);
}

int log_level(void)
{
    return atomic_load(&log_lvl);
}

bool log_enabled(int level)
{
    return level <= atomic_load(&log_lvl);
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

void log_vmsg(int level, const char *fmt, va_list ap)
{
    if (!log_enabled(level))
        return;
    if (level < LOG_ERR)
        level = LOG_ERR;
    if (level > LOG_DEBUG)
        level = LOG_DEBUG;
    char line[2048];
    size_t n = 0;
    pthread_mutex_lock(&log_mu);
    int fd = log_fd >= 0 ? log_fd : STDERR_FILENO;
    bool journal = log_fd < 0 && log_journal > 0;
    if (journal) {
        /* sd-daemon(3) priorities: 3 err, 4 warning, 6 info, 7 debug */
        static const char prio[] = {'3', '4', '6', '7'};
        line[n++] = '<';
        line[n++] = prio[level];
        line[n++] = '>';
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        localtime_r(&ts.tv_sec, &tm);
        n += strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof line - n, ".%03ld %s: ", ts.tv_nsec / 1000000,
                              level_names[level]);
    }
    int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    if (m < 0)
        m = 0;
    if ((size_t)m >= sizeof line - n - 1) {
        n = sizeof line - 5;
        memcpy(line + n, "...", 3);
        n += 3;
    } else {
        n += (size_t)m;
    }
    /* one line per message: a newline inside would forge another entry */
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[n++] = '\n';
    write_all(fd, line, n);
    pthread_mutex_unlock(&log_mu);
}

void log_msg(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}
