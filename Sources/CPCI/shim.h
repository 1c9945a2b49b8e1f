#pragma once
#include <stddef.h>
#include <pci/pci.h>

/* libpci reports through variadic callbacks; by default its error handler exits the
   process. vhotplug only looks names up, so messages are dropped here and a failed
   lookup just yields NULL. */
static void vh_pci_quiet(char *msg, ...) { (void)msg; }

/// A pci_access for name lookups only (pci.ids; no udev hwdb, no bus scan).
static inline struct pci_access *vh_pci_names_open(const char *ids_path) {
    struct pci_access *a = pci_alloc();
    if (!a) return NULL;
    a->error = vh_pci_quiet;
    a->warning = vh_pci_quiet;
    a->debug = vh_pci_quiet;
    if (ids_path) pci_set_name_list_path(a, (char *)ids_path, 0);
    return a;
}
#define VH_PCI_FLAGS (PCI_LOOKUP_NO_NUMBERS | PCI_LOOKUP_NO_HWDB)

/// pci_lookup_name is variadic; these fixed-arity wrappers are callable from Swift.
static inline char *vh_pci_lookup_vendor(struct pci_access *a, char *buf, int size, int vendor) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_VENDOR | VH_PCI_FLAGS, vendor);
}
static inline char *vh_pci_lookup_device(struct pci_access *a, char *buf, int size, int vendor, int device) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_DEVICE | VH_PCI_FLAGS, vendor, device);
}
static inline char *vh_pci_lookup_class(struct pci_access *a, char *buf, int size, int cls) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_CLASS | VH_PCI_FLAGS, cls);
}
static inline char *vh_pci_lookup_subsystem(struct pci_access *a, char *buf, int size, int vendor, int device, int svendor, int sdevice) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_SUBSYSTEM | PCI_LOOKUP_DEVICE | VH_PCI_FLAGS, vendor, device, svendor, sdevice);
}
