#pragma once
#include <libudev.h>
/* struct sock_filter and sock_fprog, for vhotplug's uevent socket filter (UeventFilter).
   Only the kernel's header: glibc's socket declarations stay in Glibc's module. */
#include <linux/filter.h>

/* glibc's memmem (a GNU extension Swift's Glibc module leaves out); declared here rather than
   by including <string.h> with _GNU_SOURCE into this module. */
#include <stddef.h>
extern void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen);
