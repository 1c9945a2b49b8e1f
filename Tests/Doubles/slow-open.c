/*
 * A double of the kernel's slow sysfs stores, preloaded into vhotplug by tests
 * (LD_PRELOAD, before umockdev's preload). Writing `authorized` makes the kernel
 * configure or unconfigure the device inside the write (150-260 ms for a keyboard
 * in the lab); umockdev's files answer at once. With this library, an open for
 * writing of a path that ends in $VHOTPLUG_TEST_SLOW_SUFFIX waits while the file
 * $VHOTPLUG_TEST_SLOW_GATE exists (an inotify wait, no polling), after saying so on
 * stderr ("slow-open: holding <path>"), so that a test can act while the store is
 * under way, then let it go by deleting the gate.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

static void hold(const char *path, int flags)
{
    const char *gate = getenv("VHOTPLUG_TEST_SLOW_GATE");
    const char *suffix = getenv("VHOTPLUG_TEST_SLOW_SUFFIX");
    if (!gate || !suffix || !path || (flags & O_ACCMODE) == O_RDONLY)
        return;
    size_t n = strlen(path), m = strlen(suffix);
    if (n < m || strcmp(path + n - m, suffix) != 0)
        return;
    int saved = errno;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", gate);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    int fd = inotify_init1(IN_CLOEXEC);
    /* Watched before the look: a deletion between the two is not missed. */
    if (fd >= 0 && inotify_add_watch(fd, slash ? dir : ".", IN_DELETE | IN_MOVED_FROM) >= 0) {
        if (access(gate, F_OK) == 0)
            dprintf(2, "slow-open: holding %s\n", path);
        char buf[4096];
        while (access(gate, F_OK) == 0) {
            if (read(fd, buf, sizeof buf) < 0 && errno != EINTR)
                break;
        }
    }
    if (fd >= 0)
        close(fd);
    errno = saved;
}

static int mode_of(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & __O_TMPFILE) == __O_TMPFILE ? va_arg(ap, int) : 0;
}

/* `name` with its parameters (`...` last: the mode) and the arguments passed on. */
#define FORWARD(name, params, args)                                                 \
    int name params                                                                 \
    {                                                                               \
        va_list ap;                                                                 \
        va_start(ap, flags);                                                        \
        int mode = mode_of(flags, ap);                                              \
        va_end(ap);                                                                 \
        hold(path, flags);                                                          \
        int (*next) params = dlsym(RTLD_NEXT, #name);                               \
        return next args;                                                           \
    }

FORWARD(open, (const char *path, int flags, ...), (path, flags, mode))
FORWARD(open64, (const char *path, int flags, ...), (path, flags, mode))
FORWARD(openat, (int dirfd, const char *path, int flags, ...), (dirfd, path, flags, mode))
FORWARD(openat64, (int dirfd, const char *path, int flags, ...), (dirfd, path, flags, mode))
