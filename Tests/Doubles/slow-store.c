/*
 * A double of the kernel's slow sysfs stores, preloaded into vhotplug by tests
 * (LD_PRELOAD, before umockdev's preload). Writing `authorized` makes the kernel
 * configure or unconfigure the device inside write(2) (150-260 ms for a keyboard
 * in the lab); umockdev's files answer at once. With this library, a write(2) to
 * a file whose path ends in $VHOTPLUG_TEST_SLOW_SUFFIX waits while the file
 * $VHOTPLUG_TEST_SLOW_GATE exists (an inotify wait, no polling), after saying so on
 * stderr ("slow-store: holding <path>"), so that a test can act while the store is
 * under way (unplug the device, reload), then let it go by deleting the gate. As in
 * the kernel, the file was opened before: a device unplugged meanwhile takes the
 * write with it, and one plugged at the same place does not get it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

static void hold(int target)
{
    const char *gate = getenv("VHOTPLUG_TEST_SLOW_GATE");
    const char *suffix = getenv("VHOTPLUG_TEST_SLOW_SUFFIX");
    if (!gate || !suffix)
        return;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", target);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return;
    path[n] = '\0';
    size_t m = strlen(suffix);
    if ((size_t)n < m || strcmp(path + n - m, suffix) != 0)
        return;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", gate);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    int fd = inotify_init1(IN_CLOEXEC);
    /* Watched before the look: a deletion between the two is not missed. */
    if (fd >= 0 && inotify_add_watch(fd, slash ? dir : ".", IN_DELETE | IN_MOVED_FROM) >= 0) {
        if (access(gate, F_OK) == 0)
            dprintf(2, "slow-store: holding %s\n", path);
        char buf[4096];
        while (access(gate, F_OK) == 0) {
            if (read(fd, buf, sizeof buf) < 0 && errno != EINTR)
                break;
        }
    }
    if (fd >= 0)
        close(fd);
}

ssize_t write(int fd, const void *buf, size_t count)
{
    ssize_t (*next)(int, const void *, size_t) = dlsym(RTLD_NEXT, "write");
    int saved = errno;
    hold(fd);
    errno = saved;
    return next(fd, buf, count);
}
