#pragma once
/* umockdev's C API, for tests only: testbeds with fake sysfs devices and uevents. */
#include <umockdev.h>

/* umockdev_testbed_add_device is variadic; tests use the array form through these. */
static inline char *vh_umockdev_add_device(UMockdevTestbed *tb, const char *subsystem, const char *name,
                                           const char *parent, const char **attributes, const char **properties) {
    return umockdev_testbed_add_devicev(tb, subsystem, name, parent, (gchar **)attributes, (gchar **)properties);
}
