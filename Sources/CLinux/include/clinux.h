#pragma once
/* Linux system interfaces Glibc's Swift module does not export. */
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/signalfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/syscall.h>
#include <malloc.h>
#include <unistd.h>
#include <fcntl.h>

/* sockaddr_un set-up: sun_path is a fixed C array, awkward from Swift. Returns -1 when too long. */
static inline int vh_sockaddr_un(struct sockaddr_un *addr, const char *path) {
    size_t n = strlen(path);
    if (n >= sizeof(addr->sun_path)) return -1;
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, path, n + 1);
    return (int)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

/// Gives the allocator's free pages back to the system (glibc's malloc_trim).
static inline int vh_malloc_trim(void) {
    return malloc_trim(0);
}

static inline int vh_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* open(2) made as a system call, past any preload library's wrapper of open (tests: a FIFO
   that blocks in open must not hold umockdev's preload lock, which every wrapped call takes). */
static inline int vh_open_direct(const char *path, int flags) {
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, 0);
}

/* A folder opened for relative lookups only (O_PATH, which Glibc's Swift module lacks). */
#ifndef O_PATH
#define O_PATH 010000000
#endif
static inline int vh_open_folder(const char *path) {
    return open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
}
