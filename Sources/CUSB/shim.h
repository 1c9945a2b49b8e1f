#pragma once
#include <libusb.h>

/// libusb_set_option is variadic; Swift cannot call it directly.
static inline int vh_libusb_set_option_noarg(libusb_context *ctx, enum libusb_option option) {
    return libusb_set_option(ctx, option);
}
static inline int vh_libusb_set_log_level(libusb_context *ctx, int level) {
    return libusb_set_option(ctx, LIBUSB_OPTION_LOG_LEVEL, level);
}
