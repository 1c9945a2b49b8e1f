/* clinux: header-only shims; this file gives the target a source. */
