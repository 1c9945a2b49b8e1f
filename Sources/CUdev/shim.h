#pragma once
#include <libudev.h>
/* struct sock_filter and sock_fprog, for vhotplug's uevent socket filter (UeventFilter).
   Only the kernel's header: glibc's socket declarations stay in Glibc's module. */
#include <linux/filter.h>

